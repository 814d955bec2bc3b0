"""A fan-out subscriber: takes a slot in a publisher's segment and reads its frames in place.

```
r = FanoutReader(name, policy="block")
frame = r.read(timeout=5)        # frame.data: read-only view into the shared segment
frame.release()                  # (or let it be garbage-collected) the publisher may reuse it
```

Rules it keeps (docs/protocol.md "Fan-out"; the publisher's side is in writer.py):
- Every value read from the segment is checked before use: a header, a skip entry or a
  cursor that points outside what was published raises CorruptBuffer, never reads outside
  the mapping.
- Taking a frame: announce the hold (hold_end, then pin if nothing was held), then move the
  cursor with a compare-and-swap from where the frame was read. If the publisher moved the
  cursor first (a "drop" or "latest" subscriber it skipped), the swap fails, the hold is
  withdrawn, and the frames it skipped are counted as missed (by sequence numbers).
- Pins are measured as the span of ring bytes from the oldest frame held to the newest. A
  subscriber may always hold one frame while it takes the next (the `for obj in sub` loop);
  beyond that its span may reach its `share` (ring / (2 x slots)), and never half the ring.
  A frame beyond that is copied into private memory and given back at once, so one
  subscriber's pins cannot take more than that from the others.
- A subscriber that finds nothing polls (and yields) before it sleeps only while the fan-out
  is not crowded: its publisher and subscribers number no more than the CPUs it may run on.
  When they do, some of them wait for a CPU, and a poll would take it from the one that has
  work; it sleeps at once, and the publisher writes its bell once per sleep (writer.py).
- Small frames (at most the caller's `limit`) of a "block" or "drop" subscriber are taken in
  runs by the compiled `fanout_take` (_native.c): consecutive frames copied out, then one
  compare-and-swap of the cursor; they wait on `_pending` and pin nothing. Everything else
  (skips, gaps in the sequence, larger frames, "latest", nonsense) is `_try`'s.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from array import array
from ctypes import c_uint64
from pickle import PickleBuffer

from transports.errors import (
    CorruptBuffer,
    InvalidConfig,
    TransportClosed,
    TransportEnvironmentError,
    WriterDead,
)
from transports.errors import Timeout as TransportTimeout
from transports.fanout import layout as F
from transports.fanout import segment as seg
from transports.fanout.ring import Holds
from transports.fanout.writer import owner_dead, reap
from transports.zerobuffer import posix as _shm

__all__ = ["FanoutFrame", "FanoutReader", "SlotsTaken"]

_HDR = F.FRAME_HEADER_SIZE
_NONE = F.NONE
_unpack_header = F.FRAME_HEADER.unpack_from
_cas = _shm.compare_exchange
BACKSTOP = 0.1
"""Longest sleep before the publisher's liveness is looked at again."""
SPIN = 64
RUN = 64
"""Most small frames one compiled take copies out (they wait on `_pending`)."""
_NATIVE = seg.native
_TAKE = None if _NATIVE is None else _NATIVE.fanout_take
_WAIT = None if _NATIVE is None else _NATIVE.fanout_wait
_ADDRESS = None if _NATIVE is None else _NATIVE.address
_BUSY_MIN = 1_500
_BUSY_MAX = 30_000
"""Bounds of the compiled wait's first poll, ns (sized by where the last answers came from, as
the 1:1 reader's spin: zerobuffer/common.py)."""
_ROUNDS = 16
"""Yields (each followed by another poll) before the compiled wait sleeps on the bell."""


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# The state words (an array('Q') shared with the compiled take, _native.c fanout_take):
_LAST_SEQ = 0  # sequence number of the last frame taken
_SKIP_IDX = 1  # skip entries already behind the cursor
_FRAMES = 2
_BYTES = 3


class SlotsTaken(TransportEnvironmentError):
    """Every subscriber slot of the publisher has a live subscriber."""

    def __init__(self, message: str, slots: int = 0) -> None:
        super().__init__(message)
        self.slots = slots


class FanoutFrame:
    """One received frame: `data` a read-only view of it in shared memory (or of a private
    copy, `private`), `sequence`, `size`, `missed` (messages skipped right before it),
    `address` of its first byte. release() gives it back; BufferError while views live."""

    __slots__ = (
        "_reader",
        "_start",
        "_view",
        "address",
        "data",
        "missed",
        "private",
        "sequence",
        "size",
    )

    def __init__(
        self,
        reader: FanoutReader | None,
        start: int,
        view: memoryview,
        sequence: int,
        missed: int,
        address: int,
    ) -> None:
        self._reader = reader
        self._start = start
        self._view = view
        wrapper = PickleBuffer(view)
        self.data = memoryview(wrapper)
        wrapper.release()
        self.size = view.nbytes
        self.sequence = sequence
        self.missed = missed
        self.address = address
        self.private = reader is None

    @property
    def released(self) -> bool:
        return self._reader is None

    def release(self) -> None:
        reader = self._reader
        if reader is None:
            return
        self.data.release()
        try:
            self._view.release()
        except BufferError:
            raise BufferError(
                f"frame {self.sequence} is still in use: an array or view made from its data "
                "is alive. Drop it (or copy what you need) before releasing the frame."
            ) from None
        self._reader = None
        reader._give_back(self._start)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def _private_copy(view: memoryview, address: int) -> tuple[memoryview, int]:
    """A private copy of `view` at the same address modulo 64 (buffers stay aligned)."""
    raw = bytearray(view.nbytes + 128)
    import ctypes

    base = ctypes.addressof(ctypes.c_char.from_buffer(raw))
    skip = (address - base) % 64
    out = memoryview(raw)[skip : skip + view.nbytes]
    out[:] = view
    return out.toreadonly(), base + skip


class FanoutReader:
    """Subscriber of fan-out segment NAME with `policy` "block", "drop" or "latest"."""

    def __init__(self, name: str, *, policy: str = "block") -> None:
        self._closed = True
        self._slot = -1
        if policy not in F.POLICIES:
            raise InvalidConfig(f"policy must be 'block', 'drop' or 'latest', not {policy!r}")
        self.name = name
        self.policy = policy
        self._policy = F.POLICIES[policy]
        self._pid = os.getpid()
        mm, slots, meta, P = seg.open_segment(name)
        self._mm = mm
        self._rw = memoryview(mm).toreadonly()
        self._addr = addr = _shm.address_of(mm)
        self._P = P
        self._slots_n = slots
        self._base = F.payload_offset(slots, meta)
        self._meta_at = F.meta_offset(slots)
        self._meta_size = meta
        self._skip_base = F.skip_offset(slots)
        self._head = c_uint64.from_address(addr + F.OFF_HEAD)
        self._last = c_uint64.from_address(addr + F.OFF_LAST)
        self._skips = c_uint64.from_address(addr + F.OFF_SKIPS)
        self._closedw = c_uint64.from_address(addr + F.OFF_CLOSED)
        self._pub_pid = c_uint64.from_address(addr + F.OFF_PUB_PID)
        self._pub_armed = c_uint64.from_address(addr + F.OFF_PUB_ARMED)
        self.share = max(1, P // (2 * slots))
        self._cap = P // 2
        self._holds = Holds()
        self._words = array("Q", bytes(8 * 4))
        self._started = False  # _words[_LAST_SEQ] is known (the slot is active)
        self._pending: list[bytes] = []  # small frames taken by a run, oldest first
        # The same list, public for one reason: a consumer may pop a small frame itself (read's
        # first case, as _pop does for one within its limit; the list is never replaced). A
        # run's frames follow each other: none was missed before them (last_missed 0).
        self.pending = self._pending
        self._missed_last = 0
        self._busy = _BUSY_MAX
        self._cpus = _usable_cpus()
        self._joins = c_uint64.from_address(addr + F.OFF_JOINS)
        self._joins_seen = -1
        self._crowd = False
        self._states = [
            c_uint64.from_address(addr + F.slot_offset(i) + F.S_STATE) for i in range(slots)
        ]
        self._stop = False  # interrupt(): a read waiting in another thread gives up
        self.missed = 0
        self.copied = 0  # frames copied because this subscriber pinned more than its share
        self.blocked = 0.0
        self._bell = -1
        self._pub_bell = -1
        try:
            self._join()
        except BaseException:
            self._rw.release()
            mm.close()
            raise
        self._closed = False

    # -- joining ---------------------------------------------------------------------------------

    def _join(self) -> None:
        me = self._pid
        for attempt in range(2):
            for i in range(self._slots_n):
                at = self._addr + F.slot_offset(i)
                pid = c_uint64.from_address(at + F.S_PID).value
                if pid == 0:
                    if _cas(at + F.S_PID, 0, me)[0]:
                        self._take_slot(i, at)
                        return
                elif attempt and owner_dead(pid):
                    reap(self.name, at, i, pid)
        raise SlotsTaken(
            f"publisher {self.name!r} has all its {self._slots_n} subscriber slots taken "
            f"(it was created with subscribers={self._slots_n})",
            slots=self._slots_n,
        )

    def _take_slot(self, i: int, at: int) -> None:
        self._slot = i
        self._slot_addr = at
        self._s_state = c_uint64.from_address(at + F.S_STATE)
        self._s_read = c_uint64.from_address(at + F.S_READ)
        self._s_read_addr = at + F.S_READ
        self._s_pin = c_uint64.from_address(at + F.S_PIN)
        self._s_end = c_uint64.from_address(at + F.S_HOLD_END)
        self._s_armed_addr = at + F.S_ARMED
        self._s_seq = c_uint64.from_address(at + F.S_LAST_SEQ)
        self._s_state.value = F.FREE
        c_uint64.from_address(at + F.S_POLICY).value = self._policy
        self._s_pin.value = _NONE
        self._s_end.value = 0
        c_uint64.from_address(self._s_armed_addr).value = 0
        try:
            self._bell = seg.make_bell(F.sub_bell(self.name, i))
        except BaseException:
            c_uint64.from_address(at + F.S_PID).value = 0
            raise
        self._pub_bell = seg.open_bell(F.pub_bell(self.name))
        self._s_state.value = F.JOINING
        _shm.atomic_add(self._addr + F.OFF_JOINS, 1)
        seg.ring(self._pub_bell)

    @property
    def metadata(self) -> memoryview:
        """The publisher's metadata (the stream schema); CorruptBuffer if its length lies."""
        length = F.U64.unpack_from(self._mm, self._meta_at)[0]
        if length > self._meta_size - 8:
            raise CorruptBuffer(
                f"publisher {self.name!r}: metadata claims {length} bytes in a "
                f"{self._meta_size}-byte block"
            )
        start = self._meta_at + 8
        return self._rw[start : start + length]

    # -- reading ---------------------------------------------------------------------------------

    @property
    def frames(self) -> int:
        """Frames taken so far."""
        return self._words[_FRAMES]

    def ready(self) -> bool:
        """Whether read(timeout=0) would return at once (a frame, the end, or an error)."""
        if self._closed or self._pending:
            return True
        if self._s_state.value == F.ACTIVE and self._s_read.value < self._head.value:
            return True
        return bool(self._closedw.value) or owner_dead(self._pub_pid.value)

    def _corrupt(self, why: str) -> CorruptBuffer:
        return CorruptBuffer(
            f"publisher {self.name!r}: {why}. The publisher or something else wrote nonsense "
            "into the shared segment; drop this subscriber."
        )

    def _try(self, limit: int) -> FanoutFrame | bytes | None:
        """The next frame, bytes (copied out, already given back) when its size is at most
        `limit`, or None when nothing is published yet."""
        if self._s_state.value != F.ACTIVE:
            return None
        P = self._P
        mm = self._mm
        holds = self._holds
        read = self._s_read
        words = self._words
        if not self._started:
            words[_LAST_SEQ] = self._s_seq.value
            self._started = True
        for _ in range(1000):
            h = self._head.value
            r = read.value
            if r >= h:
                return None
            if h - r > P or r % F.ALIGNMENT:
                if read.value != r:
                    continue
                raise self._corrupt(f"cursor {r} is not within a lap of the head {h}")
            count = self._skips.value
            idx = words[_SKIP_IDX]
            if count - idx > F.SKIP_ENTRIES:
                idx = count - F.SKIP_ENTRIES
            jumped = False
            while idx < count:
                f, to = _unpack_header(mm, self._skip_base + (idx % F.SKIP_ENTRIES) * F.SKIP_SIZE)
                if f < r:
                    idx += 1
                    continue
                if f == r:
                    if to <= f or to - f > P or to % F.ALIGNMENT or to > h:
                        if read.value != r:
                            break
                        raise self._corrupt(f"skip entry from {f} to {to} (head {h})")
                    _cas(self._s_read_addr, r, to)
                    jumped = True
                break
            words[_SKIP_IDX] = idx
            if jumped:
                continue
            if self._policy == F.LATEST:
                last = self._last.value
                if r < last < h and not last % F.ALIGNMENT and h - last <= P:
                    _cas(self._s_read_addr, r, last)
                    continue
            off = r % P
            n, seq = _unpack_header(mm, self._base + off)
            total = F.frame_total(n)
            last_seq = words[_LAST_SEQ]
            if n == 0 or off + total > P or r + total > h or seq <= last_seq:
                if read.value != r:
                    continue
                raise self._corrupt(
                    f"frame header at {r} claims {n} bytes, sequence {seq} (head {h}, last "
                    f"sequence {last_seq})"
                )
            if n <= limit:
                # Small: copied out before the claim, no hold needed. If the claim succeeds,
                # the publisher had not moved this cursor past r, so it had not overwritten
                # the frame while it was copied; if it fails, the copy is dropped.
                start = self._base + off + _HDR
                data = mm[start : start + n]
                if not _cas(self._s_read_addr, r, r + total)[0]:
                    continue
                missed = seq - last_seq - 1
                words[_LAST_SEQ] = seq
                self._s_seq.value = seq
                words[_FRAMES] += 1
                words[_BYTES] += n
                if missed:
                    self.missed += missed
                self._missed_last = missed
                if self._pub_armed.value:
                    seg.ring(self._pub_bell)
                return data
            span = holds.span_with(r + total)
            over = span > self._cap or (len(holds) >= 2 and span > self.share)
            old_pin, old_end = holds.pin, holds.end
            self._s_end.value = r + total
            if old_pin == _NONE:
                self._s_pin.value = r
            holds.take(r, r + total)
            if not _cas(self._s_read_addr, r, r + total)[0]:
                holds.untake(r, old_pin, old_end)
                self._s_pin.value = old_pin
                self._s_end.value = old_end
                continue
            missed = seq - last_seq - 1
            words[_LAST_SEQ] = seq
            self._s_seq.value = seq
            words[_FRAMES] += 1
            words[_BYTES] += n
            self.missed += missed
            self._missed_last = missed
            start = self._base + off + _HDR
            view = self._rw[start : start + n]
            if self._pub_armed.value:
                seg.ring(self._pub_bell)
            if over:
                self.copied += 1
                private, address = _private_copy(view, self._addr + start)
                view.release()
                self._give_back_copied(r, old_end)
                return FanoutFrame(None, r, private, seq, missed, address)
            return FanoutFrame(self, r, view, seq, missed, self._addr + start)
        raise self._corrupt("the cursor keeps moving under this subscriber")

    def _give_back_copied(self, start: int, old_end: int) -> None:
        """Give back a frame copied out right after taking it: the held interval shrinks back
        to what it was (older frames still held keep their pins)."""
        self._give_back(start)
        if len(self._holds):
            self._holds.end = old_end
            self._s_end.value = old_end

    def _give_back(self, start: int) -> None:
        if self._holds.release(start):
            self._s_pin.value = self._holds.pin
            if self._pub_armed.value:
                seg.ring(self._pub_bell)
        if self._closed and not len(self._holds):
            self._leave()

    def _end(self) -> None:
        """Raise what an empty ring means now: the stream ended or the publisher died."""
        if self._closedw.value:
            raise TransportClosed(f"publisher {self.name!r} closed; every message was read")
        pid = self._pub_pid.value
        if owner_dead(pid):
            if self._s_state.value == F.ACTIVE and self._s_read.value < self._head.value:
                return  # its last messages first
            seg.remove_stale_quietly(self.name)
            raise WriterDead(
                f"publisher {self.name!r} (pid {pid}) died; every message it published was read"
            )

    @property
    def last_missed(self) -> int:
        return self._missed_last

    def read(self, timeout: float | None = None, limit: int = -1) -> FanoutFrame | bytes:
        """The next frame (bytes when at most `limit` bytes). Waits up to `timeout` s (None:
        while the publisher lives). TransportClosed after the publisher closed and every
        frame was read; WriterDead if it died; Timeout."""
        pending = self._pending
        if pending:
            return self._pop(limit)
        if self._closed or self._stop:
            raise TransportClosed(f"subscriber of {self.name!r} is closed")
        got = self._next(limit)
        if got is not None:
            return got
        self._end()
        if timeout == 0:
            raise TransportTimeout(f"no message on {self.name!r}", timeout=timeout)
        head, read = self._head, self._s_read
        if self.crowded():
            pass  # sleep at once (below)
        elif _WAIT is not None:
            got = self._wait_compiled(limit)
            if got is not None:
                return got
        else:
            for i in range(SPIN):  # cheap looks only: liveness is checked once asleep
                if read.value < head.value:
                    got = self._try(limit)
                    if got is not None:
                        return got
                if i > 16:
                    os.sched_yield()
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        try:
            while True:
                if self._stop:
                    raise TransportClosed(f"subscriber of {self.name!r} is closed")
                got = self._next(limit)
                if got is not None:
                    return got
                self._end()
                wait = BACKSTOP
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise TransportTimeout(
                            f"no message on {self.name!r} within {timeout} s", timeout=timeout
                        )
                if _WAIT is not None:
                    _WAIT(self._addr, self._slot_addr, self._bell, 0, 0, int(wait * 1000 + 0.999))
                    continue
                self.arm()
                try:
                    if not (self._s_state.value == F.ACTIVE and read.value < head.value):
                        _poll(self._bell, wait)
                finally:
                    self.disarm()
                self.woken()
        finally:
            self.blocked += time.monotonic() - start

    def _next(self, limit: int) -> FanoutFrame | bytes | None:
        """The next frame as read() returns it, or None: a run of small frames through the
        compiled take when it applies, else _try."""
        if limit > 0 and _TAKE is not None and self._started and self._policy != F.LATEST:
            k = _TAKE(
                self._addr,
                self._slot_addr,
                self._base,
                self._P,
                self._skip_base,
                self._words,
                limit,
                RUN,
                self._pending,
                self._pub_bell,
            )
            if k > 0:
                return self._pop(limit)
        return self._try(limit)

    def _pop(self, limit: int) -> FanoutFrame | bytes:
        """The oldest frame a run took: its bytes, or a private frame over them when the
        caller wants frames (limit < 0)."""
        pending = self._pending
        data = pending.pop(0)
        self._missed_last = 0
        if len(data) <= limit:
            return data
        seq = self._words[_LAST_SEQ] - len(pending)
        view = memoryview(data)
        address = _ADDRESS(data) if _ADDRESS is not None else 0
        return FanoutFrame(None, 0, view, seq, 0, address)

    def crowded(self) -> bool:
        """Whether the publisher and its subscribers (joining, active or closing) are more
        than the CPUs this process may run on; counted again when one joins or leaves."""
        joins = self._joins.value
        if joins != self._joins_seen:
            self._joins_seen = joins
            live = (F.JOINING, F.ACTIVE, F.CLOSING)
            self._crowd = 1 + sum(s.value in live for s in self._states) > self._cpus
        return self._crowd

    def _wait_compiled(self, limit: int) -> FanoutFrame | bytes | None:
        """Poll for the next frame with the GIL released (compiled), its first poll sized by
        where the last answers came from: one found during it grows it; one found only after
        yielding the CPU, or none, shrinks it (the publisher may need this core, or is idle).
        None: nothing yet, sleep."""
        assert _WAIT is not None
        busy = self._busy
        found = _WAIT(self._addr, self._slot_addr, self._bell, busy, _ROUNDS, 0)
        if found == 2:
            self._busy = min(busy + (busy >> 2), _BUSY_MAX)
            return self._next(limit)
        self._busy = max(busy >> 1, _BUSY_MIN)
        return self._next(limit) if found else None

    def interrupt(self) -> None:
        """Make a read() waiting in another thread give up (TransportClosed) soon: before
        close() from another thread, which must not unmap what that read looks at."""
        if os.getpid() != self._pid:
            return  # a forked child's copy: the parent's reads are not its business
        self._stop = True
        if self._bell >= 0:
            seg.ring(self._bell)  # our own bell (open read-write): its wait ends

    @property
    def closing(self) -> bool:
        """interrupt() or close() was called."""
        return self._stop or self._closed

    # -- waiting ---------------------------------------------------------------------------------

    @property
    def bell(self) -> int:
        return self._bell

    def arm(self) -> None:
        if not self._closed:
            _shm.atomic_add(self._s_armed_addr, 1)

    def disarm(self) -> None:
        if not self._closed:
            _shm.atomic_sub(self._s_armed_addr, 1)

    def woken(self) -> None:
        if self._bell >= 0:
            seg.drain(self._bell)

    # -- state -----------------------------------------------------------------------------------

    @property
    def pinned_bytes(self) -> int:
        return self._holds.bytes

    @property
    def pinned_frames(self) -> int:
        return len(self._holds)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Leave: the slot is freed now, or when the last frame still held is released (views
        stay valid; the publisher skips this subscriber meanwhile). Safe twice."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()  # taken, never handed out: they go with the subscriber
        if os.getpid() != self._pid or self._slot < 0:
            return
        if len(self._holds):
            self._s_state.value = F.CLOSING
            # Its name goes now (a closing subscriber never sleeps again, and the slot is not
            # free before _leave): a process that exits with a view alive leaves no FIFO.
            seg.drop_bell(F.sub_bell(self.name, self._slot))
            _shm.atomic_add(self._addr + F.OFF_JOINS, 1)
            return
        self._leave()

    def _leave(self) -> None:
        if self._slot < 0:
            return
        at = self._addr + F.slot_offset(self._slot)
        seg.drop_bell(F.sub_bell(self.name, self._slot))  # before the slot is free for another
        self._s_state.value = F.FREE
        self._s_pin.value = _NONE
        for fd in (self._bell, self._pub_bell):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._bell = self._pub_bell = -1
        _cas(at + F.S_PID, self._pid, 0)
        _shm.atomic_add(self._addr + F.OFF_JOINS, 1)
        self._slot = -1
        with contextlib.suppress(BufferError):
            self._rw.release()
            self._mm.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _poll(fd: int, timeout: float) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(max(0, int(timeout * 1000 + 0.999)))
