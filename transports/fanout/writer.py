"""The fan-out publisher: one writer, up to `slots` subscribers, every frame written once.

```
w = FanoutWriter(name, payload_size=1 << 28, slots=8, metadata=b"schema")
buf = w.reserve(n); buf[:] = ...; w.commit()     # zero copy: fill the frame in place
w.write(b"bytes")                                # one copy into the next frame
```

The rules it keeps (ring.py has the accounting; docs/protocol.md "Fan-out" the layout):

- Claim, fill, publish. `_claim` finds the frame's place (moving the cursors of "drop" and
  "latest" subscribers past what it overwrites, skipping other subscribers' pins, waiting for
  "block" subscribers); nothing it decided can be undone by a subscriber before the commit,
  because subscribers only take frames at or after their cursor. It looks at cursors before
  pins (ring.place): a subscriber announces a hold before it moves its cursor past the frame.
- Publish order: skip entry (if the frame is not right after the previous one), frame
  header, newest-frame start and sequence, then `head` with an atomic add (a full fence), then
  the bells of subscribers that armed theirs: once per sleep, not again while the cursor of
  one is below the head of its bell's last write (it cannot be asleep then without that byte
  in its bell; _native.c FanoutPublisher.put has the argument).
- The usual small frame is published by the compiled put (_native.c FanoutPublisher) when
  `_claim`'s fast path would take it (no join pending, the floor a lap behind, no wrap, no
  frame start to record for `Entries`); the state words it shares with this code are `_st`.
- Subscribers join by asking (slot JOINING, `joins` bumped); the publisher starts them at its
  next frame. A subscriber whose pid is dead is reaped (its cursor and pins forgotten) when it
  is in the way.
"""

from __future__ import annotations

import contextlib
import os
import time
from array import array
from ctypes import c_uint64
from dataclasses import dataclass

from transports.errors import (
    BufferExists,
    BufferFull,
    FrameTooLarge,
    InvalidConfig,
    InvalidFrameSize,
    ReservationError,
    TransportClosed,
)
from transports.fanout import layout as F
from transports.fanout import segment as seg
from transports.fanout.ring import Entries, place
from transports.zerobuffer import posix as _shm

__all__ = ["FanoutWriter", "SubscriberInfo", "WriterStats"]

_HDR = F.FRAME_HEADER_SIZE
_NONE = F.NONE
POLL = 0.05
"""Longest sleep of a waiting publisher before it looks at its subscribers' liveness again."""
_NATIVE = None if seg.native is None else seg.native.FanoutPublisher

# The state words (an array('Q') shared with the compiled put, _native.c FanoutPublisher):
_W = 0  # end of the published frames (absolute): the head
_SEQ = 1  # sequence number of the newest frame
_FLOOR = 2  # no cursor nor pin below it (_lowest)
_SAMPLE = 3  # the next frame start at or past it goes through _publish (Entries.next_sample)
_JOINS = 4  # the joins word when the slots were last looked at (_NONE: look again)
_FRAMES = 5
_BYTES = 6
_DONE = 7  # 1: the last compiled put published its frame


@dataclass(frozen=True)
class SubscriberInfo:
    """One connected subscriber as the publisher sees it."""

    slot: int
    pid: int
    policy: str
    lag: int  # messages published that it has not taken yet
    unread_bytes: int
    pinned_bytes: int  # ring bytes from its oldest held message to its newest


@dataclass(frozen=True)
class WriterStats:
    capacity: int
    frames: int
    bytes: int
    blocked_seconds: float
    subscribers: tuple[SubscriberInfo, ...]


_POLICY_NAMES = {v: k for k, v in F.POLICIES.items()}


class _Slot:
    """The publisher's handles on one subscriber slot (words in shared memory)."""

    __slots__ = (
        "addr",
        "armed",
        "bell",
        "bell_pid",
        "end",
        "index",
        "pid",
        "pin",
        "policy",
        "read",
        "rung",
        "seq",
        "state",
    )

    def __init__(self, base: int, index: int) -> None:
        addr = base + F.slot_offset(index)
        self.index = index
        self.addr = addr
        self.pid = c_uint64.from_address(addr + F.S_PID)
        self.state = c_uint64.from_address(addr + F.S_STATE)
        self.policy = c_uint64.from_address(addr + F.S_POLICY)
        self.read = c_uint64.from_address(addr + F.S_READ)
        self.pin = c_uint64.from_address(addr + F.S_PIN)
        self.end = c_uint64.from_address(addr + F.S_HOLD_END)
        self.armed = c_uint64.from_address(addr + F.S_ARMED)
        self.seq = c_uint64.from_address(addr + F.S_LAST_SEQ)
        self.bell = -1
        self.bell_pid = 0
        self.rung = 0  # the head after its bell was last written (written once per sleep)

    # ring.Subscriber: what ring.place looks at

    def cursor(self) -> int:
        return self.read.value if self.state.value == F.ACTIVE else _NONE

    def policy_code(self) -> int:
        return self.policy.value

    def held(self) -> tuple[int, int]:
        pin = self.pin.value
        return pin, self.end.value

    def dead(self) -> bool:
        return owner_dead(self.pid.value)

    def move(self, frm: int, to: int) -> None:
        _shm.compare_exchange(self.addr + F.S_READ, frm, to)


def reap(name: str, slot_addr: int, index: int, pid: int) -> bool:
    """Free a slot whose owner `pid` is dead: claim it for the reaping (so only one process
    reaps and no new subscriber takes it meanwhile), forget its cursor and pins, remove its
    bell, then make it free. False if another process got there first."""
    mark = (1 << 63) | os.getpid()
    swapped, _ = _shm.compare_exchange(slot_addr + F.S_PID, pid, mark)
    if not swapped:
        return False
    c_uint64.from_address(slot_addr + F.S_STATE).value = F.FREE
    c_uint64.from_address(slot_addr + F.S_PIN).value = _NONE
    c_uint64.from_address(slot_addr + F.S_ARMED).value = 0
    seg.drop_bell(F.sub_bell(name, index))
    c_uint64.from_address(slot_addr + F.S_PID).value = 0
    return True


def owner_dead(pid: int) -> bool:
    """A slot's owner is gone (a reaping mark counts as alive while its reaper lives)."""
    if pid & (1 << 63):
        return not _shm.pid_alive(pid & 0xFFFFFFFF)
    return not _shm.pid_alive(pid)


class FanoutWriter:
    """Creates fan-out segment NAME (ring of `payload_size` bytes, `slots` subscribers,
    `metadata` written once) and publishes frames into it."""

    def __init__(
        self, name: str, *, payload_size: int, slots: int = 8, metadata: bytes = b""
    ) -> None:
        self._closed = True
        if not isinstance(name, str) or not _valid(name):
            raise InvalidConfig(
                f"invalid publisher name {name!r}: use 1-200 characters from [A-Za-z0-9_-]"
            )
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise InvalidConfig(f"subscribers must be an int, not {slots!r}")
        if not 1 <= slots <= F.MAX_SUBSCRIBERS:
            raise InvalidConfig(f"subscribers must be 1-{F.MAX_SUBSCRIBERS}, not {slots}")
        if isinstance(payload_size, bool) or not isinstance(payload_size, int):
            raise InvalidConfig(f"capacity must be an int of bytes, not {payload_size!r}")
        P = F.align(max(payload_size, F.PAGE), F.PAGE)
        meta_block = F.align(F.U64.size + len(metadata))
        self.name = name
        self._pid = os.getpid()
        try:
            self._lock = _shm.acquire_lock(F.lock_stem(name))
        except BufferExists:
            raise BufferExists(
                f"publisher {name!r} already exists in a live process; pick another name or "
                "close that publisher first"
            ) from None
        try:
            seg.remove_stale(name, F.MAX_SUBSCRIBERS)
            total = F.total_size(slots, meta_block, P)
            mm = seg.create_shm(name, total)
        except BaseException:
            _shm.release_lock(F.lock_stem(name), self._lock)
            raise
        self._mm = mm
        self._rw = memoryview(mm)
        self._addr = addr = _shm.address_of(mm)
        U = F.U64
        mm[0 : len(F.MAGIC)] = F.MAGIC
        U.pack_into(mm, F.OFF_VERSION, F.VERSION)
        U.pack_into(mm, F.OFF_SLOTS, slots)
        U.pack_into(mm, F.OFF_META_SIZE, meta_block)
        U.pack_into(mm, F.OFF_PAYLOAD_SIZE, P)
        U.pack_into(mm, F.OFF_PUB_PID, self._pid)
        mo = F.meta_offset(slots)
        U.pack_into(mm, mo, len(metadata))
        mm[mo + 8 : mo + 8 + len(metadata)] = metadata
        U.pack_into(mm, F.OFF_META_LEN, len(metadata))
        for i in range(slots):
            U.pack_into(mm, F.slot_offset(i) + F.S_PIN, _NONE)
        self._P = P
        self._slots_n = slots
        self._base = F.payload_offset(slots, meta_block)
        self._skip_base = F.skip_offset(slots)
        self._head = c_uint64.from_address(addr + F.OFF_HEAD)
        self._head_addr = addr + F.OFF_HEAD
        self._last = c_uint64.from_address(addr + F.OFF_LAST)
        self._seqw = c_uint64.from_address(addr + F.OFF_SEQ)
        self._skips = c_uint64.from_address(addr + F.OFF_SKIPS)
        self._joins = c_uint64.from_address(addr + F.OFF_JOINS)
        self._armed = c_uint64.from_address(addr + F.OFF_PUB_ARMED)
        self._armed_addr = addr + F.OFF_PUB_ARMED
        self._slots = [_Slot(addr, i) for i in range(slots)]
        self._active: list[_Slot] = []
        self._bells: list[_Slot] = []
        self._st = array("Q", bytes(8 * 8))
        self._entries = Entries(P)
        self._res: tuple[int, int, int] | None = None  # (position, total, n) when reserved
        self._res_view: memoryview | None = None
        self._blocked = 0.0
        self._nat = None if _NATIVE is None else _NATIVE(addr, self._base, P, self._st)
        try:
            self._bell = seg.make_bell(F.pub_bell(name))
        except BaseException:
            self._rw.release()
            mm.close()
            _shm.unlink_shm(name)
            _shm.release_lock(F.lock_stem(name), self._lock)
            raise
        U.pack_into(mm, F.OFF_READY, 1)
        self._closed = False

    # -- subscribers -----------------------------------------------------------------------------

    def _update_slots(self) -> None:
        """Start subscribers that asked to join at the next frame; forget those that left."""
        st = self._st
        joins = self._joins.value  # stored when done: an interrupted look is looked at again
        if self._nat is not None:
            self._nat.bells = ()  # no descriptor below is closed while the compiled put has it
        active: list[_Slot] = []
        for s in self._slots:
            pid = s.pid.value
            state = s.state.value
            if pid == 0 or pid & (1 << 63):
                continue
            if state == F.JOINING:
                s.read.value = st[_W]
                s.seq.value = st[_SEQ]
                s.state.value = F.ACTIVE
                state = F.ACTIVE
            if state in (F.ACTIVE, F.CLOSING):
                active.append(s)
                if s.bell_pid != pid:
                    if s.bell >= 0:
                        fd, s.bell = s.bell, -1  # never a closed descriptor kept
                        os.close(fd)
                    s.bell = seg.open_bell(F.sub_bell(self.name, s.index))
                    s.bell_pid = pid
        self._active = active
        self._bells = [s for s in active if s.bell >= 0]
        for s in self._bells:
            s.rung = 0  # rung when next armed (the compiled put's rule, _native.c)
        if self._nat is not None:
            self._nat.bells = tuple((s.addr + F.S_ARMED, s.bell) for s in active if s.bell >= 0)
        st[_JOINS] = joins

    def _reap_dead(self, slots: list[_Slot]) -> bool:
        """Reap the dead owners among `slots`; True if any was."""
        reaped = False
        for s in slots:
            pid = s.pid.value
            if pid and not pid & (1 << 63) and owner_dead(pid):
                reaped |= reap(self.name, s.addr, s.index, pid)
        if reaped:
            self._st[_JOINS] = _NONE  # rescan
        return reaped

    # -- placement -------------------------------------------------------------------------------

    def _try_place(self, t: int, blockers: list[_Slot]) -> int:
        """The position for a frame of t ring bytes, or -1 (blockers says who is in the way):
        ring.place over the active slots, cursors looked at before pins."""
        w = self._st[_W]
        return place(w, t, self._P, self._active, lambda x: self._entries.boundary(x, w), blockers)

    def _claim(self, n: int, timeout: float | None) -> int:
        if n <= 0:
            raise InvalidFrameSize("a frame must carry at least one byte")
        t = F.frame_total(n)
        if t > self._P // 2:
            raise FrameTooLarge(
                f"a frame of {n} bytes needs {t} ring bytes, more than half of the "
                f"{self._P}-byte ring; create the publisher with capacity >= {2 * t}",
                size=n,
                capacity=self._P,
            )
        st = self._st
        if self._joins.value != st[_JOINS]:
            self._update_slots()
        w = st[_W]
        P = self._P
        if P - w % P >= t and w + t <= st[_FLOOR] + P:
            return w  # fast path: no cursor nor pin is within a lap of the frame's bytes
        blockers: list[_Slot] = []
        c = self._try_place(t, blockers)
        if c < 0:
            c = self._wait_room(t, timeout)
        st[_FLOOR] = self._lowest()
        return c

    def _lowest(self) -> int:
        """The lowest cursor or pin of any subscriber now: none can go below it later (cursors
        and pins only move forward; a new pin is at or after its cursor; a joining subscriber
        starts at the write position), so a frame whose old lap ends below it overwrites
        nothing anyone may read."""
        low = self._st[_W]
        for s in self._active:
            if s.state.value == F.ACTIVE:
                low = min(low, s.read.value)
            pin = s.pin.value
            if pin != _NONE:
                low = min(low, pin)
        return low

    def _wait_room(self, t: int, timeout: float | None) -> int:
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        try:
            while True:
                self._update_slots()
                blockers: list[_Slot] = []
                c = self._try_place(t, blockers)
                if c >= 0:
                    return c
                if self._reap_dead(blockers):
                    continue
                _shm.atomic_add(self._armed_addr, 1)
                try:
                    blockers = []
                    c = self._try_place(t, blockers)
                    if c >= 0:
                        return c
                    wait = POLL
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                        if wait <= 0:
                            raise self._full(t, blockers, timeout)
                    _poll(self._bell, wait)
                finally:
                    _shm.atomic_sub(self._armed_addr, 1)
                seg.drain(self._bell)
        finally:
            self._blocked += time.monotonic() - start

    def _full(self, t: int, blockers: list[_Slot], timeout: float | None) -> BufferFull:
        who = []
        for s in blockers:
            pin = s.pin.value
            pinned = 0 if pin == _NONE else s.end.value - pin
            what = (
                f"pins {pinned:,} bytes"
                if pin != _NONE and s.read.value >= self._st[_W]
                else f"has {self._st[_W] - s.read.value:,} bytes unread"
            )
            who.append(
                f"subscriber pid {s.pid.value} ({_POLICY_NAMES.get(s.policy.value, '?')}) {what}"
            )
        return BufferFull(
            f"publisher {self.name!r}: no room within {timeout} s for a message of {t:,} ring "
            f"bytes in the {self._P:,}-byte ring; in the way: {'; '.join(who) or 'nobody'}. "
            "Block subscribers are waited for (lossless); use policy='drop' or 'latest' for "
            "subscribers that may miss messages, drop views sooner, or a bigger capacity.",
            timeout=timeout,
        )

    # -- frames ----------------------------------------------------------------------------------

    def reserve(self, n: int, timeout: float | None = None) -> memoryview:
        """Claim the next frame of `n` data bytes; fill it, then commit() (or abort())."""
        self._check_open()
        if self._res is not None:
            raise ReservationError("a frame is already reserved: commit() or abort() it first")
        c = self._claim(n, timeout)
        self._res = (c, F.frame_total(n), n)
        start = self._base + c % self._P + _HDR
        view = self._rw[start : start + n]
        self._res_view = view
        return view

    @property
    def reserved(self) -> bool:
        return self._res is not None

    @property
    def reserved_offset(self) -> int:
        if self._res is None:
            raise ReservationError("no frame is reserved")
        return self._base + self._res[0] % self._P + _HDR

    @property
    def reserved_address(self) -> int:
        return self._addr + self.reserved_offset

    def abort(self) -> None:
        if self._res is None:
            raise ReservationError("abort() without reserve()")
        self._end_reservation()

    def _end_reservation(self) -> None:
        self._res = None
        view = self._res_view
        self._res_view = None
        if view is not None:
            with contextlib.suppress(BufferError):
                view.release()

    def commit(self, n_used: int | None = None) -> None:
        """Publish the reserved frame with its first `n_used` bytes (default: all)."""
        self._check_open()
        res = self._res
        if res is None:
            raise ReservationError("commit() without reserve()")
        c, _, n = res
        if n_used is None:
            n_used = n
        elif not 1 <= n_used <= n:
            raise InvalidFrameSize(f"commit(n_used={n_used!r}): must be in [1, {n}]")
        self._end_reservation()
        self._publish(c, n_used)

    def write(self, data: bytes | memoryview, timeout: float | None = None) -> None:
        """Copy one bytes-like object into the next frame and publish it."""
        nat = self._nat
        if nat is not None and type(data) is bytes and self._res is None:
            nat.put = data  # compiled: publishes at once when the fast path's rules allow
            if self._st[_DONE]:
                return
        view = memoryview(data).cast("B")
        n = view.nbytes
        self._check_open()
        if self._res is not None:
            raise ReservationError("a reserved frame is pending: commit() or abort() it first")
        c = self._claim(n, timeout)
        start = self._base + c % self._P + _HDR
        self._mm[start : start + n] = view
        self._publish(c, n)

    def _publish(self, c: int, n: int) -> None:
        """Publish the frame of n data bytes written at position c. Every step that calls
        comes first, then plain stores, then the publication: so a signal handler's exception
        (KeyboardInterrupt) raised in here means the frame was not published (the caller may
        send it again, nothing is duplicated), and one raised after it cannot come before the
        caller's return (with the compiled module; the Python stand-in has calls after it)."""
        P = self._P
        st = self._st
        w = st[_W]
        mm = self._mm
        seq = st[_SEQ] + 1
        t = F.frame_total(n)
        F.FRAME_HEADER.pack_into(mm, self._base + c % P, n, seq)
        k = self._skips.value
        if c != w:  # a wrap or a gap: record where the next entry really is (counted below)
            F.FRAME_HEADER.pack_into(mm, self._skip_base + (k % F.SKIP_ENTRIES) * F.SKIP_SIZE, w, c)
        # `w` is where the next entry starts, whatever an interrupted send decided before: a
        # frame or a skip's start, a place a moved cursor may be put.
        entries = self._entries
        entries.add(w)
        entries.forget_before(c + t - P)
        # Plain stores from here: no signal handler runs between them and the publication.
        if c != w:
            self._skips.value = k + 1
        st[_SAMPLE] = entries.next_sample
        st[_SEQ] = seq
        self._last.value = c
        self._seqw.value = seq
        st[_W] = c + t
        st[_FRAMES] += 1
        st[_BYTES] += n
        nat = self._nat
        if nat is not None:
            nat.head = c + t  # publishes (a full fence), then the bells of sleepers
            return
        _shm.atomic_add(self._head_addr, c + t - w)  # publishes; a full fence before the bells
        for s in self._bells:
            if s.armed.value and s.read.value >= s.rung:
                seg.ring(s.bell)
                s.rung = c + t

    # -- state -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"publisher {self.name!r} is closed; create a new one")

    @property
    def capacity(self) -> int:
        return self._P

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribers(self) -> tuple[SubscriberInfo, ...]:
        if self._closed:
            return ()
        out = []
        for s in self._slots:
            pid = s.pid.value
            if not pid or pid & (1 << 63) or s.state.value not in (F.ACTIVE, F.JOINING):
                continue
            if owner_dead(pid):
                continue
            pin = s.pin.value
            active = s.state.value == F.ACTIVE
            out.append(
                SubscriberInfo(
                    slot=s.index,
                    pid=pid,
                    policy=_POLICY_NAMES.get(s.policy.value, "?"),
                    lag=max(0, self._st[_SEQ] - s.seq.value) if active else 0,
                    unread_bytes=max(0, self._st[_W] - s.read.value) if active else 0,
                    pinned_bytes=0 if pin == _NONE else max(0, s.end.value - pin),
                )
            )
        return tuple(out)

    def stats(self) -> WriterStats:
        return WriterStats(
            capacity=self._P,
            frames=self._st[_FRAMES],
            bytes=self._st[_BYTES],
            blocked_seconds=self._blocked,
            subscribers=self.subscribers(),
        )

    def close(self) -> None:
        """End the stream (subscribers get every message already published, then the end)
        and remove the names; subscribers' mappings stay valid. Safe twice."""
        if self._closed:
            return
        self._closed = True
        self._nat = None  # holds the mapping's address: never used past here
        if self._res is not None:
            self._end_reservation()
        if os.getpid() != self._pid:
            return
        F.U64.pack_into(self._mm, F.OFF_CLOSED, 1)
        _shm.atomic_add(self._head_addr, 0)  # fence
        self._reap_dead(self._slots)  # their bells too
        self._update_slots()
        for s in self._slots:
            if s.bell >= 0:
                seg.ring(s.bell)
                os.close(s.bell)
                s.bell = -1
        _shm.unlink_shm(self.name)
        seg.remove_bells(self.name, 0)
        with contextlib.suppress(OSError):
            os.close(self._bell)
        _shm.release_lock(F.lock_stem(self.name), self._lock)
        self._rw.release()
        with contextlib.suppress(BufferError):
            self._mm.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _valid(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9_-]{1,200}", name))


def _poll(fd: int, timeout: float) -> None:
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(max(0, int(timeout * 1000 + 0.999)))
