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
- Interrupted, not lost: every frame taken goes onto `_pending` in the same call as its claim
  (`fanout_take`, or `fanout_claim` for `_try`'s), and read() hands the oldest out with no
  call between taking it off the list and returning it. A signal handler's exception raised
  inside read() (KeyboardInterrupt) leaves the frame for the next read. Without the compiled
  module the Python stand-ins keep the order but not this promise.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
import weakref
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


# The state words (an array('Q') shared with the compiled take and claim, _native.c):
_LAST_SEQ = 0  # sequence number of the last frame taken
_SKIP_IDX = 1  # skip entries already behind the cursor
_FRAMES = 2
_BYTES = 3
_MISSED = 4  # messages skipped: sequence numbers between those taken
_WORDS = 5


def _claim_py(
    slot: int,
    words: array[int],
    r: int,
    end: int,
    seq: int,
    n: int,
    pending: list[bytes | FanoutFrame],
    item: bytes | FanoutFrame,
) -> bool:
    """fanout_claim's steps in Python (no compiled module): the same result, but a signal
    handler may run between them."""
    pending.append(item)
    if not _cas(slot + F.S_READ, r, end)[0]:
        pending.pop()
        return False
    last = words[_LAST_SEQ]
    words[_MISSED] += max(0, seq - last - 1)
    words[_LAST_SEQ] = seq
    c_uint64.from_address(slot + F.S_LAST_SEQ).value = seq
    words[_FRAMES] += 1
    words[_BYTES] += n
    return True


_CLAIM = _claim_py if _NATIVE is None else _NATIVE.fanout_claim


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
        "__weakref__",
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
        # Given back before it forgets its reader: a signal handler's exception raised as
        # _give_back starts leaves it to this frame's next release (its __del__ at the latest).
        reader._give_back(self._start)
        self._reader = None

    def __del__(self) -> None:
        try:  # noqa: SIM105 (fewer calls than suppress: a signal handler may run at each)
            self.release()
        except Exception:
            pass


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
        # Frames held in place, by start: (the frame, weakly; its view of the segment). A frame
        # that died without giving its hold back (a signal handler's exception inside its
        # release) is given back by _sweep once nothing uses its view.
        self._live: dict[int, tuple[weakref.ref[FanoutFrame], memoryview]] = {}
        self._words = array("Q", bytes(8 * _WORDS))
        self._started = False  # _words[_LAST_SEQ] is known (the slot is active)
        # Frames taken and not handed out yet, oldest first: a run's small frames (bytes), or
        # the one frame _try took (bytes, or a FanoutFrame). Never replaced, only emptied.
        self._pending: list[bytes | FanoutFrame] = []
        # The same list, public for one reason: a consumer may take a small frame itself
        # (read's first case, as _pop does for bytes within its limit): `del pending[0]`.
        self.pending = self._pending
        self._busy = _BUSY_MAX
        self._cpus = _usable_cpus()
        self._joins = c_uint64.from_address(addr + F.OFF_JOINS)
        self._joins_seen = -1
        self._crowd = False
        self._states = [
            c_uint64.from_address(addr + F.slot_offset(i) + F.S_STATE) for i in range(slots)
        ]
        self._stop = False  # interrupt(): a read waiting in another thread gives up
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

    def handed_sequence(self) -> int:
        """The sequence number of the frame read() handed out last (the frames after it wait
        on `_pending`)."""
        return self._words[_LAST_SEQ] - len(self._pending)

    @property
    def missed(self) -> int:
        """Messages skipped so far (a "drop" subscriber overtaken, or "latest")."""
        return self._words[_MISSED]

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

    def _try(self, limit: int) -> bool:
        """Take the next frame onto `_pending`: its bytes (copied out, already given back) when
        its size is at most `limit`, else a FanoutFrame. False when nothing is published yet."""
        if self._s_state.value != F.ACTIVE:
            return False
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
                return False
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
            start = self._base + off + _HDR
            missed = seq - last_seq - 1
            span = holds.span_with(r + total)
            if n <= limit or span > self._cap or (len(holds) >= 2 and span > self.share):
                # Copied out before the claim, no hold needed: if the claim succeeds, the
                # publisher had not moved this cursor past r, so it had not overwritten the
                # frame while it was copied; if it fails, the copy is dropped. Small frames
                # come as bytes; a frame past this subscriber's share of pins as a private
                # FanoutFrame (counted in `copied`).
                item: bytes | FanoutFrame
                if n <= limit:
                    item = mm[start : start + n]
                else:
                    view = self._rw[start : start + n]
                    private, address = _private_copy(view, self._addr + start)
                    view.release()
                    item = FanoutFrame(None, r, private, seq, missed, address)
                if not _CLAIM(self._slot_addr, words, r, r + total, seq, n, self._pending, item):
                    continue
                if n > limit:
                    self.copied += 1
            else:
                # Held in place: the frame object first, then the hold (its end, and its pin
                # if nothing was held: announced before the claim, which the publisher's look
                # at cursors before pins relies on), then the claim. The object owns the hold
                # from the store right after the take (no call between them): a signal before
                # it drops an object that gives back nothing, not the hold the next call
                # takes of the same frame (that object may live on, in the traceback); one
                # after it, before the claim, drops an object whose release gives it back.
                if self._live:
                    self._sweep()
                view = self._rw[start : start + n]
                frame = FanoutFrame(None, r, view, seq, missed, self._addr + start)
                frame.private = False
                ref = weakref.ref(frame)
                old_pin, old_end = holds.pin, holds.end
                holds.take(r, r + total)
                frame._reader = self
                self._live[r] = (ref, view)
                self._s_end.value = r + total
                if old_pin == _NONE:
                    self._s_pin.value = r
                if not _CLAIM(self._slot_addr, words, r, r + total, seq, n, self._pending, frame):
                    holds.untake(r, old_pin, old_end)
                    self._s_pin.value = old_pin
                    self._s_end.value = old_end
                    frame._reader = None  # not ours: its release must not give back the hold
                    del self._live[r]  # (stores, no call: the hold and its record go together)
                    continue
            if self._pub_armed.value:
                seg.ring(self._pub_bell)
            return True
        raise self._corrupt("the cursor keeps moving under this subscriber")

    def _give_back(self, start: int) -> None:
        if os.getpid() != self._pid:
            return  # a forked child's copy of a frame: the slot's pins are the parent's
        holds = self._holds
        if start in holds and holds.release(start):  # (not held: an interrupted release's)
            self._s_pin.value = holds.pin
            if self._pub_armed.value:
                seg.ring(self._pub_bell)
        self._live.pop(start, None)  # after the release: a record without a hold is harmless
        if self._closed and not len(self._holds):
            self._leave()

    def _sweep(self) -> None:
        """Give back the holds of frames that died without giving them back, once no view of
        their memory is left (an export of the view refuses its release)."""
        for start, (ref, view) in list(self._live.items()):
            if ref() is not None:
                continue
            try:
                view.release()
            except BufferError:
                continue  # something still sees that memory: not yet
            if start in self._holds:
                self._give_back(start)
            else:  # given back, the record left behind by a signal handler's exception
                self._live.pop(start, None)

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

    def read(self, timeout: float | None = None, limit: int = -1) -> FanoutFrame | bytes:
        """The next frame (bytes when at most `limit` bytes). Waits up to `timeout` s (None:
        while the publisher lives). TransportClosed after the publisher closed and every
        frame was read; WriterDead if it died; Timeout."""
        pending = self._pending
        if pending:
            return self._pop(limit)
        if self._closed or self._stop:
            raise TransportClosed(f"subscriber of {self.name!r} is closed")
        if self._next(limit):
            return self._pop(limit)
        self._end()
        if timeout == 0:
            raise TransportTimeout(f"no message on {self.name!r}", timeout=timeout)
        head, read = self._head, self._s_read
        if self.crowded():
            pass  # sleep at once (below)
        elif _WAIT is not None:
            if self._wait_compiled(limit):
                return self._pop(limit)
        else:
            for i in range(SPIN):  # cheap looks only: liveness is checked once asleep
                if read.value < head.value and self._try(limit):
                    return self._pop(limit)
                if i > 16:
                    os.sched_yield()
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        try:
            while True:
                if self._stop:
                    raise TransportClosed(f"subscriber of {self.name!r} is closed")
                if self._next(limit):
                    break  # handed out below: the `finally` makes a call, a signal may land
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
        return self._pop(limit)

    def _next(self, limit: int) -> bool:
        """Take the next frames onto `_pending` (False: nothing there): a run of small frames
        through the compiled take when it applies, else _try."""
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
                return True
        return self._try(limit)

    def _pop(self, limit: int) -> FanoutFrame | bytes:
        """Hand out the oldest frame taken: as it was taken, or a private frame over a run's
        bytes when the caller wants frames (limit < 0; a run's frames follow each other). No
        call between taking it off `_pending` and returning it: a signal handler runs before
        (the frame stays) or after (the caller has it)."""
        pending = self._pending
        item = pending[0]
        if type(item) is bytes and len(item) > limit:
            seq = self._words[_LAST_SEQ] - len(pending) + 1
            address = _ADDRESS(item) if _ADDRESS is not None else 0
            item = FanoutFrame(None, 0, memoryview(item), seq, 0, address)
        del pending[0]
        return item

    def crowded(self) -> bool:
        """Whether the publisher and its subscribers (joining, active or closing) are more
        than the CPUs this process may run on; counted again when one joins or leaves."""
        joins = self._joins.value
        if joins != self._joins_seen:
            self._joins_seen = joins
            live = (F.JOINING, F.ACTIVE, F.CLOSING)
            self._crowd = 1 + sum(s.value in live for s in self._states) > self._cpus
        return self._crowd

    def _wait_compiled(self, limit: int) -> bool:
        """Poll for the next frame with the GIL released (compiled), its first poll sized by
        where the last answers came from: one found during it grows it; one found only after
        yielding the CPU, or none, shrinks it (the publisher may need this core, or is idle).
        False: nothing yet, sleep; True: taken onto `_pending`."""
        assert _WAIT is not None
        busy = self._busy
        found = _WAIT(self._addr, self._slot_addr, self._bell, busy, _ROUNDS, 0)
        if found == 2:
            self._busy = min(busy + (busy >> 2), _BUSY_MAX)
            return self._next(limit)
        self._busy = max(busy >> 1, _BUSY_MIN)
        return bool(found) and self._next(limit)

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
        if self._live:
            self._sweep()
        return self._holds.bytes

    @property
    def pinned_frames(self) -> int:
        if self._live:
            self._sweep()
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
        if self._live:
            self._sweep()
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
