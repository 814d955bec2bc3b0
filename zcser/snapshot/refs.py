"""Arrays and tensors of a loaded snapshot pickle, for multiprocessing, as references to the file.

Rules of this file:
- `load()` registers every file mapping it makes ("r" and "c" modes; "copy" is private memory,
  not the file) with its address range, path, mode and the file's identity; the record goes away
  with the mapping (a weakref callback), so an address inside a live record IS the file.
- `install()` puts two reducers in `multiprocessing.reduction.ForkingPickler` (what spawn and
  forkserver process arguments, `multiprocessing.Queue`, `Pipe`, `ProcessPoolExecutor` and
  torch's DataLoader use): a numpy array or a torch tensor whose memory lies inside a registered
  mapping pickles as `(path, mode, identity, offset, shape, strides, dtype)`; anything else goes
  to the reducer that was there before (numpy's by-value pickle, torch's shared-memory one).
  Plain `pickle.dumps` is left alone: a pickle that may outlive the file or leave the machine
  keeps its bytes.
- Identity = (st_dev, st_ino, st_size, st_mtime_ns, header digest). The receiving process maps
  the file once per (path, mode, identity) and checks it before any view is made: a file
  replaced (`save` renames a new inode over it) or written since the load raises
  CorruptSnapshot, never hands out other data.
- Mode "c" maps are copy-on-write: an array whose pages the process has written (anonymous
  pages in /proc/self/pagemap) pickles by value, so the receiver sees what the sender sees.
  Where pagemap cannot tell (not Linux), "c" arrays pickle by value too.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from transports.errors import SnapshotFileError
from transports.mmapfile import open_mapping
from zcser.errors import CorruptSnapshot

__all__ = ["Identity", "identity_of", "install", "register_mapping"]

Identity = tuple[int, int, int, int, int]
"""(st_dev, st_ino, st_size, st_mtime_ns, header digest) of a snapshot file."""

_DIGEST = struct.Struct("<Q")
_DIGEST_AT = 56  # the header digest's offset (docs/format.md, "Snapshot files")


class _Mapped:
    """One live file mapping of this process: where it is, what file, how it was opened."""

    __slots__ = ("end", "ident", "mode", "path", "ref", "start")

    def __init__(self, mm: mmap.mmap, path: str, mode: str, ident: Identity) -> None:
        self.start = _address(mm)
        self.end = self.start + len(mm)
        self.path = path
        self.mode = mode
        self.ident = ident
        key = id(mm)
        self.ref = weakref.ref(mm, lambda _r: _MAPS.pop(key, None))


_MAPS: dict[int, _Mapped] = {}
_LOCK = threading.Lock()


def _address(mm: mmap.mmap) -> int:
    view = np.frombuffer(mm, dtype=np.uint8, count=1)
    return int(view.ctypes.data)


def identity_of(fd: int, header: bytes | memoryview) -> Identity:
    """The identity of the open snapshot file `fd` whose first bytes are `header`."""
    st = os.fstat(fd)
    (digest,) = _DIGEST.unpack_from(header, _DIGEST_AT)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, digest)


def register_mapping(mm: mmap.mmap, path: str, mode: str, ident: Identity) -> None:
    """Record that `mm` maps snapshot `path` (mode "r" or "c") with identity `ident`."""
    record = _Mapped(mm, os.path.abspath(path), mode, ident)
    with _LOCK:
        _MAPS[id(mm)] = record


def _find(low: int, high: int) -> _Mapped | None:
    """The live mapping holding bytes [low, high), if any."""
    for record in list(_MAPS.values()):
        if record.start <= low and high <= record.end and record.ref() is not None:
            return record
    return None


# --- copy-on-write pages: written or not ------------------------------------------------------

_PAGE = mmap.PAGESIZE
_PRESENT = 1 << 63
_SWAPPED = 1 << 62
_FILE_PAGE = 1 << 61


def _pages_written(low: int, high: int) -> bool:
    """Whether this process wrote any page of [low, high) of a private file mapping: such a
    page is anonymous (present without the file-page bit, or swapped). True when unknown."""
    first, last = low // _PAGE, (high - 1) // _PAGE
    count = last - first + 1
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            f.seek(first * 8)
            data = f.read(count * 8)
    except OSError:
        return True
    if len(data) != count * 8:
        return True
    entries = np.frombuffer(data, dtype="<u8")
    anonymous = (entries & np.uint64(_PRESENT | _FILE_PAGE)) == np.uint64(_PRESENT)
    swapped = (entries & np.uint64(_SWAPPED)) != 0
    return bool(anonymous.any() or swapped.any())


def _reference(low: int, high: int) -> _Mapped | None:
    """The mapping [low, high) may be pickled as a reference to, or None (pickle by value)."""
    if high <= low:
        return None
    record = _find(low, high)
    if record is None or (record.mode == "c" and _pages_written(low, high)):
        return None
    return record


# --- the receiving side: one mapping per file, checked --------------------------------------

_OPENING = threading.Lock()


def _changed(path: str, detail: str) -> CorruptSnapshot:
    return CorruptSnapshot(
        f"{path}: changed since it was loaded in the process that sent these arrays ({detail}); "
        "they were sent as references to the file and would now show other data. Load the "
        "file again in the sending process (or send copies: np.array(a) / t.clone())"
    )


def _mapping(path: str, mode: str, ident: Identity) -> mmap.mmap:
    """This process's mapping of snapshot `path` with identity `ident` (made once, shared)."""
    with _OPENING:
        for record in list(_MAPS.values()):
            if (record.path, record.mode, record.ident) == (path, mode, ident):
                mm = record.ref()
                if mm is not None:
                    return mm

        def check(fd: int, size: int) -> None:
            st = os.fstat(fd)
            now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if now != ident[:4]:
                raise _changed(path, "another file, size or modification time")

        try:
            mm = open_mapping(path, "r" if mode == "r" else "c", check=check)
        except FileNotFoundError:
            raise _changed(path, "it no longer exists") from None
        except SnapshotFileError as exc:
            raise _changed(path, str(exc)) from None
        (digest,) = _DIGEST.unpack_from(mm, _DIGEST_AT)
        if digest != ident[4]:
            raise _changed(path, "another header")
        register_mapping(mm, path, mode, ident)
        return mm


def _rebuild_array(
    path: str,
    mode: str,
    ident: Identity,
    offset: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    dtype: np.dtype[Any],
    writeable: bool,
) -> np.ndarray[Any, Any]:
    mm = _mapping(path, mode, ident)
    arr: np.ndarray[Any, Any] = np.ndarray(shape, dtype, buffer=mm, offset=offset, strides=strides)
    if not writeable and arr.flags.writeable:
        arr.flags.writeable = False
    return arr


def _rebuild_tensor(
    path: str,
    mode: str,
    ident: Identity,
    offset: int,
    nbytes: int,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    dtype: Any,
    requires_grad: bool,
    parameter: bool,
) -> Any:
    import torch
    from torch.utils.dlpack import from_dlpack

    mm = _mapping(path, mode, ident)
    raw = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=offset)
    tensor = from_dlpack(raw).view(dtype).as_strided(shape, strides)
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


# --- the reducers -------------------------------------------------------------------------

try:
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # numpy < 2
    _byte_bounds = np.byte_bounds  # type: ignore[attr-defined,unused-ignore]


def _ndarray_by_value(arr: np.ndarray[Any, Any]) -> Any:
    return arr.__reduce_ex__(4)


_previous: dict[type, Callable[[Any], Any]] = {}


def _reduce_ndarray(arr: np.ndarray[Any, Any]) -> Any:
    if arr.size and not arr.dtype.hasobject:
        low, high = _byte_bounds(arr)
        record = _reference(low, high)
        if record is not None:
            args = (
                record.path,
                record.mode,
                record.ident,
                int(arr.ctypes.data) - record.start,
                arr.shape,
                arr.strides,
                arr.dtype,
                bool(arr.flags.writeable),
            )
            return _rebuild_array, args
    by_value: Callable[[Any], Any] = _previous.get(np.ndarray, _ndarray_by_value)
    return by_value(arr)


def _reduce_tensor(t: Any) -> Any:
    import torch

    plain = (
        t.layout == torch.strided
        and t.device.type == "cpu"
        and (t.is_leaf or not t.requires_grad)
        and not t.is_conj()
        and not t.is_neg()
        and t.numel() > 0
        and type(t) in (torch.Tensor, torch.nn.Parameter)
    )
    if plain:
        itemsize = t.element_size()
        span = sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True)) + 1
        low = t.data_ptr()
        high = low + span * itemsize
        record = _reference(low, high)
        if record is not None:
            args = (
                record.path,
                record.mode,
                record.ident,
                low - record.start,
                high - low,
                tuple(t.shape),
                tuple(t.stride()),
                t.dtype,
                bool(t.requires_grad),
                isinstance(t, torch.nn.Parameter),
            )
            return _rebuild_tensor, args
    previous = _previous.get(type(t))
    if previous is None:
        return t.__reduce_ex__(4)
    return previous(t)


def install() -> None:
    """Put the reducers in ForkingPickler (numpy always; torch's classes when torch is
    imported), keeping whatever was registered before as the by-value path. Idempotent."""
    from multiprocessing.reduction import ForkingPickler

    registry: dict[type, Callable[[Any], Any]] = ForkingPickler._extra_reducers  # type: ignore[attr-defined]
    pairs: list[tuple[type, Callable[[Any], Any]]] = [(np.ndarray, _reduce_ndarray)]
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "nn"):
        with contextlib.suppress(AttributeError):
            pairs += [(torch.Tensor, _reduce_tensor), (torch.nn.Parameter, _reduce_tensor)]
    for cls, reducer in pairs:
        current = registry.get(cls)
        if current is reducer:
            continue
        if current is not None:
            _previous[cls] = current
        ForkingPickler.register(cls, reducer)
