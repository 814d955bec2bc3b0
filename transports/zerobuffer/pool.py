"""Pools: one reader and up to 64 writers at once, each writer in a standard ZeroBuffer ring of
its own (a zcser extension of the protocol, docs/protocol.md "Pools").

```
pool = PoolReader(name, BufferConfig(4096, 64 << 20), places=8)   # creates everything
place = Place.claim(name, Place.open(name))   # a writer takes a free place...
w = Writer(place.ring)                        # ...and writes its ring as any ZeroBuffer writer
place.reserve(w)                              # its ring's pages; w rings the bell from now on
w.write(b"...")                               # a bell byte only while the reader sleeps
place.leave(); w.close()
index, frame = pool.read_small(limit, timeout)   # the next frame of whichever ring has one
```

Names, for a pool NAME of N places:

```
NAME--pool        control segment: an OIEB (signed, reader_pid, no payload) and the table below
                  in its metadata block, so stale-resource cleanup treats it as any buffer
RING_i            place i's standard ring (shm, sem-w-, sem-r-, lock): NAME when N == 1,
                  NAME--i otherwise
RING_i.bell       place i's bell: a FIFO in the lock directory
```

Control table (at offset 128, the metadata block; little endian):

```
+0    8s   magic b"ZCSPOOL1"
+8    u32  places N (1..64)
+12   u32  flags: bit 0 = the rings' payload pages are reserved by the writer that takes them
+16   u64  sleepers: readers armed to sleep on the bells (writers ring while it is non-zero)
+24   u64  joins: places taken so far (a reader looks for new writers when it changes; a hint
           only, checked: it never exceeds the generations' sum nor goes back)
+64 + 64*i, place i:
   +0  u64 owner: 0 free, the PID of the writer holding it, RECLAIMING (bit 63)
   +8  u64 generation: times taken
```

Rules (the writer's side in `Place`, the reader's in `PoolReader`):
- Taking a place: compare-and-swap owner from 0 (or a dead PID) to our PID, generation += 1,
  attach the ring as its one writer (its own writer_pid compare-and-swap), reserve the ring's
  pages when flag bit 0 is set (ShmFullError when /dev/shm is short), open the bell, joins += 1,
  ring once.
- After every publish a writer loads `sleepers` (the ring's sem-w post before it is a full
  barrier) and, if non-zero, writes one byte to its bell. A reader about to sleep adds 1 to
  `sleepers` (an atomic add: a full barrier), looks at every ring once more, then polls the
  bells; so a frame published after that look rings a bell.
- A writer leaving: the ring's close (writer_pid 0), then owner goes from its PID to 0, then
  its bell's descriptor is closed (so the reader's hang-up finds the place free). A writer dying: the kernel closes its bell, which the reader
  sees as a hang-up (its PID is also checked every BACKSTOP seconds).
- A reader frees a place whose writer is gone once its ring is drained: owner from the dead
  PID to 0; then, when the ring is idle (nothing unread or held) and owner is still 0, owner
  from 0 to RECLAIMING, the payload's pages go back (they read as zeros), owner back to 0.
  A writer never takes a RECLAIMING place. A new writer may take a freed place before that:
  its ring then simply goes on, and its pages stay.
- Every word here is written by other processes, so the reader trusts none of them blindly:
  `joins` only says when to look at the generations (and the reader also looks after every
  sleep and every LOOK_EVERY reads, so a joins word that stands still or wraps hides nobody);
  a joins value no writer makes (above the generations' sum, or going back) is counted in
  `anomalies` and ignored. A generation that goes back, or leaps by more than MAX_STEP since
  the reader last looked, is CorruptBuffer: the stream's end is counted from the generations.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import struct
import threading
import time
import weakref
from array import array
from dataclasses import dataclass
from typing import Any

from transports.errors import (
    BufferNotFound,
    CorruptBuffer,
    IncompatibleBuffer,
    InvalidConfig,
    Timeout,
    TransportClosed,
    TransportError,
    WriterDead,
)
from transports.zerobuffer import layout as L
from transports.zerobuffer import posix as _shm
from transports.zerobuffer.common import (
    DEFAULT_SPIN,
    BufferConfig,
    ReaderStats,
    _check_name,
    _create_exclusive,
    interrupts_deferred,
    is_orphan,
)
from transports.zerobuffer.reader import Frame, Reader

__all__ = [
    "CONTROL_MAX",
    "MAX_PLACES",
    "ControlTable",
    "Departure",
    "Place",
    "PlacesTaken",
    "PoolReader",
    "control_name",
    "parse_control",
    "ring_name",
]

_log = logging.getLogger("transports.zerobuffer")

MAX_PLACES = 64
BACKSTOP = 0.5
"""Longest sleep of a pool reader before it checks its writers' PIDs (a writer whose bell is
still held open by a forked child of it does not hang up when it dies)."""

LOOK_EVERY = 256
"""Reads between two looks at the places' generations when the joins word did not change."""
MAX_STEP = 1 << 32
"""Most claims of one place between two looks of its reader that are taken as real (each is a
process attaching a ring: billions cannot happen between two reads)."""

POLL_BUSY_NS = 30_000
POLL_ROUNDS = 64
"""The compiled spin before a reader sleeps on the bells (_native.c pool_poll): it polls every
ring in use for POLL_BUSY_NS, then yields the CPU and polls again up to POLL_ROUNDS times (no
more once another task wants the core)."""
_POLL = None if _shm.hotpath is None else _shm.hotpath.pool_poll
POOL_SHARED = 64
"""Added to pool_poll's answer when the frame turned up right after a yield that ran another
task for a short while (_native.c)."""

_MAGIC = b"ZCSPOOL1"
_TABLE = L.OIEB_SIZE
_HEAD = struct.Struct("<8sII")
_OFF_SLEEPERS = _TABLE + 16
_OFF_JOINS = _TABLE + 24
_PLACE0 = _TABLE + 64
_PLACE_SIZE = 64
_FLAG_SPARSE = 1
RECLAIMING = 1 << 63
_U64 = L.U64


CONTROL_MAX = _PLACE0 + _PLACE_SIZE * MAX_PLACES
"""Bytes from a control segment's start that hold its OIEB and the largest table."""


@dataclass(frozen=True)
class ControlTable:
    """A pool's control table as read from outside (`zcser inspect`): see the module doc."""

    places: int
    sparse: bool
    sleepers: int
    joins: int
    owners: tuple[int, ...]  # per place: 0 free, a writer's PID, or RECLAIMING
    generations: tuple[int, ...]  # per place: times taken


def parse_control(raw: bytes) -> ControlTable:
    """The table in `raw` (a control segment's bytes from offset 0); CorruptBuffer for what no
    PoolReader writes (no magic, places out of range, cut short)."""
    if len(raw) < _PLACE0:
        raise CorruptBuffer(f"{len(raw)} bytes is too short for a pool control table")
    magic, places, flags = _HEAD.unpack_from(raw, _TABLE)
    if magic != _MAGIC or not 1 <= places <= MAX_PLACES:
        raise CorruptBuffer(f"not a zcser pool control table (magic {magic!r}, {places} places)")
    if len(raw) < _PLACE0 + _PLACE_SIZE * places:
        raise CorruptBuffer(f"a table of {places} places does not fit {len(raw)} bytes")
    at = [_owner_at(i) for i in range(places)]
    return ControlTable(
        places=places,
        sparse=bool(flags & _FLAG_SPARSE),
        sleepers=_U64.unpack_from(raw, _OFF_SLEEPERS)[0],
        joins=_U64.unpack_from(raw, _OFF_JOINS)[0],
        owners=tuple(_U64.unpack_from(raw, off)[0] for off in at),
        generations=tuple(_U64.unpack_from(raw, off + 8)[0] for off in at),
    )


def control_name(name: str) -> str:
    return f"{name}--pool"


def ring_name(name: str, places: int, index: int) -> str:
    return name if places == 1 else f"{name}--{index}"


def _table_size(places: int) -> int:
    return L.align(64 + _PLACE_SIZE * places)


def _owner_at(index: int) -> int:
    return _PLACE0 + _PLACE_SIZE * index


class PlacesTaken(TransportError):
    """Every place of the pool has a live writer."""


@dataclass(frozen=True)
class Departure:
    """A pool writer that left: `died` (its process ended without closing) or closed."""

    place: int
    pid: int
    died: bool


# --- the writer's side ---------------------------------------------------------------------------


class Place:
    """A writer's place in pool NAME: which ring to write, and its bell. See the module rules."""

    def __init__(
        self, name: str, mm: Any, places: int, sparse: bool, index: int, after_death: bool
    ) -> None:
        self.name = name
        self.index = index
        self.after_death = after_death
        """The place's previous writer died without giving it back (its ring may end without
        an end-of-stream mark): the new writer may say so first."""
        self.places = places
        self.ring = ring_name(name, places, index)
        self._mm = mm
        self._addr = _shm.address_of(mm)
        self._owner = self._addr + _owner_at(index)
        self._sparse = sparse
        self._pid = os.getpid()
        self._bell: int | None = None

    @classmethod
    def open(cls, name: str) -> tuple[Any, int, bool] | None:
        """(mapping, places, sparse) of pool NAME's control segment; None when NAME has none
        (no pool: a plain ring, or nothing yet). BufferNotFound while it is being created."""
        try:
            mm = _shm.open_shm(control_name(name))
        except BufferNotFound:
            return None
        try:
            if _U64.unpack_from(mm, L.OFF_READER_PID)[0] == 0:
                raise BufferNotFound(f"pool {name!r} is still being created; retry in a moment")
            size = len(mm)
            magic, places, flags = _HEAD.unpack_from(mm, _TABLE) if size >= _PLACE0 else (b"", 0, 0)
            if magic != _MAGIC or not 1 <= places <= MAX_PLACES or size < _PLACE0 + 64 * places:
                raise IncompatibleBuffer(
                    f"{control_name(name)} is not a zcser pool control segment (bad magic or "
                    "size); remove it if it is stale, or pick another name"
                )
        except BaseException:
            mm.close()
            raise
        return mm, places, bool(flags & _FLAG_SPARSE)

    @classmethod
    def claim(cls, name: str, found: tuple[Any, int, bool]) -> Place:
        """Take a free place (raises PlacesTaken when every one has a live writer)."""
        mm, places, sparse = found
        addr = _shm.address_of(mm)
        pid = os.getpid()
        start = random.randrange(places)
        for k in range(places):
            index = (start + k) % places
            owner_addr = addr + _owner_at(index)
            owner = _U64.unpack_from(mm, _owner_at(index))[0]
            if owner & RECLAIMING or (owner and _shm.pid_alive(owner)):
                continue
            swapped, _ = _shm.compare_exchange(owner_addr, owner, pid)
            if swapped:
                _shm.atomic_add(owner_addr + 8, 1)
                return cls(name, mm, places, sparse, index, after_death=bool(owner))
        raise PlacesTaken(
            f"pool {name!r}: all {places} places have a live writer (senders={places})"
        )

    def reserve(self, writer: Any) -> None:
        """Reserve the ring's payload pages (sparse pools), hand the bell to `writer` (a
        Writer of our ring: it rings after every publish) and announce ourselves: the bell
        rings once and joins grows."""
        if self._sparse:
            offset, size = writer.payload_span
            _shm.reserve_pages(self.ring, 0, offset + size)
        self._bell = _shm.open_bell(self.ring)
        if self._bell is not None:
            writer.set_bell(self._addr + _OFF_SLEEPERS, self._bell)
        _shm.atomic_add(self._addr + _OFF_JOINS, 1)
        if self._bell is not None:
            _shm.ring_bell(self._bell)

    def leave(self) -> None:
        """Give the place back (after the ring's writer closed). Safe twice."""
        if self._mm is not None and os.getpid() == self._pid:
            _shm.compare_exchange(self._owner, self._pid, 0)
        bell, self._bell = self._bell, None
        if bell is not None:  # after the owner word: the reader's hang-up finds it free
            with contextlib.suppress(OSError):
                os.close(bell)
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()
            self._mm = None

    def forget(self) -> None:
        """In a forked child: drop our copies without touching the parent's place."""
        self._pid = -1
        self.leave()


# --- the reader's side ---------------------------------------------------------------------------


class _Names:
    """What a PoolReader made (lock, control segment, rings, bells), removed by `teardown`: at
    close(), when its creation fails, or when the PoolReader is dropped (a finalizer, as for a
    Reader). A forked child removes nothing (the names are the parent's)."""

    def __init__(self, name: str, places: int, cname: str) -> None:
        self.name = name
        self.places = places
        self.cname = cname
        self.pid = os.getpid()
        self.lock_fd: int | None = None
        self.mm: Any = None
        self.rings: list[Reader] = []
        self.bells: list[int] = []

    def teardown(self) -> None:
        with interrupts_deferred():  # Ctrl-C: every name is removed, or none yet
            self._teardown()

    def _teardown(self) -> None:
        if os.getpid() != self.pid:
            return
        for ring in self.rings:
            with contextlib.suppress(Exception):
                ring.close()
        for i, fd in enumerate(self.bells):
            with contextlib.suppress(OSError):
                os.close(fd)
            _shm.unlink_bell(ring_name(self.name, self.places, i))
        self.bells.clear()
        mm = self.mm
        if mm is not None:
            with contextlib.suppress(Exception):
                _U64.pack_into(mm, L.OFF_READER_PID, 0)
            _shm.unlink_shm(self.cname)
            if threading.main_thread().is_alive():  # at exit a daemon thread may still read it
                with contextlib.suppress(BufferError):
                    mm.close()
        if self.lock_fd is not None:
            _shm.release_lock(self.cname, self.lock_fd)


class PoolReader:
    """Creates pool NAME (its control segment, its rings and their bells) and reads the frames
    of all its writers. Not thread-safe (one reading thread, as a Reader)."""

    def __init__(
        self,
        name: str,
        config: BufferConfig,
        places: int,
        *,
        spin: int = DEFAULT_SPIN,
    ) -> None:
        _check_name(name)
        if isinstance(places, bool) or not isinstance(places, int) or not 1 <= places <= MAX_PLACES:
            raise InvalidConfig(f"places must be an int from 1 to {MAX_PLACES}, not {places!r}")
        self.name = name
        self.places = places
        self.sparse = places > 1
        self._spin = max(0, int(spin))
        self._closed = True
        self.interrupted = False  # interrupt(): the next wait for a frame ends
        self._cname = control_name(name)
        self._pid = os.getpid()
        self._names = names = _Names(name, places, self._cname)
        self.rings = names.rings
        self._bells = names.bells
        _shm.cleanup_stale(is_orphan)
        with interrupts_deferred():  # Ctrl-C: every name is made and owned, or none
            self._finalizer = weakref.finalize(self, names.teardown)
            self._create(config, spin)
        # Each ring's core: its `pending` list holds the frames taken ahead (a run).
        # `cores`, `next`, `after` and `countdown` are public for one reason: a consumer may
        # inline _take's first case (the ring whose turn it is has a small frame taken
        # already) and then moves them exactly as _take does (zcser.channels.shm does, one
        # call fewer).
        self.cores = [ring._core for ring in self.rings]
        self._sleepers = self._addr + _OFF_SLEEPERS
        self._joins_word = _shm.word_at(self._addr + _OFF_JOINS)
        self._joins = 0  # the joins word when we last looked (a hint: see the module rules)
        self._joins_checked = 0  # the last joins value that passed its checks
        self.countdown = LOOK_EVERY  # reads until we look at the generations anyway
        self.anomalies = 0  # joins values no writer makes, ignored
        self.active = [False] * places  # a writer was seen and has not been seen leaving
        self.after = [(i + 1) % places for i in range(places)]  # the turn after place i's
        self._poll_words = array("Q")  # see _order
        self._poll_places: list[int] = []  # the place of each of its pairs
        self._shared = False  # pool_poll's last answer came right after a short switch
        self._generations = [0] * places  # each place's generation when last looked at
        self._draining = [False] * places  # its writer is gone: read to the end, then free
        self._reclaim: set[int] = set()  # freed places whose pages wait to go back
        self.next = 0  # round robin: the place looked at first
        self.place = 0  # the place of the frame read last
        self.lost = 0
        self.departures = 0
        self._checked_at = time.monotonic()

    def _create(self, config: BufferConfig, spin: int) -> None:
        """The lock, the control segment, each ring and its bell; all removed on failure."""
        name, places = self.name, self.places
        try:
            self._names.lock_fd = _shm.acquire_lock(self._cname)
            total = L.OIEB_SIZE + _table_size(places)
            self._mm = self._names.mm = _create_exclusive(self._cname, total)
            self._addr = _shm.address_of(self._mm)
            block = _table_size(places)
            L.OIEB_STRUCT.pack_into(
                self._mm, 0, L.OIEB_SIZE, *L.VERSION,
                block, block, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0,
            )  # fmt: skip
            _HEAD.pack_into(self._mm, _TABLE, _MAGIC, places, _FLAG_SPARSE if self.sparse else 0)
            for i in range(places):
                ring = ring_name(name, places, i)
                self._bells.append(_shm.create_bell(ring))
                self.rings.append(Reader(ring, config, timeout=None, spin=spin, sparse=self.sparse))
            _U64.pack_into(self._mm, L.OFF_READER_PID, self._pid)  # ready
        except BaseException:
            self._finalizer()
            raise
        self._closed = False

    # -- reading ---------------------------------------------------------------------------------

    def read_small(self, limit: int, timeout: float | None, looked: bool = False) -> Frame | bytes:
        """The next frame of any writer, round robin (as Reader.read_small); `self.place` says
        whose. WriterDead (with `.place`, and `.closed` when it closed) once a writer has left
        and its last frame was read: the caller may look at who is left; Timeout. `looked`:
        the caller's take() just found nothing, so the wait begins at once."""
        if self._closed:
            raise TransportClosed(f"pool reader of {self.name!r} is closed")
        if not looked:
            got = self._take(limit)
            if got is not None:
                return got
        deadline = None if timeout is None else time.monotonic() + timeout
        if _POLL is not None:
            if self._spin and timeout != 0:  # timeout 0: one look, no spin
                got = self._poll(limit)
                if got is not None:
                    return got
        elif timeout != 0:  # fewer looks than a Reader's spin: each looks at every ring
            for i in range(self._spin // 8):
                got = self._take(limit)
                if got is not None:
                    return got
                if i >= 4:
                    os.sched_yield()
        while True:
            if self.interrupted:
                self.interrupted = False
                raise TransportClosed(f"pool reader of {self.name!r} was closed while waiting")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(
                    f"no frame on pool {self.name!r} within {timeout} s "
                    f"({sum(self.active)} writers connected)",
                    timeout=timeout,
                )
            self.arm()
            try:  # only looks while armed: a frame taken here would be lost to a Ctrl-C
                if not self.ready():  # landing in disarm() (a call) before it is returned
                    self.sleep(remaining)
            finally:
                self.disarm()
            self.woken()
            got = self._take(limit)
            if got is not None:
                return got

    def _poll(self, limit: int) -> Frame | bytes | None:
        """The spin before sleeping, compiled with the GIL released: it only looks at each ring
        in use for a frame past our read position (takes nothing), then _take reads as usual.
        Joins and departures are not looked for meanwhile: the sleep's look (ready) sees them."""
        assert _POLL is not None
        words = self._poll_words
        if self._shared:
            # The last answer came right after a short switch: a writer probably shares this
            # core. Sleep this once instead: the wake-up lets the scheduler put this process
            # on an idle core, which polling never does (as Reader.wait_frame).
            self._shared = False
            return None
        if len(self._poll_places) != self.active.count(True):
            self._order()  # a signal landed between a change of `active` and _order
            words = self._poll_words
        if words and not self._closed:
            found = _POLL(words, POLL_BUSY_NS, POLL_ROUNDS)
            if found >= POOL_SHARED:
                found -= POOL_SHARED
                self._shared = True
            if found >= 0:
                # Every ring was empty: the turn starts at the one with a frame (the others
                # had nothing to wait for), so the frame is read without looking at them.
                self.next = self._poll_places[found]
                return self._take(limit)
        return None

    def take(self, limit: int) -> Frame | bytes | None:
        """The next frame of any writer if one is waiting (as read_small), else None; never
        waits."""
        if self._closed:
            raise TransportClosed(f"pool reader of {self.name!r} is closed")
        return self._take(limit)

    def _take(self, limit: int) -> Frame | bytes | None:
        """One turn of the round robin: the next frame of the writer after the last one read
        that has one, else None. A run read ahead is handed back here directly (the usual
        case while writers are busy). The joins word is looked at when no ring has a frame
        (and every LOOK_EVERY reads): a writer that joins while the others keep the reader
        busy waits at most that many reads for its first turn."""
        self.countdown -= 1
        if self.countdown <= 0:
            self._look_for_writers()
        places = self.places
        active = self.active
        rings = self.rings
        while True:
            start = self.next
            for k in range(places):
                i = start + k
                if i >= places:
                    i -= places
                if not active[i]:
                    continue
                ring = rings[i]
                core = ring._core
                pending = core.pending
                got: Frame | bytes | None
                if (
                    pending
                    and type(item := pending[0]) is bytes
                    and len(item) <= limit
                    and not core.closed
                ):
                    del pending[0]  # hand_back's usual case, inlined (its last step, the same)
                    got = item
                else:
                    try:
                        got = ring.read_ready(limit, self._draining[i])
                    except WriterDead as exc:
                        self._left(i, died=not getattr(exc, "closed", False))
                        continue
                    if got is None:
                        continue
                self.next = self.after[i]
                self.place = i
                return got
            if self._joins_word.value == self._joins:
                break
            self._look_for_writers()  # a writer joined: its ring is looked at too
        if self._reclaim:
            self._give_back_pages()
        return None

    def _look_for_writers(self) -> None:
        """A place taken since we last looked (its generation moved) is active, even if its
        writer has left again already: what it wrote is still to be read. Checks the words
        read (module rules): CorruptBuffer for a generation no writer makes."""
        self.countdown = LOOK_EVERY
        joins = self._joins_word.value  # before the generations: each join follows its claim
        mm = self._mm
        generations = self._generations
        claims = 0
        for i in range(self.places):
            generation = _U64.unpack_from(mm, _owner_at(i) + 8)[0]
            seen = generations[i]
            if generation != seen:
                if generation < seen or generation - seen > MAX_STEP:
                    raise CorruptBuffer(
                        f"pool {self.name!r}: the generation of place {i} went from {seen} to "
                        f"{generation}, which no writer does; its control segment "
                        f"{self._cname} was overwritten: close the Receiver"
                    )
                generations[i] = generation
                if not self.active[i]:
                    self.active[i] = True
                    self._order()
                self._reclaim.discard(i)
            claims += generation
        if joins != self._joins:
            if joins > claims or joins < self._joins_checked:
                self.anomalies += 1
                _log.warning(
                    "pool %r: its joins word reads %d (places taken: %d, last seen %d), which "
                    "no writer writes; ignored",
                    self.name,
                    joins,
                    claims,
                    self._joins_checked,
                )
            else:
                self._joins_checked = joins
            self._joins = joins

    def _order(self) -> None:
        """After `active` changed: each place's next turn goes to the next active place, so
        the round robin passes no free place (any place when none is active)."""
        places, active = self.places, self.active
        words = array("Q")  # pool_poll's: each ring in use, (its OIEB's address, its size)
        self._poll_places = [i for i in range(places) if active[i]]
        for i in self._poll_places:
            words.extend((self.cores[i].addr, self.cores[i].ring.size))
        self._poll_words = words
        for i in range(places):
            j = (i + 1) % places
            for _ in range(places - 1):
                if active[j]:
                    break
                j = (j + 1) % places
            self.after[i] = j

    def _left(self, index: int, died: bool) -> None:
        """Ring `index` is drained and its writer gone: free the place, count it; raise
        WriterDead(place=index) for a writer that died."""
        ring = self.rings[index]
        self._draining[index] = False
        pid = ring.writer_pid()
        owner_addr = self._addr + _owner_at(index)
        owner = _U64.unpack_from(self._mm, _owner_at(index))[0]
        taken = bool(owner and not owner & RECLAIMING and _shm.pid_alive(owner))
        if taken and not died:
            # A new writer has the place already (or the leaving one has not let go of it
            # yet): the ring goes on; the next hang-up or PID check looks again.
            return
        if owner and not owner & RECLAIMING and not taken:
            _shm.compare_exchange(owner_addr, owner, 0)
        if died:
            ring.forget_dead_writer()
        if self.active[index] != taken:
            self.active[index] = taken
            self._order()
        self.departures += 1
        if self.sparse and not taken:
            self._reclaim.add(index)
            self._give_back_pages()
        if died:
            self.lost += 1
        what = "died" if died else "closed"
        exc = WriterDead(
            f"pool {self.name!r}: the writer of place {index} (pid {pid or owner}) {what}; "
            "every frame it published has been read",
            closed=not died,
        )
        exc.place = index  # type: ignore[attr-defined]
        try:
            raise exc
        finally:
            # No cycle (exception -> traceback -> this frame -> exc): it would keep the
            # caller's frames, and the leases in their locals, alive until a garbage collection.
            del exc

    def _give_back_pages(self) -> None:
        for index in list(self._reclaim):
            ring = self.rings[index]
            if self.active[index] or ring.writer_pid() or not ring.idle():
                continue
            owner_addr = self._addr + _owner_at(index)
            swapped, _ = _shm.compare_exchange(owner_addr, 0, RECLAIMING)
            if not swapped:
                continue  # a new writer took it meanwhile: its pages stay
            try:
                if not ring.writer_pid():
                    ring.give_back_pages()
            finally:
                _shm.compare_exchange(owner_addr, RECLAIMING, 0)
            self._reclaim.discard(index)

    # -- sleeping (also what zcser.wait and asyncio use) ----------------------------------------

    def ready(self) -> bool:
        """Whether read_small(timeout=0) would return a frame or a departure now."""
        self._look_for_writers()  # whatever the joins word says (module rules)
        for i in range(self.places):
            if self.active[i] and (self._draining[i] or self.rings[i].poll()):
                return True
        return False

    def fds(self) -> list[int]:
        return list(self._bells)

    def arm(self, settle: bool = True) -> None:
        """Before a sleep: writers ring from now on (an atomic add: safe from any thread);
        with `settle`, every ring gives back what was read (a writer waiting for room must not
        wait for us while we wait for it), which only the reading thread may do."""
        _shm.atomic_add(self._sleepers, 1)
        if settle:
            self.settle()

    def settle(self) -> None:
        """Every ring gives back what was read (the reading thread's business)."""
        for ring in self.rings:
            ring.settle()

    def disarm(self) -> None:
        _shm.atomic_sub(self._sleepers, 1)

    def sleep(self, limit: float | None) -> None:
        """Poll the bells up to `limit` s (at most BACKSTOP); the caller armed and looked."""
        wait = BACKSTOP if limit is None else min(limit, BACKSTOP)
        poller = select.poll()
        for fd in self._bells:
            poller.register(fd, select.POLLIN)
        poller.poll(max(0, int(wait * 1000 + 0.999)))

    def owner(self, index: int) -> int:
        """The owner word of place `index` (0, a writer's PID, or RECLAIMING)."""
        return int(_U64.unpack_from(self._mm, _owner_at(index))[0])

    def woken(self) -> None:
        """After a sleep (on these bells, or in zcser.wait): drain the bells that rang, reopen
        those that hung up (their writer left), and look at the writers' PIDs once per
        BACKSTOP."""
        if self._closed:
            return
        poller = select.poll()
        for fd in self._bells:
            poller.register(fd, select.POLLIN)
        for fd, event in poller.poll(0):
            index = self._bells.index(fd)
            if event & select.POLLIN:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(fd, 4096)
            if event & (select.POLLHUP | select.POLLERR):
                self._bells[index] = _shm.reopen_bell(self.rings[index].name, fd)
                self._check_writer(index)
        self._look_for_writers()  # after every sleep, whatever the joins word says
        now = time.monotonic()
        if now - self._checked_at >= BACKSTOP:
            self._checked_at = now
            for i in range(self.places):
                if self.active[i]:
                    self._check_writer(i)

    def _check_writer(self, index: int) -> None:
        """Start draining place `index` if its writer is gone (closed, or its PID dead)."""
        if not self.active[index]:
            return
        pid = self.rings[index].writer_pid()
        if not pid or not _shm.pid_alive(pid):
            self._draining[index] = True

    # -- state -----------------------------------------------------------------------------------

    def claims(self) -> int:
        """Places taken since the pool was created (every writer's connection counts once),
        from the generations as checked by a look (CorruptBuffer for one no writer makes)."""
        self._look_for_writers()
        return sum(self._generations)

    def writers(self) -> int:
        """Places held by a live writer now."""
        count = 0
        for i in range(self.places):
            owner = self.owner(i)
            if owner and not owner & RECLAIMING and _shm.pid_alive(owner):
                count += 1
        return count

    def stats(self) -> ReaderStats:
        """The rings' stats added up (capacity: every ring's payload, in use or not)."""
        each = [ring.stats() for ring in self.rings]
        capacity = sum(st.capacity for st in each)
        used = sum(st.used for st in each)
        return ReaderStats(
            capacity=capacity,
            used=used,
            free=capacity - used,
            utilisation=used / capacity if capacity else 0.0,
            frames=sum(st.frames for st in each),
            bytes=sum(st.bytes for st in each),
            frames_held=sum(st.frames_held for st in each),
            bytes_held=sum(st.bytes_held for st in each),
            blocked_seconds=sum(st.blocked_seconds for st in each),
        )

    @property
    def metadata(self) -> Any:
        return self.rings[self.place].metadata

    def interrupt(self) -> None:
        """Make a wait for a frame in progress (in another thread) raise TransportClosed (within
        `BACKSTOP`; a ring read directly, within its `POLL_INTERVAL`), so that thread lets go
        before close(); stores, safe from any thread. Taken once, as Reader.interrupt."""
        self.interrupted = True
        for ring in self.rings:
            ring.interrupt()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every ring (frames alive stay readable), remove the bells and the control
        segment. Safe twice, and again after a Ctrl-C in it."""
        self._closed = True
        self._finalizer()  # runs the teardown once
