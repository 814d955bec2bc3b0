"""The one way type adapters move raw memory out of band through pyfory.

Adapters call `write_raw(write_context, mv)` while serializing and `read_raw(read_context)`
while deserializing. The codec's buffer callback decides in band / out of band by size; the
reader gets back a read-only, C-contiguous, byte-format memoryview (zero-copy when it went out
of band), or a private writable copy when the codec decodes with `copy=True`.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

from pyfory._fory import BufferObject

from zcser.errors import CorruptMessage

INLINE_BELOW: ContextVar[int] = ContextVar("zcser_inline_below", default=0)
"""Regions under this many bytes are written in band directly (`write_inline`). Each codec sets
its threshold here before it serializes and leaves it set (a set and reset per message cost
~0.4 µs); what it marks is self-describing, so a stale value never misreads. A codec used inside
another codec's serializer leaves its own threshold for the outer one's remaining arrays: they
may then go in band where they would have gone out of band (still decoded correctly)."""
_INLINE_BELOW = INLINE_BELOW


class RawBuffer(BufferObject):
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
    if mv.nbytes == 0:
        return memoryview(b"")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B") if mv.ndim <= 1 else mv.cast("B", (mv.nbytes,))
    return mv


def inline_limit() -> int:
    """Regions smaller than this go in band via `write_inline` (the last threshold a codec set)."""
    return _INLINE_BELOW.get()


def write_inline(write_context: Any, data: Any) -> None:
    """Write a small C-contiguous buffer in band as (size, bytes); read with `read_inline`."""
    write_context.write_var_uint32(data.nbytes)
    write_context.buffer.write_buffer(data)


def read_inline(read_context: Any, nbytes: int) -> bytes:
    """A region written by `write_inline` (a private bytes copy), checked against `nbytes`."""
    data: bytes = read_context.read_bytes_and_size()
    if len(data) != nbytes:
        raise CorruptMessage(
            f"an in-band region holds {len(data)} bytes where its metadata says {nbytes}: "
            "the message is corrupt"
        )
    return data


def copy_requested() -> bool:
    """True while the codec decodes with `copy=True`: adapters must return private objects."""
    return _STATE.get().copy


def hashable_requested() -> bool:
    """True while the codec decodes again a message whose out-of-band bytes must be hashable
    (set elements, dict keys): bytes-likes then come back as private bytes copies."""
    return _STATE.get().hashable


def writable_requested() -> bool:
    """True while the codec decodes with `writable=True`: do not mark results read-only."""
    return _STATE.get().writable


def write_raw(write_context: Any, data: Any) -> None:
    """Hand one contiguous region to pyfory; the codec's callback keeps it in band or not."""
    view = as_bytes_view(data)
    if view.nbytes < _INLINE_BELOW.get() and write_context.buffer_callback is not None:
        write_context.write_bool(True)
        write_inline(write_context, view)
        return
    write_context.write_buffer_object(RawBuffer(view))


def read_raw_view(read_context: Any, nbytes: int | None = None) -> tuple[memoryview, bool]:
    """The region written by `write_raw` as a read-only byte view, and whether it was out of band.

    Never copies out-of-band data (in-band data is a small private copy). When `nbytes` is given,
    a region of another size raises CorruptMessage: the serializer's own metadata disagrees.
    """
    got = read_context.read_buffer_object()
    out_of_band = isinstance(got, memoryview)
    if out_of_band:
        mv = got
    elif isinstance(got, (bytes, bytearray)):
        mv = memoryview(got)
    else:
        mv = memoryview(got.to_bytes() if hasattr(got, "to_bytes") else bytes(got))
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if nbytes is not None and mv.nbytes != nbytes:
        raise CorruptMessage(
            f"a buffer holds {mv.nbytes} bytes where its metadata says {nbytes}: "
            "the message is corrupt"
        )
    return (mv if mv.readonly or _STATE.get().writable else mv.toreadonly()), out_of_band


def read_raw(read_context: Any, nbytes: int | None = None) -> memoryview:
    """The region written by `write_raw`: read-only zero-copy view, or private copy if copying."""
    mv, _ = read_raw_view(read_context, nbytes)
    if _STATE.get().copy:
        return memoryview(bytearray(mv))
    return mv


# --- the decode in progress: read modes and budget --------------------------------------------
#
# A message of n bytes may make its decode allocate at most about n bytes plus an allowance:
# zero-copy views cost nothing, and objects built from bytes the message carries are bounded by
# it, but objects built from counts the message merely declares (lengths of Arrow null arrays,
# numbers of chunks, shapes of zero-itemsize arrays, ...) must be paid for before they are
# built, with `charge`. The codec opens a budget of message size + `decode_allowance` for each
# decode (`begin_decode`), in the same context variable as the read modes, so a decode sets at
# most one variable (and usually none: see `begin_decode`).

DEFAULT_ALLOWANCE = 1 << 20
"""Bytes a decode may allocate beyond the size of the message itself (see `charge`)."""


class DecodeState:
    """The decode in progress: its read modes and the bytes it may still allocate (`left` is
    None outside a decode: no limit)."""

    __slots__ = ("copy", "hashable", "left", "size", "writable")

    def __init__(self, copy: bool = False, writable: bool = False, size: int | None = None):
        self.copy = copy
        self.writable = writable
        self.hashable = False
        self.size = size
        self.left = size

    def charge(self, nbytes: int, what: str) -> None:
        left = self.left
        if left is None:
            return
        if nbytes > left:
            raise CorruptMessage(
                f"{what} would allocate {nbytes} bytes, more than this message may cost to "
                f"decode ({self.size} bytes: its own size plus the codec's decode_allowance); "
                "the message is corrupt or hostile. For trusted data, raise "
                "Codec(decode_allowance=...)"
            )
        self.left = left - nbytes


_IDLE = DecodeState()
"""The state outside any decode (never changed): plain modes, no budget."""
_STATE: ContextVar[DecodeState] = ContextVar("zcser_decode", default=_IDLE)
get_state = _STATE.get
set_state = _STATE.set


def charge(nbytes: int, what: str) -> None:
    """Pay for `nbytes` that the decode in progress is about to allocate because the message
    declares a count or a length (not for views of the message's own memory). CorruptMessage,
    naming `what`, when the message's budget would be exceeded. Outside a decode: no limit."""
    _STATE.get().charge(nbytes, what)


def begin_decode(
    own: DecodeState, limit: int, copy: bool, writable: bool
) -> Token[DecodeState] | None:
    """Start one decode with read modes and a budget of `limit` bytes; pass the result to
    `end_decode(own, ...)`. `own` is the codec's reusable state: outside any other decode it is
    filled in and made current without a token (it stays current afterwards, idle, so the next
    decode sets no context variable at all); a decode nested in another gets a fresh state,
    reset after."""
    current = _STATE.get()
    if current.left is None:
        own.copy = copy
        own.writable = writable
        own.size = own.left = limit
        if current is not own:
            _STATE.set(own)
        return None
    return _STATE.set(DecodeState(copy, writable, limit))


def end_decode(own: DecodeState, token: Token[DecodeState] | None) -> None:
    """End the decode started by `begin_decode`."""
    if token is None:
        own.left = own.size = None
        own.copy = own.writable = own.hashable = False
    else:
        _STATE.reset(token)


def open_budget(nbytes: int) -> Token[DecodeState]:
    """Start a budget of `nbytes` in the current read modes (tests, or code that decodes
    outside a Codec); pass the result to `close_budget`."""
    current = _STATE.get()
    return _STATE.set(DecodeState(current.copy, current.writable, nbytes))


def close_budget(token: Token[DecodeState]) -> None:
    """End the budget opened by `open_budget`."""
    _STATE.reset(token)
