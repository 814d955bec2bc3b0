"""Serializers for bytes, bytearray, memoryview and pickle.PickleBuffer, data through `_oob`.

What the reader gets (decode without copy=True):
  bytes, bytearray  the same type when small (in band, already a private copy); a read-only
                    zero-copy `memoryview` when the value went out of band (>= threshold)
  memoryview        a read-only memoryview with the original format and shape
  PickleBuffer      a PickleBuffer over read-only memory
With copy=True every value comes back as its original type, private and (where the type
allows) writable.
"""

from __future__ import annotations

import math
import pickle
import struct
from typing import Any

import numpy as np
from pyfory.serializer import Serializer

from zcser.codec import typeids as _typeids
from zcser.codec.oob import (
    as_bytes_view,
    copy_requested,
    hashable_requested,
    read_raw,
    read_raw_view,
    write_raw,
)
from zcser.errors import CorruptMessage, UnsupportedType

MAX_NDIM = 64
_CAST_FORMATS = {
    prefix + char: struct.calcsize(char) for char in "bBhHiIlLqQnNfdc?P" for prefix in ("", "@")
}
"""The formats `memoryview.cast` rebuilds (native single characters) and their itemsizes: the
only ones a message may name (an object format 'O' would make raw bytes into pointers, and a
declared itemsize of 0 would let any shape pass the size check)."""


class BytesSerializer(Serializer):
    """bytes: zero-copy read-only memoryview when out of band, bytes otherwise or on copy."""

    def write(self, write_context: Any, value: bytes) -> None:
        write_raw(write_context, value)

    def read(self, read_context: Any) -> bytes | memoryview:
        view, out_of_band = read_raw_view(read_context)
        if out_of_band and not copy_requested() and not hashable_requested():
            return view
        return view.tobytes()


class ByteArraySerializer(Serializer):
    """bytearray: zero-copy read-only memoryview when out of band, bytearray otherwise."""

    def write(self, write_context: Any, value: bytearray) -> None:
        write_raw(write_context, value)

    def read(self, read_context: Any) -> bytearray | memoryview:
        view, out_of_band = read_raw_view(read_context)
        if out_of_band and not copy_requested():
            return view
        return bytearray(view)


def _cast(view: memoryview, fmt: str, shape: tuple[int, ...]) -> memoryview:
    """`view.cast(fmt, shape)` for a format known only at run time."""
    cast: memoryview = view.cast(fmt, shape)  # type: ignore[call-overload]
    return cast


def _empty_view(fmt: str, shape: tuple[int, ...]) -> memoryview:
    """A zero-length memoryview with this format and shape (memoryview.cast refuses zeros)."""
    try:
        empty = np.empty(shape, dtype=np.dtype(fmt)).data
    except (TypeError, ValueError) as exc:
        raise CorruptMessage(f"bad empty memoryview format {fmt!r}") from exc
    return empty if copy_requested() else empty.toreadonly()


def _shape_format(mv: memoryview) -> tuple[str, tuple[int, ...]]:
    """The (format, shape) a memoryview can be rebuilt with by `memoryview.cast`."""
    try:
        _cast(memoryview(bytearray(mv.itemsize)), mv.format, (1,) * mv.ndim)
    except (TypeError, ValueError) as exc:
        raise UnsupportedType(
            f"memoryview format {mv.format!r} cannot be rebuilt by memoryview.cast: "
            "send np.asarray(view) (numpy keeps any dtype) or view.cast('B')"
        ) from exc
    return mv.format, tuple(mv.shape or ())


class MemoryViewSerializer(Serializer):
    """memoryview with format and shape kept; non-contiguous views are copied once."""

    def write(self, write_context: Any, value: memoryview) -> None:
        fmt, shape = _shape_format(value)
        write_context.write_string(fmt)
        write_context.write_var_uint32(value.itemsize)
        write_context.write_var_uint32(len(shape))
        for dim in shape:
            write_context.write_var_uint64(dim)
        data = as_bytes_view(value) if value.c_contiguous else memoryview(value.tobytes())
        write_raw(write_context, data)

    def read(self, read_context: Any) -> memoryview:
        fmt = read_context.read_string()
        itemsize = read_context.read_var_uint32()
        ndim = read_context.read_var_uint32()
        if ndim > MAX_NDIM or _CAST_FORMATS.get(fmt) != itemsize:
            raise CorruptMessage(
                f"bad memoryview metadata (ndim {ndim}, format {fmt[:16]!r}, itemsize {itemsize})"
            )
        shape = tuple(read_context.read_var_uint64() for _ in range(ndim))
        view = read_raw(read_context, math.prod(shape) * itemsize)
        if hashable_requested():  # over private bytes: hashable, as a set element must be
            view = memoryview(view.tobytes())
        if fmt == "B" and ndim == 1:
            return view
        if view.nbytes == 0:
            return _empty_view(fmt, shape)
        try:
            rebuilt = _cast(view, fmt, shape)
        except (TypeError, ValueError) as exc:
            raise CorruptMessage(f"memoryview cannot be rebuilt: {exc}") from exc
        if rebuilt.itemsize != itemsize:
            raise CorruptMessage(f"memoryview format {fmt!r} does not have itemsize {itemsize}")
        return rebuilt


class PickleBufferSerializer(Serializer):
    """pickle.PickleBuffer as raw bytes; the reader's PickleBuffer wraps the message memory."""

    def write(self, write_context: Any, value: pickle.PickleBuffer) -> None:
        try:
            raw = value.raw()
        except BufferError as exc:
            raise UnsupportedType(
                "PickleBuffer over non-contiguous memory: make it contiguous first"
            ) from exc
        write_raw(write_context, raw)

    def read(self, read_context: Any) -> pickle.PickleBuffer:
        return pickle.PickleBuffer(read_raw(read_context))


NAME = "buffers"
"""The name the stream schema carries for this adapter: fixed across releases (it is part
of the wire format), whatever the module is called."""


def install(fory: Any) -> None:
    """Register the buffer serializers on a pyfory.Fory instance."""
    resolver = fory.type_resolver
    fory.register_serializer(bytes, BytesSerializer(resolver, bytes))
    fory.register_serializer(
        pickle.PickleBuffer, PickleBufferSerializer(resolver, pickle.PickleBuffer)
    )
    fory.register(
        bytearray, type_id=_typeids.BYTEARRAY, serializer=ByteArraySerializer(resolver, bytearray)
    )
    fory.register(
        memoryview,
        type_id=_typeids.MEMORYVIEW,
        serializer=MemoryViewSerializer(resolver, memoryview),
    )
