"""The ZeroBuffer reader (docs/protocol.md): it creates the buffer and reads frames from it.

```
r = Reader(name, BufferConfig(metadata_size=4096, payload_size=64 << 20))   # creates
w = Writer(name)                                  # connects to the reader's buffer
w.set_metadata(b"schema")                         # once per buffer
w.write(b"bytes")                                 # one copy into the next frame
buf = w.reserve(n); buf[:] = ...; w.commit()      # zero copy: fill the frame in place
with r.read() as f:                               # f.data: read-only memoryview into shm
    use(f.data)
```

Timeouts: every blocking call takes `timeout` in seconds; left out, the object's default (5 s)
applies; `0` is one non-blocking try; `None` waits for as long as the peer is alive. A dead peer
is noticed within about `POLL_INTERVAL` while blocked: `WriterDead` / `ReaderDead`.

Frames: a reader may hold several frames and release them in any order; ring space goes back to
the writer in ring order (see `transports.zerobuffer.ring`), so a held frame is never overwritten. A frame
is released by `f.release()`, by leaving its `with` block, or when it is garbage-collected.
`f.release()` raises `BufferError` (and keeps the frame) while anything made from `f.data` is
alive (`np.frombuffer(f.data)`, `pa.py_buffer(f.data)`, `f.data[a:b]`, ...). A frame dropped
while its data (or anything made from it) is still in use keeps its space until they are gone
too; the reader notices that at its next read() or stats().

Not thread-safe: use one Reader (or Writer) from one thread at a time. Releasing frames from
other threads, or by the garbage collector at any moment, is safe.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from array import array
from collections.abc import Callable
from pickle import PickleBuffer
from sys import getrefcount
from typing import Any

import posix_ipc

from transports.errors import (
    CorruptBuffer,
    InvalidConfig,
    SequenceError,
    Timeout,
    TransportClosed,
    WriterDead,
)
from transports.zerobuffer import layout as L
from transports.zerobuffer import posix as _shm
from transports.zerobuffer.common import (
    _SPIN_BUSY_MAX,
    _SPIN_BUSY_MIN,
    _SPIN_FAST,
    _SPIN_LIMIT_NS,
    _UNSET,
    DEFAULT_SPIN,
    POLL_INTERVAL,
    BufferConfig,
    ReaderStats,
    TimeoutArg,
    _check_name,
    _check_timeout,
    _create_exclusive,
    interrupts_deferred,
    is_orphan,
    metadata_span,
)
from transports.zerobuffer.ring import COUNT, READ_POS, ReaderRing

__all__ = ["Frame", "Reader"]

_RUN_FRAMES = 32
"""Most small frames one `Reader.read_small` call copies out at once (a run, returned one per
call): the semaphore, the lock and the accounting are paid once per run."""

_RUN_BYTES = 256 * 1024
"""A run stops once it has copied this many bytes (bounds the reader's private read-ahead)."""

_WITHHOLD_MAX = 64 * 1024
"""Most bytes of small frames a reader without the compiled path keeps before one give-back; at
most 1/64 of the ring, and only while more posts are waiting."""

# The reader's state words: the ring's (ring.py: READ_POS, COUNT, FIRST), then these. An
# array('Q') that the compiled calls update in the same step as the shared memory.
EXPECTED = 3  # sequence number of the next frame
FRAMES = 4  # frames read
BYTES = 5  # data bytes read
WITHHELD = 6  # ring bytes read and released, not yet given back to the writer
POSTS = 7  # sem-w posts taken whose frames are not read yet
_WORDS = 8

_SPIN_PROBE = 255
"""Once in this many + 1 spins the first poll is as long as allowed again (wait_frame): the
peer may have moved to another core since a short poll last paid."""


def _next_busy(found: int, busy: int, current: int) -> int:
    """The next first poll (ns) after a spin whose first poll lasted `busy` ns found a post
    (wait_post's answer `found`): answers during it (1) or later from another core (2) make it
    longer; an answer after a short switch (3: the peer probably runs on this core, and polls
    only delay it) makes it shorter, never longer than `current` (a probe's long poll that
    failed does not raise it)."""
    if found == 1:
        return min(busy + (busy >> 2), _SPIN_BUSY_MAX)
    if found == 2:
        return min(busy << 1, _SPIN_BUSY_MAX)
    return max(min(busy, current) >> 1, _SPIN_BUSY_MIN)


_HDR = L.HEADER_SIZE
_U64 = L.U64
_HEADER = L.HEADER
_U64_MAX = (1 << 64) - 1
_SEM_VALUE = _shm.SEM_VALUE
_TAKE_RUN = _shm.hotpath.take_run if _shm.hotpath is not None else None
_TAKE_POST = _shm.hotpath.take_post if _shm.hotpath is not None else None
_WAIT_POST = _shm.hotpath.wait_post if _shm.hotpath is not None else None
_GIVE_BACK = _shm.hotpath.give_back if _shm.hotpath is not None else None
_TICKET = _shm.hotpath.Ticket if _shm.hotpath is not None else None
if _shm.hotpath is not None:
    _shm.hotpath.configure_reader(L.OFF_READ_POS, L.OFF_READ_COUNT)


class Frame:
    """One received frame. `data` is a read-only memoryview straight into shared memory, valid
    until the frame is released; `offset` is its position in the mapping (page aligned, so
    `offset % 64` is its absolute alignment), `address` its absolute address, `size` its length.
    A small frame that `Reader.read_small` already copied out (read ahead) comes back from read()
    as a Frame over that private copy: `offset` -1 (use `address`), its ring space already free.

    `data` has a buffer of its own (a per-frame view wrapped in a PickleBuffer), so every view
    made from it, `np.frombuffer(f.data)`, `f.data[a:b]`, `memoryview(f.data)`, keeps that buffer
    exported; release() checks it and refuses while any of them is alive."""

    __slots__ = (
        "_core",
        "_ticket",
        "_token",
        "_view",
        "address",
        "data",
        "offset",
        "sequence",
        "size",
    )

    def __init__(
        self,
        core: _ReaderCore | _PrivateFrames | None,
        token: int,
        view: memoryview,
        size: int,
        sequence: int,
        offset: int,
        address: int,
    ) -> None:
        # core None: not yet counted; the reader sets it in the step that takes the frame.
        self._core: _ReaderCore | _PrivateFrames | None = core
        self._ticket: Any = None  # a held frame's ticket (compiled): its death, if __del__ fails
        self._token = token
        self._view = view
        wrapper = PickleBuffer(view)
        self.data = memoryview(wrapper)  # exports `view`; views of `data` share that export
        wrapper.release()
        self.size = size
        self.sequence = sequence
        self.offset = offset
        self.address = address

    @property
    def released(self) -> bool:
        return self._core is None

    def release(self) -> None:
        """Give the frame's space back (in ring order). Releasing twice is a no-op.

        Raises BufferError, keeping the frame and its space, while anything made from `data`
        is alive (an exported buffer, a numpy array, a slice): drop those or copy first. If only
        views *of* `data` remain, `data` itself is already released by then."""
        core = self._core
        if core is None:
            return
        self.data.release()  # BufferError while `data` itself is exported
        try:
            self._view.release()  # BufferError while views made from `data` live on
        except BufferError:
            raise BufferError(
                f"frame {self.sequence} is still in use: an array or view made from its data is "
                "alive. Drop it (or copy what you need) before releasing the frame."
            ) from None
        if isinstance(core, _PrivateFrames):
            self._core = None
            return
        # One step (no call in between): the token is queued and the frame marked released.
        ticket = self._ticket
        core.deferred += (self._token,)
        self._core = None
        if ticket is not None:
            ticket.armed = 0
        core.drain()

    def __enter__(self) -> Frame:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        core = getattr(self, "_core", None)  # None too when __init__ was interrupted
        if core is None or isinstance(core, _PrivateFrames):
            return
        try:
            data = self.data
            ticket = self._ticket
            # `bytes(r.read().data)`: the Frame dies while its data is still in use. Then the
            # reader finishes the release once nothing but itself refers to the data any more.
            # References to data here: the slot, `data`, getrefcount's argument, the ticket.
            mine = 3 if ticket is None else 4
            if getrefcount(data) > mine or not _release_views(data, self._view):
                core.orphans += ((data, self._view, self._token),)
                self._core = None
                if ticket is not None:
                    ticket.armed = 0
            else:
                core.deferred += (self._token,)
                self._core = None
                if ticket is not None:
                    ticket.armed = 0
                core.drain()
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    def __repr__(self) -> str:
        state = "released" if self._core is None else f"{self.size} bytes"
        return f"<Frame seq={self.sequence} offset={self.offset} {state}>"


class _PrivateFrames:
    """The owner of Frames over frames a run already copied out (offset -1): releasing them
    gives nothing back, their ring space went back when they were copied."""


_PRIVATE = _PrivateFrames()


def _nothing() -> None:
    pass


def _release_views(data: memoryview, view: memoryview) -> bool:
    """Release a frame's data view and the per-frame buffer behind it; False while in use."""
    try:
        data.release()
        view.release()
    except BufferError:
        return False
    return True


class _ReaderCore:
    """Everything a reader owns. Frames reference this (not the Reader) so the mapping lives as
    long as any frame does, even after Reader.close().

    The rules it keeps (docs/protocol.md "frame read"; the writer's side is in writer.py):

    - One accounting path. A frame is taken in one step, whichever way it is handed back: the
      compiled `take_run` for a run of plain small frames, `take_frame` for everything else
      (wraps, frames over the caller's limit, sequence gaps). That step takes the frame's
      sem-w post (counted in `words[POSTS]`: a post taken is a frame owed), advances the
      state words (read position, read count, first token, expected sequence, frames, bytes),
      stores the OIEB's payload_read_pos and payload_read_count, queues what will be handed
      back on `pending`, and only then lets bytes go back to the writer (the reference writer
      decides where to wrap from read_pos, so read_pos is stored before any byte is returned).
    - What is handed back (bytes copied out, a Frame over shm, a private Frame) differs only in
      `hand_back`, which removes the oldest entry of `pending` as its very last step
      (`Reader.read_small` hands back the usual small frame itself, with the same last step).
    - Bytes go back through `words[WITHHELD]` only: every path adds what it frees there in
      the step that frees it, and `give_back` moves it all to the shared free counter and
      posts sem-r in one compiled call. Before blocking the reader gives everything back.
    - Ring space goes back in ring order (ring.py): a frame released while an older one is
      held waits for it. Releases from other threads or the garbage collector only queue the
      token (`deferred`) and apply the queue when no step is under way (`busy`); the reader
      applies it after each step.
    - A frame dropped while its data is still in use (an orphan) keeps its space until its
      views are gone; the reader retries at its next read or stats(). A held Frame also
      carries a compiled ticket, armed in the step that takes the frame and disarmed by its
      release: if a signal handler's exception skips the Frame's __del__, the ticket, dying
      with the Frame in C, appends it to the orphans, so its space is not pinned for good.
    - Under the lock: every change of the ring and the state words. The lock's holder sets
      `busy` at once, so the garbage collector running a Frame's __del__ inside a step queues
      its release instead of waiting for the lock it already holds.
    - Interrupted, not lost: CPython runs a Python signal handler (KeyboardInterrupt) only at a
      call or a loop, never between plain stores. Each step therefore plans with calls first
      and then changes state in straight-line stores (or inside one compiled call), so a
      KeyboardInterrupt lands before a step or after it: a frame is either still in the ring
      with its post counted, or counted and waiting on `pending` for the next read.
    """

    def __init__(
        self, name: str, metadata_block: int, payload_block: int, sparse: bool = False
    ) -> None:
        self.name = name
        self.pid = os.getpid()
        self.M = metadata_block
        self.P = payload_block
        self.base = L.OIEB_SIZE + metadata_block  # payload ring offset in the mapping
        self.closed = False
        self.interrupted = False  # Reader.interrupt(): the next blocking wait ends
        self.broken: str | None = None
        self.lock = threading.Lock()  # guards ring state and the mapping's lifetime
        self.busy = False  # a step holds the lock (set right after taking it)
        self.deferred: list[int] = []  # tokens released, not yet applied to the ring
        self.orphans: list[tuple[memoryview, memoryview, int]] = []  # dead frames, data in use
        self.words = array("Q", bytes(8 * _WORDS))
        self.words[EXPECTED] = 1
        self.ring = ReaderRing(payload_block, words=self.words)
        self.pending: list[bytes | Frame] = []  # taken and counted, not handed back yet
        self.sem_handle = 0  # this process's own sem_t for sem-w (compiled calls), 0 if none
        self.sem_r_handle = 0  # the same for sem-r (give_back's post)
        self.sem_detach: Callable[[], Any] = _nothing  # closes both handles (at most once)
        self.withhold_max = min(payload_block // 64, _WITHHOLD_MAX)
        self.blocked = 0.0
        self.spin_busy = _SPIN_BUSY_MAX  # first poll of the next spin, ns (wait_frame)
        self.spins = 0  # spins so far (every _SPIN_PROBE + 1-th polls _SPIN_BUSY_MAX again)
        self.spin_shared = False  # the last spin's answer came after a short switch
        self.writer_seen = False
        total = L.total_size(metadata_block, payload_block)

        # Sparse: only the OIEB's page now; the writer that takes the ring reserves the rest
        # (metadata included: writing it into a hole could fault on a full /dev/shm).
        reserve = L.OIEB_SIZE if sparse else None
        _shm.check_space(name, total if reserve is None else reserve)
        _shm.cleanup_stale(is_orphan)
        self.lock_fd = _shm.acquire_lock(name)
        undo: list[Any] = []
        try:
            self.mm = _create_exclusive(name, total, reserve)
            undo.append(lambda: _shm.unlink_shm(name))
            L.OIEB_STRUCT.pack_into(
                self.mm, 0, L.OIEB_SIZE, *L.VERSION,
                metadata_block, metadata_block, 0,
                payload_block, payload_block, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0,
            )  # fmt: skip
            self.sem_w = _shm.create_semaphore(L.sem_w_name(name))
            undo.append(lambda: _close_unlink(self.sem_w, L.sem_w_name(name)))
            self.sem_r = _shm.create_semaphore(L.sem_r_name(name))
            undo.append(lambda: _close_unlink(self.sem_r, L.sem_r_name(name)))
            self.addr = _shm.address_of(self.mm)
            self.free_addr = self.addr + L.OFF_PAYLOAD_FREE
            self.free = _shm.AtomicWord(self.free_addr)
            self.free_word = _shm.word_at(self.free_addr)
            self.read_pos_word = _shm.word_at(self.addr + L.OFF_READ_POS)
            self.read_count_word = _shm.word_at(self.addr + L.OFF_READ_COUNT)
            self.write_pos_word = _shm.word_at(self.addr + L.OFF_WRITE_POS)
            self.ro = memoryview(self.mm).toreadonly()
            if _TAKE_RUN is not None:
                self.attach_semaphores(L.sem_w_name(name), L.sem_r_name(name))
            # Publishing our PID last says "ready" to a connecting writer.
            _U64.pack_into(self.mm, L.OFF_READER_PID, self.pid)
        except BaseException:
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    step()
            if hasattr(self, "mm"):
                with contextlib.suppress(Exception):
                    self.mm.close()
            _shm.release_lock(name, self.lock_fd)
            raise

    # -- waiting ---------------------------------------------------------------------------------

    def take_post(self, wait: float) -> bool:
        """Take one sem-w post (waiting up to `wait` s; 0: one try) and count it in the same
        step. False on timeout or a signal (its handler runs as this returns)."""
        if self.sem_handle:
            assert _TAKE_POST is not None
            return bool(_TAKE_POST(self.sem_handle, self.words, float(wait)))
        # Without the compiled module: a signal between the two lines loses the post.
        got = _shm.try_acquire(self.sem_w, wait) if wait else _shm.try_take(self.sem_w)
        if got:
            self.words[POSTS] += 1
        return got

    def wait_frame(self, timeout: float | None, spin: int) -> None:
        """Wait until a published frame is owed (`words[POSTS]`), or raise WriterDead / Timeout."""
        if self.words[WITHHELD]:
            self.give_back()  # before blocking: a writer may be waiting for these bytes
        if self.deferred:
            self.drain()
        sem = self.sem_w
        if timeout == 0:
            spin = 0  # one look, no spin: a caller polling with timeout 0 spins itself
        if spin and self.sem_handle and self.spin_shared:
            # The last answer came right after a short switch: the peer probably shares this
            # core. Sleep this once instead: the wake-up lets the scheduler put this process on
            # an idle core, which polling never does (a process that never sleeps stays).
            self.spin_shared = False
        elif spin and self.sem_handle:
            assert _WAIT_POST is not None
            # The whole spin, compiled (a post taken is counted in the same call); its first
            # poll sized by where the last answers came from (common.py _SPIN_BUSY_MIN).
            self.spins += 1
            busy = self.spin_busy if self.spins & _SPIN_PROBE else _SPIN_BUSY_MAX
            found = _WAIT_POST(
                self.sem_handle, self.words, busy, max(0, spin - _SPIN_FAST), _SPIN_LIMIT_NS
            )
            if found:
                self.spin_busy = _next_busy(found, busy, self.spin_busy)
                self.spin_shared = found == 3
                return
        elif _shm.SEM_VALUE:
            for i in range(spin):
                if sem.value and self.take_post(0.0):
                    return
                if i >= _SPIN_FAST:
                    os.sched_yield()
        if self.take_post(0.0):
            return
        # Before blocking, only the free check (a detached writer); a dead PID is looked for
        # after each blocking slice, so an idle wait costs one liveness syscall per slice.
        if self.writer_gone(probe=timeout == 0):
            return
        if timeout == 0:
            self.no_frame(0.0)
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        try:
            while True:
                if self.orphans:
                    self.retry_orphans()
                if self.deferred:
                    self.drain()
                if self.closed or self.interrupted:
                    self.interrupted = False
                    raise TransportClosed(f"reader of {self.name!r} was closed while waiting")
                wait = POLL_INTERVAL
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        self.no_frame(timeout)
                if self.take_post(wait):
                    return
                if self.writer_gone(probe=True):
                    return
        finally:
            self.blocked += time.monotonic() - start

    def writer_gone(self, probe: bool) -> bool:
        """Check the writer (`probe`: also whether its PID is alive). Returns True if a frame
        turned up meanwhile (its post is counted); raises WriterDead if the writer is gone and
        every frame it published was read."""
        mm = self.mm
        pid = _U64.unpack_from(mm, L.OFF_WRITER_PID)[0]
        if pid:
            self.writer_seen = True
            if not probe or _shm.pid_alive(pid):
                return False
            why = f"the writer (pid {pid}) died"
        elif self.writer_seen or _U64.unpack_from(mm, L.OFF_WRITTEN_COUNT)[0]:
            why = "the writer closed"
        else:
            return False  # no writer has connected yet
        # The writer posts before it detaches, so a post seen now is a frame still to read.
        if self.take_post(0.0):
            return True
        if self.published_unread():
            # Killed after moving write_pos past a complete frame but before posting it: read
            # that frame (owed without a post), unless a new writer took over meanwhile (its
            # frames come with posts).
            if _U64.unpack_from(mm, L.OFF_WRITER_PID)[0] != pid:
                return False
            self.words[POSTS] += 1
            return True
        raise WriterDead(
            f"buffer {self.name!r}: {why} and every frame it published has been read. "
            "A new Writer may connect to the same buffer; read() again to wait for it.",
            closed=not pid,  # detached cleanly (close()), not died
        )

    def published_unread(self) -> bool:
        """Whether the OIEB's write_pos is past our read position: a complete frame is there.
        Positions, not counters: the counter is stored after write_pos, so a writer killed
        between the two leaves counters that would later point at stale bytes."""
        size = self.ring.size
        write_pos: int = self.write_pos_word.value
        read_pos = self.ring.read_pos
        if write_pos > size:
            return False
        if size - write_pos < _HDR:
            write_pos = 0
        if size - read_pos < _HDR:
            read_pos = 0
        return write_pos != read_pos

    def no_frame(self, timeout: float | None) -> None:
        pid = _U64.unpack_from(self.mm, L.OFF_WRITER_PID)[0]
        who = f"the writer (pid {pid}) is alive" if pid else "no writer has connected yet"
        raise Timeout(
            f"no frame on {self.name!r} within {timeout} s; {who}. Wait longer "
            "(timeout=None waits while the writer lives) or check that the writer is writing.",
            timeout=timeout,
        )

    def attach_semaphores(self, sem_w_name: str, sem_r_name: str) -> None:
        """Open our own handles on sem-w and sem-r for the compiled calls (without them, reads
        take one frame a call). Closed by close(), or when this core is collected if a read held
        the lock then."""
        hotpath = _shm.hotpath
        assert hotpath is not None
        try:
            sem_w = hotpath.sem_attach(sem_w_name)
        except OSError:
            return
        try:
            sem_r = hotpath.sem_attach(sem_r_name)
        except OSError:
            hotpath.sem_detach(sem_w)
            return
        self.sem_handle = sem_w
        self.sem_r_handle = sem_r
        self.sem_detach = weakref.finalize(self, _detach_both, sem_w, sem_r)
        # Not at interpreter exit: a daemon thread may still be inside read_small then.
        self.sem_detach.atexit = False

    def detach_semaphore(self) -> None:
        """Close our semaphore handles once closed and no read holds the lock (the compiled calls
        use them only under the lock): an unlinked semaphore's page stays in /dev/shm while it
        is mapped."""
        if not self.sem_handle or self.busy or not self.lock.acquire(False):
            return
        if not threading.main_thread().is_alive():
            # Interpreter exit (atexit runs after the main thread stopped): a daemon thread may
            # sleep in take_post on these handles, outside the lock; the exit unmaps them.
            self.lock.release()
            return
        self.busy = True
        try:
            self.sem_handle = 0
            self.sem_r_handle = 0
            self.sem_detach()
        finally:
            self.busy = False
            self.lock.release()

    # -- reading: taking frames (the one accounting path) ----------------------------------------

    def take_run(self, limit: int) -> bool:
        """Take a run of plain small frames (each at most `limit` bytes) in one compiled call
        that also counts them and queues their bytes on `pending`. False: nothing taken,
        take_frame handles the next frame (wraps, large frames, gaps)."""
        if not self.sem_handle or self.ring.held or limit <= 0:
            return False
        with self.lock:
            self.busy = True
            try:
                ring = self.ring
                if self.closed or not self.sem_handle or ring.held:
                    return False
                assert _TAKE_RUN is not None
                size = ring.size
                taken = _TAKE_RUN(
                    self.addr,
                    self.base,
                    size,
                    self.words,
                    limit if limit < size else size,
                    _RUN_FRAMES,
                    _RUN_BYTES,
                    self.sem_handle,
                    self.sem_r_handle,
                    self.pending,
                )
            finally:
                self.busy = False
        if self.closed:  # closed meanwhile by another thread, which could not detach
            self.pending.clear()
            self.detach_semaphore()
            return False
        if self.deferred:  # releases queued while we held the lock (GC, other threads)
            self.drain()
        return taken > 0

    def take_frame(self, limit: int = -1) -> None:
        """Take the frame whose post is counted in `words[POSTS]` (docs/protocol.md 'frame
        read') and queue it on `pending`: its bytes when at most `limit` long (its space goes
        back at once), else a Frame over shared memory (held until released)."""
        with self.lock:
            self.busy = True
            try:
                if self.closed:
                    raise TransportClosed(f"reader of {self.name!r} is closed")
                self._take_frame(limit)
            finally:
                self.busy = False
        if self.deferred:  # releases queued while we held the lock (GC, other threads)
            self.drain()

    def _take_frame(self, limit: int) -> None:
        mm = self.mm
        ring = self.ring
        words = self.words
        base = self.base
        size = ring.size
        # Plan: read and check everything; nothing changes until the step at the end.
        pos = words[READ_POS]
        wrapped = False
        if size - pos < _HDR:  # a tail under one header: the writer wrapped without a marker
            wrapped = True
            pos = 0
        n, seq = _HEADER.unpack_from(mm, base + pos)
        if n == 0:
            if pos == 0:
                self.corrupt("wrap marker at ring offset 0: no writer wraps there")
            if seq != 0:
                self.corrupt(f"wrap marker at ring offset {pos} carries sequence {seq}, not 0")
            wrapped = True
            pos = 0
            n, seq = _HEADER.unpack_from(mm, base)
        if n <= 0 or n > size - pos - _HDR:
            try:
                ring.check(n, pos)
            except CorruptBuffer as exc:
                self.corrupt(str(exc))
        total = _HDR + n
        expected = words[EXPECTED]
        offset = base + pos + _HDR
        result: Frame | bytes | None = None
        error: SequenceError | None = None
        if seq != expected and seq != 1:
            # A lost or repeated frame. Skip it (its space goes back) and resynchronise.
            error = SequenceError(
                f"buffer {self.name!r}: expected frame {expected}, got {seq}; frames were "
                "lost or repeated. That frame was skipped; reading continues after it.",
                expected=expected,
                got=seq,
            )
        elif n <= limit:
            result = mm[offset : offset + n]
        else:
            token = ring.next_token(wrapped)
            view = self.ro[offset : offset + n]
            result = Frame(None, token, view, n, seq, offset, self.addr + offset)
            if _TICKET is not None:  # disarmed until the step below
                result._ticket = _TICKET(self.orphans, (result.data, view, token))
        hold = type(result) is Frame
        more = bool(_SEM_VALUE and self.sem_w.value) if result is not None and not hold else False
        following = (seq + 1) & _U64_MAX  # seq == 1 out of turn: a new writer took over
        posts = words[POSTS] - 1 if words[POSTS] else 0
        # The step: straight-line stores after the ring's (signals land before or after it).
        _, freed = ring.read(wrapped, total, hold)
        words[POSTS] = posts
        words[EXPECTED] = following
        words[WITHHELD] += freed
        self.read_pos_word.value = words[READ_POS]
        self.read_count_word.value = words[COUNT]
        if error is not None:
            self.give_back()
            raise error
        words[FRAMES] += 1
        words[BYTES] += n
        if hold:
            result._core = self  # type: ignore[union-attr]
            ticket = result._ticket  # type: ignore[union-attr]
            if ticket is not None:
                ticket.armed = 1
        self.pending += (result,)  # type: ignore[arg-type]  # not None: error raised above
        # Small frames' bytes may wait to go back together while more are published; a large
        # frame is likely held a while, so everything goes back now.
        if words[WITHHELD] and (hold or not more or words[WITHHELD] >= self.withhold_max):
            self.give_back()

    def corrupt(self, why: str) -> None:
        self.broken = why
        raise CorruptBuffer(why)

    def hand_back(self, limit: int) -> Frame | bytes:
        """The oldest frame taken: its bytes, a Frame over shm, or a private Frame (offset -1)
        over bytes a run read ahead when they are over `limit` (read(), a smaller limit)."""
        if self.closed:
            self.pending.clear()
            raise TransportClosed(f"reader of {self.name!r} is closed; create a new Reader")
        pending = self.pending
        item = pending[0]
        if type(item) is bytes and len(item) > limit:
            n = len(item)
            seq = (self.words[EXPECTED] - len(pending)) & _U64_MAX
            view = memoryview(item)
            assert _shm.hotpath is not None  # runs exist only with the compiled hot path
            item = Frame(_PRIVATE, 0, view, n, seq, -1, _shm.hotpath.address(view))
        del pending[0]  # the last step: nothing between here and the caller runs a handler
        return item

    # -- releasing -------------------------------------------------------------------------------

    def give_back(self) -> None:
        """Return the withheld ring bytes to the writer and wake it, in one step."""
        if self.closed:
            return
        if _GIVE_BACK is not None:
            _GIVE_BACK(self.addr, self.words, self.sem_r_handle)
            if self.sem_r_handle:
                return
        else:
            freed = self.words[WITHHELD]
            self.words[WITHHELD] = 0
            self.free.add(freed)
        sem = self.sem_r
        # The writer waits on sem-r only when short of space and re-tests after every wake, so
        # one pending post is enough; capping the count keeps it far from SEM_VALUE_MAX.
        if not _shm.SEM_VALUE or not sem.value:
            with contextlib.suppress(posix_ipc.Error):
                _shm.post(sem)

    def drain(self) -> None:
        """Apply the queued releases (frames released by the GC, other threads, or while a step
        was under way) unless a step is under way: its holder drains after it."""
        deferred = self.deferred
        while deferred and not self.busy:
            with self.lock:
                self.busy = True
                try:
                    ring = self.ring
                    words = self.words
                    while deferred:
                        freed = ring.release(deferred[0])
                        del deferred[0]
                        words[WITHHELD] += freed
                    if words[WITHHELD]:
                        self.give_back()
                finally:
                    self.busy = False
        if self.closed:
            self.try_unmap()

    def retry_orphans(self) -> None:
        """Release the orphans whose data nobody uses any more. The list is changed in place:
        tickets (and the garbage collector) may append to it at any moment."""
        orphans = self.orphans
        n = len(orphans)
        keep = []
        free = []
        for data, view, token in orphans[:n]:
            # references to data here: the tuple, the loop variable, getrefcount's argument
            if getrefcount(data) > 3 or not _release_views(data, view):
                keep.append((data, view, token))
            else:
                free.append(token)
        tokens = tuple(free)
        kept = tuple(keep)
        del keep
        # One step: the tokens move from the orphans to the release queue.
        del orphans[:n]
        orphans += kept
        self.deferred += tokens
        self.drain()

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        with interrupts_deferred():  # Ctrl-C: every name is removed, or none yet
            self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        self.detach_semaphore()
        if os.getpid() != self.pid:
            return  # a forked child: the names and the OIEB belong to the parent
        with contextlib.suppress(Exception):
            _U64.pack_into(self.mm, L.OFF_READER_PID, 0)
        name = self.name
        _shm.unlink_shm(name)
        for sem, os_name in ((self.sem_w, L.sem_w_name(name)), (self.sem_r, L.sem_r_name(name))):
            _close_unlink(sem, os_name)
        _shm.release_lock(name, self.lock_fd)
        self.try_unmap()

    def try_unmap(self) -> None:
        """Unmap once nothing can touch the mapping any more; otherwise the mapping stays until
        the last frame (or export) dies and the garbage collector unmaps it."""
        if self.ring.held or self.orphans or self.busy or not threading.main_thread().is_alive():
            return  # (at interpreter exit, as detach_semaphore: a pool's poll may read it)
        if not self.lock.acquire(False):
            return
        self.busy = True
        try:
            self.ro.release()
            with contextlib.suppress(BufferError):
                self.mm.close()
        finally:
            self.busy = False
            self.lock.release()


def _detach_both(sem_w: int, sem_r: int) -> None:
    hotpath = _shm.hotpath
    assert hotpath is not None
    hotpath.sem_detach(sem_w)
    hotpath.sem_detach(sem_r)


def _close_unlink(sem: posix_ipc.Semaphore, os_name: str) -> None:
    _shm.close_semaphore(sem)
    _shm.unlink_semaphore(os_name)


class Reader:
    """Creates buffer NAME and reads frames from it. `timeout` is the default for read();
    `spin` the number of non-blocking looks before a blocking wait. `sparse`: the payload's
    pages are not reserved at creation (the writer reserves them: a pool's ring, pool.py)."""

    def __init__(
        self,
        name: str,
        config: BufferConfig | None = None,
        *,
        timeout: float | None = L.DEFAULT_TIMEOUT,
        spin: int = DEFAULT_SPIN,
        sparse: bool = False,
    ) -> None:
        _check_name(name)
        config = config if config is not None else BufferConfig()
        if not isinstance(config, BufferConfig):
            raise InvalidConfig(f"config must be a BufferConfig, not {type(config).__name__}")
        self._timeout = _check_timeout(timeout)
        self._spin = max(0, int(spin))
        _shm.require_atomics()
        self.name = name
        self.config = config
        with interrupts_deferred():  # Ctrl-C: the names are made and owned, or never made
            self._core = _ReaderCore(
                name, L.align(config.metadata_size), L.align(config.payload_size), sparse
            )
            self._finalizer = weakref.finalize(self, self._core.close)

    def read(self, timeout: TimeoutArg = _UNSET) -> Frame:
        """Next frame (blocks). Raises Timeout, WriterDead, SequenceError, CorruptBuffer."""
        frame = self._next(timeout, -1)
        assert type(frame) is Frame
        return frame

    def read_small(self, limit: int, timeout: TimeoutArg = _UNSET) -> Frame | bytes:
        """Like read(), but a frame of at most `limit` bytes comes back as private bytes whose
        space is already given back (a run of them may be read ahead; see docs/protocol.md)."""
        core = self._core
        pending = core.pending  # the same list for the core's life (cleared, never replaced)
        if (
            not pending
            and core.sem_handle
            and not (core.closed or core.orphans)
            and core.broken is None
        ):
            core.take_run(limit)
        if pending:
            item = pending[0]
            if type(item) is bytes and len(item) <= limit and not core.closed:
                del pending[0]  # hand_back's usual case, inlined (its last step, the same)
                return item
            return core.hand_back(limit)
        return self._next(timeout, limit)

    def _next(self, timeout: TimeoutArg, limit: int) -> Frame | bytes:
        core = self._core
        if core.pending:
            return core.hand_back(limit)
        if core.closed:
            raise TransportClosed(f"reader of {self.name!r} is closed; create a new Reader")
        if core.broken is not None:
            raise CorruptBuffer(f"buffer {self.name!r} is corrupt: {core.broken}")
        if core.orphans:
            core.retry_orphans()
        if not core.words[POSTS] and not core.take_post(0.0):
            t = self._timeout if timeout is _UNSET else _check_timeout(timeout)
            core.wait_frame(t, self._spin)
        if limit > 0 and not core.orphans and core.take_run(limit):
            return core.hand_back(limit)  # the usual small frame, compiled (its post counted)
        core.take_frame(limit)
        return core.hand_back(limit)

    def read_ready(self, limit: int, draining: bool = False) -> Frame | bytes | None:
        """read_small(limit, 0) without the Timeout: the next frame if one is waiting, else
        None. `draining`: the writer is gone, so read() must run to tell (WriterDead)."""
        core = self._core
        if core.pending:
            return core.hand_back(limit)
        if not (draining or self.poll()):
            return None
        try:
            return self.read_small(limit, 0)
        except Timeout:
            return None

    def handed_sequence(self) -> int:
        """The sequence number of the frame read() handed out last (the frames after it wait,
        taken, for the next reads)."""
        core = self._core
        return (core.words[EXPECTED] - len(core.pending) - 1) & _U64_MAX

    def poll(self) -> bool:
        """Whether a published frame is waiting (read() would not block for it); takes nothing.
        False for a writer that is gone: read() then tells."""
        core = self._core
        if core.pending or core.words[POSTS]:
            return True
        if core.closed:
            return False
        # Positions first (no call); a full ring has them equal, its posts tell.
        return core.published_unread() or (_shm.SEM_VALUE and core.sem_w.value > 0)

    def settle(self) -> None:
        """Before sleeping elsewhere than in read() (a pool's bells): give the writer every
        byte read and released (read() does this before it blocks)."""
        core = self._core
        if core.closed:
            return
        if core.orphans:
            core.retry_orphans()
        if core.deferred:
            core.drain()
        if core.words[WITHHELD]:
            core.give_back()

    def idle(self) -> bool:
        """Nothing waiting, nothing held: every frame read and released, its bytes given back."""
        core = self._core
        if core.orphans and not core.closed:
            core.retry_orphans()
        if core.words[WITHHELD] and not core.closed:
            core.give_back()
        return not (core.pending or core.words[POSTS] or core.ring.held or core.published_unread())

    def give_back_pages(self) -> None:
        """Give the payload's pages back to the system (they read as zeros). Only while idle()
        and with no writer: the pool's rule for a freed place (pool.py)."""
        core = self._core
        if not core.closed:
            _shm.release_pages(core.mm, core.base, core.P)

    def peer_gone(self) -> bool:
        """Whether a writer connected and is gone now (closed, or its PID dead): read() then
        returns what it published, then raises WriterDead. Takes nothing."""
        core = self._core
        if core.closed:
            return True
        pid = _U64.unpack_from(core.mm, L.OFF_WRITER_PID)[0]
        if pid:
            return not _shm.pid_alive(pid)
        return core.writer_seen or bool(_U64.unpack_from(core.mm, L.OFF_WRITTEN_COUNT)[0])

    def forget_dead_writer(self) -> None:
        """writer_pid from a dead PID to 0 (a pool frees a dead writer's place with it)."""
        core = self._core
        pid = _U64.unpack_from(core.mm, L.OFF_WRITER_PID)[0]
        if pid and not _shm.pid_alive(pid):
            _shm.compare_exchange(core.addr + L.OFF_WRITER_PID, pid, 0)

    def writer_pid(self) -> int:
        """The writer_pid field now (0: none connected)."""
        return int(_U64.unpack_from(self._core.mm, L.OFF_WRITER_PID)[0])

    @property
    def metadata(self) -> memoryview | None:
        """The writer's metadata (read-only view into shm), or None before it is written."""
        core = self._core
        if core.closed:
            raise TransportClosed(f"reader of {self.name!r} is closed")
        span = metadata_span(self.name, core.mm, core.M)
        if span is None:
            return None
        start, length = span
        return core.ro[start : start + length]

    def stats(self) -> ReaderStats:
        """Ring usage and counters now, including frames held (pinning ring space)."""
        core = self._core
        if core.orphans and not core.closed:
            core.retry_orphans()
        P = core.P
        free = P if core.closed else min(core.free_word.value, P)
        return ReaderStats(
            capacity=P,
            used=P - free,
            free=free,
            utilisation=(P - free) / P,
            frames=core.words[FRAMES],
            bytes=core.words[BYTES],
            frames_held=core.ring.held,
            bytes_held=core.ring.held_bytes,
            blocked_seconds=core.blocked,
        )

    def interrupt(self) -> None:
        """Make a blocking wait for a frame in progress (in another thread) raise
        TransportClosed within `POLL_INTERVAL`, so that thread lets go before close(); a store,
        safe from any thread. Taken once: by the wait it ends, or by the next one."""
        self._core.interrupted = True

    @property
    def closed(self) -> bool:
        return self._core.closed

    def close(self) -> None:
        """Detach (reader_pid = 0), unlink the shm, both semaphores and the lock file. Frames still
        alive stay readable: the mapping goes when the last of them does. Safe to call twice."""
        self._finalizer()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._core.closed else f"payload {self._core.P} bytes"
        return f"<Reader {self.name!r} {state}>"
