"""The one loader of the compiled module `transports._native` (C source `_native.c`, types in
`_native.pyi`): cross-process atomics, the ring's one-call small-frame put and take, buffer
addresses and the streaming copy.

`module` is the compiled module, or None when the install had no C compiler; every user has a
slower pure-Python path for that case.
"""

from __future__ import annotations

__all__ = ["module"]

try:
    from transports import _native as module
except ImportError:  # built without a C compiler
    module = None  # type: ignore[assignment]
