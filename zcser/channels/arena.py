"""The `empty()` arena: arrays allocated inside the next frame of a shared-memory ring.

A sender's `empty(shape, dtype)` reserves a frame in the ring (once per message) and hands out
arrays inside it; the next `send` writes the message around them, so arrays that are part of
the message are not copied at all.

```
frame:  [headroom: header | table | in-band ...][pad][array 0][pad][array 1] ...
         ^ base                                  ^ 64-aligned absolute addresses
```

Rules this state machine keeps:
- at most one frame is reserved at a time; `frame is None` means no reservation;
- a frame grows only in place (re-reserved from the same ring position): if it would have to
  move, the new array is an ordinary one and is copied at send (`fallbacks` counts it);
- after the send that carries them the arrays are read-only, and an array of a frame already
  sent is refused by `refuse_sent` (its memory belongs to the receiver); an array left out of
  the message its frame carried is refused with that reason (its memory now holds that
  message), and a warning is logged when the send leaves it out. Forcing such an array
  writable again (`arr.flags.writeable = True`) is undefined: writes may reach the receiver;

- when the message cannot be written around the arrays (its head does not fit the headroom, or
  the frame cannot grow), the arrays are copied out and the message is sent by copy; if that
  fails, the frame is reserved again at its place so the same send can be retried.

Transport errors pass through unchanged: the sender translates them at its public methods.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from zcser import errors
from zcser.codec import Plan, layout
from zcser.codec.memory import address as _address

__all__ = ["FrameArena"]

_ALIGN = layout.ALIGN
_DROPPED_KEPT = 256  # addresses of left-out arrays remembered, to explain a later refusal
_log = logging.getLogger("zcser.channels")


class FrameWriter(Protocol):
    """What the arena needs of a transport writer (a ZeroBuffer Writer, a fan-out writer)."""

    @property
    def reserved_address(self) -> int: ...

    @property
    def reserved_offset(self) -> int: ...

    def abort(self) -> None: ...


def _align_up(value: int) -> int:
    return (value + _ALIGN - 1) // _ALIGN * _ALIGN


class FrameArena:
    """The frame reserved for `empty()` arrays of one sender, and the arrays handed out."""

    __slots__ = (
        "_commit",
        "_copy_threads",
        "_cursor",
        "_dropped",
        "_first",
        "_headroom",
        "_pending",
        "_reserve_frame",
        "_send_copy",
        "_w",
        "address",
        "fallbacks",
        "frame",
        "ring_hi",
        "ring_lo",
        "size",
        "zero_copy",
    )

    def __init__(
        self,
        writer: FrameWriter,
        headroom: int,
        copy_threads: int,
        reserve_frame: Callable[[int, float | None], memoryview],
        commit: Callable[[int, int], None],
        send_copy: Callable[[Plan, float | None], int],
    ) -> None:
        self._w = writer
        self._headroom = headroom
        self._copy_threads = copy_threads
        self._reserve_frame = reserve_frame
        self._commit = commit
        self._send_copy = send_copy
        self.frame: memoryview | None = None  # the reserved frame the arrays live in
        self.size = 0
        self.address = 0
        self._cursor = 0  # end of the last array, from the frame start
        self._first = 0  # start of the first array
        self._pending: list[np.ndarray] = []
        self._dropped: OrderedDict[int, int] = OrderedDict()  # address -> bytes
        self.ring_lo = 0  # address span of every frame ever reserved for empty() arrays
        self.ring_hi = 0
        self.zero_copy = 0  # messages whose arrays were sent in place
        self.fallbacks = 0  # arrays or messages that had to be copied after all

    # -- allocation ------------------------------------------------------------------------------

    def empty(self, dims: tuple[int, ...], dt: np.dtype[Any], timeout: float | None) -> np.ndarray:
        """A new array inside the reserved frame (reserving or growing it), or an ordinary array
        when the frame cannot grow in place."""
        count = math.prod(dims)
        nbytes = count * dt.itemsize
        if nbytes == 0:
            return np.empty(dims, dt)
        if self.frame is None:
            self._reserve(self._headroom + _ALIGN - 1 + nbytes, timeout)
            self._cursor = self._headroom
        offset = _align_up(self.address + self._cursor) - self.address
        end = offset + nbytes
        if end > self.size and not self._grow(end, timeout):
            self.fallbacks += 1
            _log.info(
                "Sender.empty(): the frame could not grow in place near the ring's end; this "
                "%d-byte array is ordinary memory and is copied at send",
                nbytes,
            )
            return np.empty(dims, dt)  # this one is copied at send
        assert self.frame is not None
        array = np.frombuffer(self.frame, dtype=dt, count=count, offset=offset).reshape(dims)
        if not self._pending:
            self._first = offset
        self._pending.append(array)
        self._cursor = end
        return array

    def _reserve(self, n: int, timeout: float | None) -> None:
        self.frame = self._reserve_frame(n, timeout)
        self.size = n
        self.address = addr = self._w.reserved_address
        self.ring_lo = min(self.ring_lo or addr, addr)
        self.ring_hi = max(self.ring_hi, addr + n)

    def _grow(self, n: int, timeout: float | None) -> bool:
        """Enlarge the reserved frame in place to n bytes (re-reserving from the same ring
        position keeps its address). False if it would have to move (the ring's end is near)."""
        w = self._w
        old_n, old_offset = self.size, w.reserved_offset
        w.abort()
        try:
            self._reserve(n, timeout)
        except BaseException:
            self._restore(old_n)
            raise
        if w.reserved_offset == old_offset:
            return True
        w.abort()
        self._restore(old_n)
        return False

    def _restore(self, n: int) -> None:
        """Re-reserve the previous frame; it fits at once (only the writer consumes space)."""
        try:
            self._reserve(n, 0)
        except BaseException:
            self.frame = None
            self.finish()
            raise

    # -- sending ---------------------------------------------------------------------------------

    def send(self, plan: Plan, timeout: float | None) -> int:
        """Write the message around the arrays already in the reserved frame, publish it; the
        bytes used."""
        base, end = self.address, self.address + self.size
        pending = {int(a.ctypes.data): a.nbytes for a in self._pending}
        placed: set[int] = set()
        inside = False
        extra = 0
        for buf in plan.buffers:
            addr = _address(buf)
            if base <= addr < end:
                inside = True
                if pending.get(addr) == buf.nbytes and addr not in placed:
                    placed.add(addr)
                    continue
            elif self.ring_lo <= addr < self.ring_hi:
                self.refuse_sent(plan)
            extra += _align_up(buf.nbytes)
        head = layout.meta_size(len(plan.buffers), plan.checksum) + len(plan.inband)
        if inside and head > self._first:
            return self._send_fallback(plan, timeout)
        need = max(self._cursor, head) + extra + (_ALIGN - 1 if extra else 0)
        if need > self.size and not self._grow(need, timeout):
            return self._send_fallback(plan, timeout)
        assert self.frame is not None
        address = self.address
        used = plan.write_into(self.frame, address, copy_threads=self._copy_threads)
        if len(placed) < len(self._pending):
            self._forget_left_out(placed)
        self.finish()
        zero = 1 if placed else 0
        self._commit(used, address)  # the last call: a signal lands before it, or after return
        self.zero_copy += zero
        return used

    def _send_fallback(self, plan: Plan, timeout: float | None) -> int:
        """Copy the arrays out of the reserved frame, give it back, and send by copy. If that
        send fails (full ring, timeout), the frame is reserved again at the same place, so the
        empty() arrays stay valid and the same send can be retried."""
        base, end = self.address, self.address + self.size
        for i, buf in enumerate(plan.buffers):
            if base <= _address(buf) < end:
                plan.buffers[i] = memoryview(bytearray(buf))
        n = self.size
        self._w.abort()
        try:
            used = self._send_copy(plan, timeout)
        except BaseException:
            self._restore(n)
            if self.address != base:
                self._w.abort()
                self.finish()
                raise errors.UsageError(
                    "the empty() frame could not be reserved again at its place: allocate the "
                    "arrays again"
                ) from None
            raise
        self.finish()
        self.fallbacks += 1
        _log.info(
            "Sender.send(): the message did not fit around its empty() arrays; they were "
            "copied (a bigger headroom= or fewer in-band bytes avoid this)"
        )
        return used

    def _forget_left_out(self, placed: set[int]) -> None:
        """Remember the arrays this send left out, and warn: their memory now holds the
        message, and they can never be sent."""
        left = [a for a in self._pending if int(a.ctypes.data) not in placed]
        for array in left:
            self._dropped[int(array.ctypes.data)] = array.nbytes
        while len(self._dropped) > _DROPPED_KEPT:
            self._dropped.popitem(last=False)
        _log.warning(
            "Sender.empty(): %d array(s) (%d bytes) were not part of the message just sent; "
            "their frame carried that message, so they are read-only now and cannot be sent. "
            "Allocate arrays with empty() right before the send that carries them.",
            len(left),
            sum(a.nbytes for a in left),
        )

    def refuse_sent(self, plan: Plan) -> None:
        """UsageError if the plan holds an array of a frame this arena already sent."""
        lo, hi = self.ring_lo, self.ring_hi
        res_lo, res_hi = self.address, self.address + self.size
        for buf in plan.buffers:
            addr = _address(buf)
            if lo <= addr < hi and not (self.frame is not None and res_lo <= addr < res_hi):
                if self._dropped.get(addr) == buf.nbytes:
                    raise errors.UsageError(
                        "this array was allocated by Sender.empty() for a message that was sent "
                        "without it: its frame carried that message, so its memory now belongs "
                        "to the receiver and it cannot be sent. Allocate arrays with empty() "
                        "right before the send that carries them (or send a copy: arr.copy())."
                    )
                raise errors.UsageError(
                    "this array was allocated by Sender.empty() and already sent: its memory "
                    "belongs to the receiver now. Allocate a new one with empty() (or send a "
                    "copy: arr.copy())."
                )

    def abort(self) -> None:
        """Give the reserved frame back unsent (the sender is closing)."""
        if self.frame is not None:
            self._w.abort()
            self.finish()

    def finish(self) -> None:
        """The arrays were sent (or dropped): make them read-only, forget the frame."""
        for array in self._pending:
            array.flags.writeable = False
        self._pending.clear()
        self.frame = None
        self.size = 0
        self.address = 0
        self._cursor = 0
