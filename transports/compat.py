"""Old module paths, kept for one release: each one either still imports (as an alias of the
module that replaced it, with a DeprecationWarning) or fails with an ImportError naming the new
path. Packages install their table once, at import (`install`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

__all__ = ["install"]


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        pass


class _Moved(importlib.abc.MetaPathFinder):
    """Consulted only after the normal finders found nothing (it is appended to sys.meta_path)."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.gone: dict[str, str] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.gone:
            raise ModuleNotFoundError(self.gone[fullname], name=fullname)
        new = self.aliases.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


_FINDER = _Moved()


def install(aliases: dict[str, str], gone: dict[str, str]) -> None:
    """Make each old path in `aliases` import its new module, and each one in `gone` raise
    ModuleNotFoundError with the given message."""
    _FINDER.aliases.update(aliases)
    _FINDER.gone.update(gone)
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
