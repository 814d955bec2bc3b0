"""Type adapters: how numpy, Arrow, torch, pandas, bytes-likes and a few builtins travel.

Every adapter is a module with the same two names:

- `NAME`: the name the stream schema lists for it (part of the wire format: a reader refuses a
  stream whose writer used an adapter it lacks), fixed across releases;
- `install(fory)`: register its pyfory serializers on a `pyfory.Fory`.

`REGISTRY` lists them in install order; the optional ones are skipped when their library
(pyarrow, torch, pandas) cannot be imported.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

__all__ = ["REGISTRY", "installed"]

REGISTRY: tuple[tuple[str, bool], ...] = (
    ("zcser.codec.adapters.builtins", True),
    ("zcser.codec.adapters.numpy", True),
    ("zcser.codec.adapters.buffers", True),
    ("zcser.codec.adapters.arrow", False),
    ("zcser.codec.adapters.torch", False),
    ("zcser.codec.adapters.pandas", False),
    ("zcser.codec.adapters.datetimes", True),  # last: see its docstring
)
"""(module, required) for every adapter, in install order."""


def installed() -> list[ModuleType]:
    """The adapter modules this process can use (the optional ones whose library imports)."""
    modules = []
    for name, required in REGISTRY:
        try:
            modules.append(import_module(name))
        except ImportError:
            if required:
                raise
    return modules
