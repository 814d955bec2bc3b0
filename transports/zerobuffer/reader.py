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
from collections import deque
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
    _SPIN_FAST,
    _UNSET,
    DEFAULT_SPIN,
    POLL_INTERVAL,
    BufferConfig,
    ReaderStats,
    TimeoutArg,
    _check_name,
    _check_timeout,
    _create_exclusive,
    is_orphan,
)
from transports.zerobuffer.ring import ReaderRing

__all__ = ["Frame", "Reader"]

_RUN_FRAMES = 32
"""Most small frames one `Reader.read_small` call copies out at once (a run, returned one per
call): the semaphore, the lock and the accounting are paid once per run."""

_RUN_BYTES = 256 * 1024
"""A run stops once it has copied this many bytes (bounds the reader's private read-ahead)."""

_WITHHOLD_MAX = 64 * 1024
"""Most bytes of small frames a reader without the compiled path keeps before one give-back; at
most 1/64 of the ring, and only while more posts are waiting."""
_HDR = L.HEADER_SIZE
_U64 = L.U64
_HEADER = L.HEADER
_U64_MAX = (1 << 64) - 1
_SEM_VALUE = _shm.SEM_VALUE
_TAKE_RUN = _shm.hotpath.take_run if _shm.hotpath is not None else None


class Frame:
    """One received frame. `data` is a read-only memoryview straight into shared memory, valid
    until the frame is released; `offset` is its position in the mapping (page aligned, so
    `offset % 64` is its absolute alignment), `address` its absolute address, `size` its length.
    A small frame that `Reader.read_small` already copied out (read ahead) comes back from read()
    as a Frame over that private copy: `offset` -1 (use `address`), its ring space already free.

    `data` has a buffer of its own (a per-frame view wrapped in a PickleBuffer), so every view
    made from it, `np.frombuffer(f.data)`, `f.data[a:b]`, `memoryview(f.data)`, keeps that buffer
    exported; release() checks it and refuses while any of them is alive."""

    __slots__ = ("_core", "_token", "_view", "address", "data", "offset", "sequence", "size")

    def __init__(
        self,
        core: _ReaderCore | _PrivateFrames,
        token: int,
        view: memoryview,
        size: int,
        sequence: int,
        offset: int,
        address: int,
    ) -> None:
        self._core: _ReaderCore | _PrivateFrames | None = core
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
        self._core = None
        core.release(self._token)

    def __enter__(self) -> Frame:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        core = self._core
        if core is None:
            return
        self._core = None
        try:
            data = self.data
            # `bytes(r.read().data)`: the Frame dies while its data is still in use. Then the
            # reader finishes the release once nothing but itself refers to the data any more.
            if getrefcount(data) > 3 or not _release_views(data, self._view):
                core.orphan(data, self._view, self._token)
            else:
                core.release(self._token)
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    def __repr__(self) -> str:
        state = "released" if self._core is None else f"{self.size} bytes"
        return f"<Frame seq={self.sequence} offset={self.offset} {state}>"


class _PrivateFrames:
    """The owner of Frames over frames a run already copied out (offset -1): releasing them
    gives nothing back, their ring space went back when they were copied."""

    def release(self, token: int) -> None:
        pass

    def orphan(self, data: memoryview, view: memoryview, token: int) -> None:
        pass


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
    long as any frame does, even after Reader.close()."""

    def __init__(self, name: str, metadata_block: int, payload_block: int) -> None:
        self.name = name
        self.pid = os.getpid()
        self.M = metadata_block
        self.P = payload_block
        self.base = L.OIEB_SIZE + metadata_block  # payload ring offset in the mapping
        self.closed = False
        self.broken: str | None = None
        self.lock = threading.Lock()  # guards ring state and the mapping's lifetime
        self.deferred: list[int] = []  # tokens released while the lock was busy
        self.orphans: list[tuple[memoryview, memoryview, int]] = []  # dead frames, data in use
        self.ring = ReaderRing(payload_block)
        self.posts_seen = 0  # sem-w posts known to be pending (read_small's fast path)
        self.pending: deque[bytes] = deque()  # small frames taken by a run, not yet returned
        self.sem_handle = 0  # this process's own sem_t for sem-w (take_run), 0 if none
        self.sem_detach: Callable[[], Any] = _nothing  # closes sem_handle (at most once)
        self.withheld = 0  # bytes of small frames read and released, not yet given back
        self.withhold_max = min(payload_block // 64, _WITHHOLD_MAX)
        self.expected = 1
        self.frames = 0
        self.bytes = 0
        self.blocked = 0.0
        self.writer_seen = False
        total = L.total_size(metadata_block, payload_block)

        _shm.check_space(name, total)
        _shm.cleanup_stale(is_orphan)
        self.lock_fd = _shm.acquire_lock(name)
        undo: list[Any] = []
        try:
            self.mm = _create_exclusive(name, total)
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
                self.attach_semaphore(L.sem_w_name(name))
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

    def wait_frame(self, timeout: float | None, spin: int) -> None:
        """Take one sem-w post (one published frame), or raise WriterDead / Timeout."""
        if self.withheld:
            with self.lock:
                self.settle(0, more=False)
        if self.deferred:
            self.drain()
        sem = self.sem_w
        if _shm.SEM_VALUE:
            for i in range(spin):
                if sem.value and _shm.try_acquire(sem, 0):
                    return
                if i >= _SPIN_FAST:
                    os.sched_yield()
        if _shm.try_acquire(sem, 0):
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
                if self.closed:
                    raise TransportClosed(f"reader of {self.name!r} was closed while waiting")
                wait = POLL_INTERVAL
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        self.no_frame(timeout)
                if _shm.try_acquire(sem, wait):
                    return
                if self.writer_gone(probe=True):
                    return
        finally:
            self.blocked += time.monotonic() - start

    def writer_gone(self, probe: bool) -> bool:
        """Check the writer (`probe`: also whether its PID is alive). Returns True if a frame
        turned up meanwhile (its post is taken); raises WriterDead if the writer is gone and every
        frame it published was read."""
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
        if _shm.try_acquire(self.sem_w, 0):
            return True
        if self.published_unread():
            # Killed after moving write_pos past a complete frame but before posting it: read
            # that frame, unless a new writer took over meanwhile (its frames come with posts).
            return bool(_U64.unpack_from(mm, L.OFF_WRITER_PID)[0] == pid)
        raise WriterDead(
            f"buffer {self.name!r}: {why} and every frame it published has been read. "
            "A new Writer may connect to the same buffer; read() again to wait for it."
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

    def attach_semaphore(self, os_name: str) -> None:
        """Open our own handle on sem-w for take_run (without one, read_small takes one frame a
        call). Closed by close(), or when this core is collected if a read held the lock then."""
        hotpath = _shm.hotpath
        assert hotpath is not None
        try:
            self.sem_handle = hotpath.sem_attach(os_name)
        except OSError:
            return
        self.sem_detach = weakref.finalize(self, hotpath.sem_detach, self.sem_handle)
        # Not at interpreter exit: a daemon thread may still be inside read_small then.
        self.sem_detach.atexit = False

    def detach_semaphore(self) -> None:
        """Close our sem-w handle once closed and no read holds the lock (take_run uses it only
        under the lock): an unlinked semaphore's page stays in /dev/shm while it is mapped."""
        if not self.sem_handle or not self.lock.acquire(False):
            return
        try:
            self.sem_handle = 0
            self.sem_detach()
        finally:
            self.lock.release()

    # -- reading ---------------------------------------------------------------------------------

    def take_run(self, limit: int) -> bytes | None:
        """Copy out a run of plain small frames in one compiled call; return the first, keep the
        rest in `pending`. None (nothing changed): take_frame handles the frame (wraps, etc.)."""
        lock = self.lock
        if not lock.acquire(False):
            return None
        try:
            ring = self.ring
            if self.closed or not self.sem_handle or ring.held or limit <= 0:
                return None
            if self.expected > _U64_MAX:
                return None
            assert _TAKE_RUN is not None
            size = ring.size
            got = _TAKE_RUN(
                self.addr,
                self.base,
                size,
                ring.read_pos,
                min(limit, size),
                self.expected,
                _RUN_FRAMES,
                _RUN_BYTES,
                self.sem_handle,
            )
            k = len(got)
            if not k:
                return None
            nbytes = len(got[0]) if k == 1 else sum(map(len, got))
            freed = ring.consume(nbytes + k * _HDR, k)
            # Before any byte goes back: the reference writer decides where to wrap from read_pos.
            self.read_pos_word.value = ring.read_pos
            self.read_count_word.value = ring.count
            self.expected += k
            self.frames += k
            self.bytes += nbytes
            # One give-back per run (with anything withheld before), never kept back: a full run
            # cannot tell whether more is published, and bytes kept back then could leave a
            # writer waiting (review).
            self.give_back(freed)
            if k == 1:
                data = got[0]
            elif self.closed:  # closed by another thread meanwhile: nothing more to return
                self.pending.clear()
                data = got[0]
            else:
                self.pending.extend(got)
                data = self.pending.popleft()
        finally:
            lock.release()
            if self.closed:  # closed meanwhile by another thread, which could not detach
                self.detach_semaphore()
        if self.deferred:  # releases queued while we held the lock (GC, other threads)
            self.drain()
        return data

    def next_pending(self, limit: int) -> Frame | bytes:
        """The oldest frame a run read ahead: its bytes, or a private Frame (offset -1) when over
        `limit` (read(), a smaller limit)."""
        if self.closed:
            self.pending.clear()
            raise TransportClosed(f"reader of {self.name!r} is closed; create a new Reader")
        data = self.pending.popleft()
        n = len(data)
        if n <= limit:
            return data
        seq = (self.expected - 1 - len(self.pending)) & _U64_MAX
        view = memoryview(data)
        assert _shm.hotpath is not None  # runs exist only with the compiled hot path
        return Frame(_PRIVATE, 0, view, n, seq, -1, _shm.hotpath.address(view))

    def take_small(self, limit: int, more: bool) -> bytes | None:
        """take_run's single-frame twin without the compiled path; `more` (further posts seen)
        lets the freed bytes wait to go back together. None: nothing changed, use take_frame."""
        lock = self.lock
        if not lock.acquire(False):
            return None
        try:
            ring = self.ring
            pos = ring.read_pos
            if self.closed or ring.held or ring.size - pos < _HDR or limit <= 0:
                return None
            if self.expected > _U64_MAX:  # after a corrupt sequence: take_frame reports it
                return None
            start = self.base + pos
            n, seq = _HEADER.unpack_from(self.mm, start)
            if not 0 < n <= limit or seq != self.expected or n + _HDR > ring.size - pos:
                return None
            start += _HDR
            data = self.mm[start : start + n]
            freed = self.withheld + ring.consume(n + _HDR)
            # Per frame, not per batch: the reference writer decides where to wrap from read_pos.
            self.read_pos_word.value = ring.read_pos
            self.read_count_word.value = ring.count
            self.expected += 1
            self.frames += 1
            self.bytes += n
            if more and freed < self.withhold_max:
                self.withheld = freed  # settle()'s batching, inline for the common case
            else:
                self.withheld = 0
                self.settle(freed, more)
        finally:
            lock.release()
        if self.deferred:  # releases queued while we held the lock (GC, other threads)
            self.drain()
        return data

    def settle(self, freed: int, more: bool) -> None:
        """Small frames' freed bytes: kept for one batched give-back (one atomic add for many)
        while `more` frames are published and the batch is under `withhold_max`, else given back
        now with everything kept so far. Called with the lock held."""
        freed += self.withheld
        if freed < self.withhold_max and more:
            self.withheld = freed
            return
        self.withheld = 0
        self.give_back(freed)

    def take_frame(self, limit: int = -1) -> Frame | bytes:
        """Read the frame whose post was just taken (PROTOCOL.md 'frame read'). A frame of at
        most `limit` data bytes is copied out and its space given back at once (bytes)."""
        with self.lock:
            if self.closed:
                raise TransportClosed(f"reader of {self.name!r} is closed")
            mm = self.mm
            ring = self.ring
            base = self.base
            freed = 0
            try:
                if ring.implicit_wrap():
                    freed += ring.wrap()
                pos = ring.read_pos
                n, seq = _HEADER.unpack_from(mm, base + pos)
                if n == 0:
                    if seq != 0:
                        raise CorruptBuffer(
                            f"wrap marker at ring offset {pos} carries sequence {seq}, not 0"
                        )
                    freed += ring.wrap()
                    pos = 0
                    n, seq = _HEADER.unpack_from(mm, base)
                ring.check(n)
            except CorruptBuffer as exc:
                self.broken = str(exc)
                if freed:
                    self.give_back(freed)
                raise
            token = ring.push(_HDR + n)
            self.read_pos_word.value = ring.read_pos
            self.read_count_word.value = ring.count
            expected = self.expected
            if seq != expected and seq != 1:
                # A lost or repeated frame. Skip it (its space goes back) and resynchronise.
                freed += ring.release(token)
                self.expected = seq + 1
                if freed:
                    self.give_back(freed)
                raise SequenceError(
                    f"buffer {self.name!r}: expected frame {expected}, got {seq}; frames were "
                    "lost or repeated. That frame was skipped; reading continues after it.",
                    expected=expected,
                    got=seq,
                )
            # seq == 1 out of turn: a new writer took over (sequences restart per writer).
            self.expected = seq + 1
            self.frames += 1
            self.bytes += n
            offset = base + pos + _HDR
            result: Frame | bytes
            if n <= limit:
                result = mm[offset : offset + n]
                freed += ring.release(token)
                if freed:
                    self.settle(freed, _SEM_VALUE and bool(self.sem_w.value))
            else:
                if freed or self.withheld:  # a large frame is likely held a while: settle up
                    self.give_back(freed)
                result = Frame(
                    self, token, self.ro[offset : offset + n], n, seq, offset, self.addr + offset
                )
        if self.deferred:  # releases queued while we held the lock (GC, other threads)
            self.drain()
        return result

    # -- releasing -------------------------------------------------------------------------------

    def give_back(self, freed: int) -> None:
        """Return ring bytes (and any withheld ones) to the writer and wake it. Called with the
        lock held."""
        if self.closed:
            return
        self.free.add(freed + self.withheld)
        self.withheld = 0
        sem = self.sem_r
        # The writer waits on sem-r only when short of space and re-tests after every wake, so
        # one pending post is enough; capping the count keeps it far from SEM_VALUE_MAX.
        if not _shm.SEM_VALUE or not sem.value:
            with contextlib.suppress(posix_ipc.Error):
                _shm.post(sem)

    def release(self, token: int) -> None:
        if self.lock.acquire(False):
            try:
                freed = self.ring.release(token)
                if freed:
                    self.give_back(freed)
            finally:
                self.lock.release()
            if self.deferred or self.closed:
                self.drain()
        else:  # inside read() (the GC ran a __del__) or another thread: the holder applies it
            self.deferred.append(token)
            self.drain()

    def drain(self) -> None:
        """Apply releases queued while the lock was busy (GC inside read(), other threads). If the
        lock is taken, its holder drains after letting go."""
        deferred = self.deferred
        while deferred:
            if not self.lock.acquire(False):
                return
            try:
                ring = self.ring
                freed = 0
                while deferred:
                    freed += ring.release(deferred.pop())
                if freed:
                    self.give_back(freed)
            finally:
                self.lock.release()
        if self.closed:
            self.try_unmap()

    def orphan(self, data: memoryview, view: memoryview, token: int) -> None:
        """A frame died while its data was still in use: keep its space until nothing uses it."""
        self.orphans.append((data, view, token))

    def retry_orphans(self) -> None:
        pending, self.orphans = self.orphans, []
        for data, view, token in pending:
            # references to data here: the tuple, the loop variable, getrefcount's argument
            if getrefcount(data) > 3 or not _release_views(data, view):
                self.orphans.append((data, view, token))
            else:
                self.deferred.append(token)
        self.drain()

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
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
        if self.ring.held or self.orphans or not self.lock.acquire(False):
            return
        try:
            self.ro.release()
            with contextlib.suppress(BufferError):
                self.mm.close()
        finally:
            self.lock.release()


def _close_unlink(sem: posix_ipc.Semaphore, os_name: str) -> None:
    _shm.close_semaphore(sem)
    _shm.unlink_semaphore(os_name)


class Reader:
    """Creates buffer NAME and reads frames from it. `timeout` is the default for read();
    `spin` the number of non-blocking looks before a blocking wait."""

    def __init__(
        self,
        name: str,
        config: BufferConfig | None = None,
        *,
        timeout: float | None = L.DEFAULT_TIMEOUT,
        spin: int = DEFAULT_SPIN,
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
        self._core = _ReaderCore(name, L.align(config.metadata_size), L.align(config.payload_size))
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
        if core.pending:
            return core.next_pending(limit)
        if core.sem_handle:
            if not (core.closed or core.orphans) and core.broken is None:
                data = core.take_run(limit)
                if data is not None:
                    return data
        elif not (core.closed or core.orphans) and core.broken is None and _SEM_VALUE:
            sem = core.sem_w
            # Posts seen earlier and not yet taken are still there (only this reader takes
            # them): skip re-reading the semaphore, a cache line the writer keeps changing.
            posts = core.posts_seen or sem.value
            if posts:
                try:
                    sem.acquire(0)
                except posix_ipc.Error:  # busy, or closed by another thread: the slow path says
                    core.posts_seen = 0
                else:
                    core.posts_seen = posts - 1
                    data = core.take_small(limit, posts > 1)
                    return core.take_frame(limit) if data is None else data
        return self._next(timeout, limit)

    def _next(self, timeout: TimeoutArg, limit: int) -> Frame | bytes:
        core = self._core
        if core.pending:
            return core.next_pending(limit)
        core.posts_seen = 0
        if core.closed:
            raise TransportClosed(f"reader of {self.name!r} is closed; create a new Reader")
        if core.broken is not None:
            raise CorruptBuffer(f"buffer {self.name!r} is corrupt: {core.broken}")
        if core.orphans:
            core.retry_orphans()
        if not _shm.try_take(core.sem_w):
            t = self._timeout if timeout is _UNSET else _check_timeout(timeout)
            core.wait_frame(t, self._spin)
        return core.take_frame(limit)

    @property
    def metadata(self) -> memoryview | None:
        """The writer's metadata (read-only view into shm), or None before it is written."""
        core = self._core
        if core.closed:
            raise TransportClosed(f"reader of {self.name!r} is closed")
        mm = core.mm
        written = _U64.unpack_from(mm, L.OFF_METADATA_WRITTEN)[0]
        if not written:
            return None
        length = _U64.unpack_from(mm, L.OIEB_SIZE)[0]
        if length > core.M or L.METADATA_PREFIX + length > min(written, core.M):
            raise CorruptBuffer(
                f"buffer {self.name!r}: metadata claims {length} bytes ({written} written) in a "
                f"{core.M}-byte block"
            )
        start = L.OIEB_SIZE + L.METADATA_PREFIX
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
            frames=core.frames,
            bytes=core.bytes,
            frames_held=core.ring.held,
            bytes_held=core.ring.held_bytes,
            blocked_seconds=core.blocked,
        )

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
