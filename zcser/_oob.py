"""The one way type adapters move raw memory out of band through pyfory.

Adapters call `write_raw(write_context, mv)` while serializing and `read_raw(read_context)`
while deserializing. The codec's buffer callback decides in band / out of band by size; the
reader always gets back a read-only, C-contiguous, byte-format memoryview.
"""

from __future__ import annotations

from typing import Any

from pyfory._fory import BufferObject


class RawBuffer(BufferObject):  # type: ignore[misc]
    """A contiguous byte region offered to pyfory's buffer callback (no copy is made here)."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def total_bytes(self) -> int:
        return self.view.nbytes

    def write_to(self, stream: Any) -> None:
        if hasattr(stream, "write_buffer"):
            stream.write_buffer(self.view)
        else:
            stream.write(self.view)

    def getbuffer(self) -> memoryview:
        return self.view

    def raw(self) -> memoryview:
        return self.view


def as_bytes_view(obj: Any) -> memoryview:
    """A flat unsigned-byte memoryview over a C-contiguous buffer object, without copying."""
    mv = obj if isinstance(obj, memoryview) else memoryview(obj)
    if not mv.c_contiguous:
        raise ValueError("as_bytes_view needs a C-contiguous buffer")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B") if mv.ndim <= 1 else mv.cast("B", (mv.nbytes,))
    return mv


def write_raw(write_context: Any, data: Any) -> None:
    """Hand one contiguous region to pyfory; the codec's callback keeps it in band or not."""
    write_context.write_buffer_object(RawBuffer(as_bytes_view(data)))


def read_raw(read_context: Any) -> memoryview:
    """The region written by `write_raw`: a read-only byte memoryview (zero-copy if out of band)."""
    got = read_context.read_buffer_object()
    if isinstance(got, memoryview):
        mv = got
    elif isinstance(got, (bytes, bytearray)):
        mv = memoryview(got)
    else:
        mv = memoryview(got.to_bytes() if hasattr(got, "to_bytes") else bytes(got))
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv if mv.readonly else mv.toreadonly()
