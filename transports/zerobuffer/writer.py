"""The ZeroBuffer writer (docs/protocol.md): it connects to a reader's buffer and writes frames.

```
w = Writer(name)                                  # connects to the reader's buffer
w.set_metadata(b"schema")                         # once per buffer
w.write(b"bytes")                                 # one copy into the next frame
buf = w.reserve(n); buf[:] = ...; w.commit()      # zero copy: fill the frame in place
```
"""

from __future__ import annotations

import contextlib
import os
import time
from array import array
from typing import Any

import posix_ipc

from transports.errors import (
    BufferFull,
    CorruptBuffer,
    FrameTooLarge,
    InvalidFrameSize,
    MetadataAlreadyWritten,
    MetadataTooLarge,
    ReaderDead,
    ReservationError,
    TransportClosed,
)
from transports.zerobuffer import layout as L
from transports.zerobuffer import posix as _shm
from transports.zerobuffer.common import (
    _SPIN_FAST,
    _UNSET,
    DEFAULT_SPIN,
    POLL_INTERVAL,
    TimeoutArg,
    WriterStats,
    _check_attach,
    _check_name,
    _check_timeout,
    _claim_writer,
    interrupts_deferred,
    metadata_span,
)
from transports.zerobuffer.ring import REWIND_MIN, WriterRing

__all__ = ["Writer"]


def _ring_bell(bell: tuple[int, int]) -> None:
    """The pool bell without the compiled publish (pool.py)."""
    if _shm.word_at(bell[0]).value:
        _shm.ring_bell(bell[1])


_HDR = L.HEADER_SIZE
_U64 = L.U64
_HEADER = L.HEADER
_U64_MAX = (1 << 64) - 1
_unpack_u64 = _U64.unpack_from
_OFF_READER_PID = L.OFF_READER_PID
_SMALL_FRAME = REWIND_MIN - L.HEADER_SIZE  # writes below it skip _claim (they never rewind)
_PUBLISHER = _shm.hotpath.Publisher if _shm.hotpath is not None else None

# The writer's state words: the ring's (ring.py: WRITE_POS), then these. An array('Q') that the
# compiled Publisher advances in the same step as it publishes (transports/_native.c).
SEQ = 1  # sequence number of the next frame
WRITTEN = 2  # entries written, frames and wraps: the OIEB's payload_written_count
FRAMES = 3  # frames written
BYTES = 4  # data bytes written
DONE = 5  # 1 if the last Publisher.put published its frame
_WORDS = 6


class Writer:
    """Connects to buffer NAME (created by a live Reader) and writes frames into it.
    `timeout` is the default for write() and reserve(). Use it from one thread at a time:
    closing it from another thread while a write is under way is undefined (the compiled
    write path holds a raw address into the mapping).

    The rules it keeps (docs/protocol.md "frame written"; the reader's side is in reader.py):

    - Claim, fill, publish. `_claim` only looks (placement, wrap, rewind, waiting for free
      space) and changes nothing; the data is copied into space nobody reads yet; `_publish`
      is the one step that makes the frame visible.
    - Publish order: the wrap marker (when the wasted tail holds a header), the frame header,
      free -= tail + 16 + N (first: a writer killed in between leaks bytes at worst, never
      counts space free twice), payload_write_pos, payload_written_count, one sem-w post.
    - The writer's state words (write position, next sequence, written count, frames, bytes)
      advance in that same step; `_again` keeps an aborted reservation's placement until the
      next publish.
    - Interrupted, not lost: compiled, the publish is one attribute store on the Publisher
      (`put` for the usual small frame, `publish` for the rest), and nothing after it in
      write()/commit() calls anything. CPython runs a Python signal handler only after a call
      or at a loop, so a KeyboardInterrupt either comes out of write()/commit() before the
      frame is published (send it again) or after they have returned: never both published
      and raised. Without the compiled module the publish is several calls and this does not
      hold.
    """

    def __init__(
        self,
        name: str,
        *,
        timeout: float | None = L.DEFAULT_TIMEOUT,
        spin: int = DEFAULT_SPIN,
    ) -> None:
        self._closed = True  # until attached: close() and __del__ then do nothing
        _check_name(name)
        self._timeout = _check_timeout(timeout)
        self._spin = max(0, int(spin))
        _shm.require_atomics()
        self.name = name
        self._pid = os.getpid()
        self._res: tuple[int, int, int] | None = None  # (skip, header offset, n) when reserved
        # (write_pos, skip) of the first reservation aborted here: reserving again until the next
        # publish keeps that placement (rewound or not), so a frame re-reserved larger or smaller
        # stays where arrays made in it live, whatever the reader released meanwhile.
        self._again: tuple[int, int] | None = None
        self._res_view: memoryview | None = None
        self._blocked = 0.0
        self.interrupted = False  # interrupt(): the next wait for space raises TransportClosed
        with interrupts_deferred():  # Ctrl-C: attached (and closed by __del__), or not at all
            self._attach(name)

    def _attach(self, name: str) -> None:
        mm = _shm.open_shm(name)
        sems: list[posix_ipc.Semaphore] = []
        handle = 0  # our own sem_t for sem-w: the compiled put posts it in the same call
        try:
            M, P = _check_attach(name, mm)
            sems.append(_shm.open_semaphore(L.sem_w_name(name)))
            if _PUBLISHER is not None:  # right after posix_ipc's open: the same semaphore
                assert _shm.hotpath is not None
                with contextlib.suppress(OSError):
                    handle = _shm.hotpath.sem_attach(L.sem_w_name(name))
            sems.append(_shm.open_semaphore(L.sem_r_name(name)))
            addr = _shm.address_of(mm)
            _claim_writer(name, mm, addr, self._pid)
        except BaseException:
            for sem in sems:
                _shm.close_semaphore(sem)
            if handle:
                assert _shm.hotpath is not None
                _shm.hotpath.sem_detach(handle)
            mm.close()
            raise
        self._mm = mm
        self._rw = memoryview(mm)
        self._addr = addr
        self._free_addr = addr + L.OFF_PAYLOAD_FREE
        self._free = _shm.AtomicWord(self._free_addr)
        self._free_word = _shm.word_at(self._free_addr)
        self._write_pos_word = _shm.word_at(addr + L.OFF_WRITE_POS)
        self._written_word = _shm.word_at(addr + L.OFF_WRITTEN_COUNT)
        self._sem_w, self._sem_r = sems
        self._M = M
        self._P = P
        self._base = L.OIEB_SIZE + M
        self._words = words = array("Q", bytes(8 * _WORDS))
        self._ring = WriterRing(P, _U64.unpack_from(mm, L.OFF_WRITE_POS)[0], words)
        words[WRITTEN] = _U64.unpack_from(mm, L.OFF_WRITTEN_COUNT)[0]
        words[SEQ] = 1
        self._publisher = (
            _PUBLISHER(addr, self._base, P, handle, words) if _PUBLISHER is not None else None
        )
        self._closed = False
        self._sem_handle = handle
        self._bell: tuple[int, int] | None = None  # a pool's (sleepers address, bell fd)

    # -- metadata --------------------------------------------------------------------------------

    def set_metadata(self, data: Any) -> None:
        """Write the buffer's metadata (once per buffer; empty is allowed)."""
        self._check_open()
        view = memoryview(data).cast("B")
        length = view.nbytes
        mm = self._mm
        if _U64.unpack_from(mm, L.OFF_METADATA_WRITTEN)[0]:
            raise MetadataAlreadyWritten(
                f"buffer {self.name!r} already has metadata; it is written once per buffer "
                "(a new stream needs a new Reader)"
            )
        if L.METADATA_PREFIX + length > self._M:
            raise MetadataTooLarge(
                f"metadata of {length} bytes needs {L.METADATA_PREFIX + length} bytes but the "
                f"metadata block holds {self._M}; create the reader with a larger metadata_size"
            )
        start = L.OIEB_SIZE + L.METADATA_PREFIX
        mm[start : start + length] = view
        _U64.pack_into(mm, L.OIEB_SIZE, length)
        _U64.pack_into(mm, L.OFF_METADATA_FREE, self._M - L.METADATA_PREFIX - length)
        _U64.pack_into(mm, L.OFF_METADATA_WRITTEN, L.METADATA_PREFIX + length)

    def set_bell(self, sleepers_address: int, fd: int) -> None:
        """Ring this pool bell after every publish while the word at `sleepers_address` is
        non-zero (pool.py). The compiled publish rings it in the same call."""
        self._bell = (sleepers_address, fd)
        if self._publisher is not None:
            self._publisher.bell = (sleepers_address, fd)

    def clear_bell(self) -> None:
        self._bell = None
        if self._publisher is not None:
            self._publisher.bell = (0, -1)

    @property
    def payload_span(self) -> tuple[int, int]:
        """(offset, size) of the payload ring in the buffer."""
        return self._base, self._P

    @property
    def metadata(self) -> bytes | None:
        """The buffer's metadata as written (by this or an earlier writer), or None before."""
        self._check_open()
        span = metadata_span(self.name, self._mm, self._M)
        if span is None:
            return None
        start, length = span
        return bytes(self._mm[start : start + length])

    # -- frames ----------------------------------------------------------------------------------

    def write(self, data: Any, timeout: TimeoutArg = _UNSET) -> None:
        """Copy one bytes-like object (C-contiguous) into the next frame and publish it."""
        if self._closed:
            raise TransportClosed(f"writer of {self.name!r} is closed; create a new Writer")
        if self._res is not None:
            raise ReservationError("a reserved frame is pending: commit() or abort() it first")
        publisher = self._publisher
        if type(data) is bytes and publisher is not None and len(data) < _SMALL_FRAME:
            # The usual frame in one compiled step; not done: a case the code below handles.
            publisher.put = data
            if self._words[DONE]:
                self._again = None
                if not self._sem_handle:
                    _shm.post(self._sem_w)  # without our own handle (not signal safe)
                return
        if type(data) is bytes or type(data) is bytearray:
            n = len(data)
        else:
            view = memoryview(data)
            if not view.c_contiguous:
                raise TypeError("write() needs a C-contiguous buffer; copy it first")
            n = view.nbytes
            data = view
        ring = self._ring
        mm = self._mm
        if (
            0 < n < _SMALL_FRAME
            and n + _HDR <= ring.size - ring.write_pos
            and _unpack_u64(mm, _OFF_READER_PID)[0]
            and self._P >= self._free_word.value >= n + _HDR
        ):
            # The usual frame: it fits before the ring's end and the space is free already.
            start = self._base + ring.write_pos + _HDR
            mm[start : start + n] = data
            self._publish(0, n)
            return
        skip, pos = self._claim(n, timeout)
        start = self._base + pos + _HDR
        self._mm[start : start + n] = data
        self._publish(skip, n)

    def reserve(self, n: int, timeout: TimeoutArg = _UNSET) -> memoryview:
        """Claim the next frame of `n` data bytes and return a writable view of them; fill it,
        then commit() (or abort()). Nothing is visible to the reader until commit()."""
        self._check_open()
        if self._res is not None:
            raise ReservationError("a frame is already reserved: commit() or abort() it first")
        if isinstance(n, bool) or not isinstance(n, int):
            raise InvalidFrameSize(f"reserve() needs an int size, not {n!r}")
        skip, pos = self._claim(n, timeout)
        self._res = (skip, pos, n)
        start = self._base + pos + _HDR
        view = self._rw[start : start + n]
        self._res_view = view
        return view

    @property
    def reserved(self) -> bool:
        """Whether a frame is reserved (reserve() called, commit() or abort() not yet)."""
        return self._res is not None

    @property
    def reserved_offset(self) -> int:
        """Offset in the mapping of the reserved frame's data (mapping is page aligned)."""
        if self._res is None:
            raise ReservationError("no frame is reserved")
        return self._base + self._res[1] + _HDR

    @property
    def reserved_address(self) -> int:
        """Absolute address of the reserved frame's data."""
        return self._addr + self.reserved_offset

    def commit(self, n_used: int | None = None) -> None:
        """Publish the reserved frame with its first `n_used` bytes (default: all of them)."""
        self._check_open()
        res = self._res
        if res is None:
            raise ReservationError("commit() without reserve()")
        skip, _, n = res
        if n_used is None:
            n_used = n
        elif isinstance(n_used, bool) or not isinstance(n_used, int) or not 1 <= n_used <= n:
            raise InvalidFrameSize(f"commit(n_used={n_used!r}): must be an int in [1, {n}]")
        self._end_reservation()
        if not _U64.unpack_from(self._mm, L.OFF_READER_PID)[0]:
            raise ReaderDead(f"buffer {self.name!r}: the reader closed; the frame was dropped")
        self._publish(skip, n_used)

    def abort(self) -> None:
        """Give the reserved frame back unpublished (the OIEB is left untouched)."""
        if self._res is None:
            raise ReservationError("abort() without reserve()")
        if self._again is None:
            self._again = (self._ring.write_pos, self._res[0])
        self._end_reservation()

    def _end_reservation(self) -> None:
        self._res = None
        view = self._res_view
        self._res_view = None
        if view is not None:
            # Still exported (an array over it, say): then the export keeps the mapping alive;
            # writing through it after commit() races with the reader, as with any shared buffer.
            with contextlib.suppress(BufferError):
                view.release()

    def _claim(self, n: int, timeout: TimeoutArg) -> tuple[int, int]:
        """Wait until a frame of n data bytes fits; returns (skip, header offset)."""
        P = self._P
        total = n + _HDR
        if n <= 0:
            raise InvalidFrameSize("a frame must carry at least one byte (N = 0 is a wrap marker)")
        if total > P:
            raise FrameTooLarge(
                f"a frame of {n} data bytes needs {total} ring bytes but the ring holds {P}; "
                "create the reader with a larger payload_size or split the data",
                size=n,
                capacity=P,
            )
        ring = self._ring
        skip = ring.skip(total)
        required = skip + total
        if required > P:
            raise FrameTooLarge(
                f"a frame of {n} data bytes cannot be placed from ring offset {ring.write_pos}: "
                f"wrapping needs the {skip}-byte tail and {total} bytes free at once, more than "
                f"the {P}-byte ring. Frames up to {P // 2 - _HDR} data bytes always fit; use a "
                "payload_size of at least twice the largest frame.",
                size=n,
                capacity=P,
            )
        mm = self._mm
        if not _unpack_u64(mm, _OFF_READER_PID)[0]:
            raise ReaderDead(
                f"buffer {self.name!r}: the reader closed. Start a new reader, then a new writer."
            )
        free = self._free_word.value
        if not skip:
            again = self._again
            if again is not None and again[0] == ring.write_pos:
                skip = again[1] if total <= ring.write_pos else 0
            else:
                skip = ring.rewind(total, free)
            required = skip + total
        if free < required:
            self._wait_space(required, timeout)
        elif free > P:
            self._corrupt_free(free)
        return skip, ring.offset(skip)

    def _corrupt_free(self, free: int) -> None:
        raise CorruptBuffer(
            f"buffer {self.name!r}: payload_free_bytes is {free}, more than the {self._P}-byte "
            "ring; the buffer is corrupt (or another writer is connected)"
        )

    def _wait_space(self, required: int, timeout: TimeoutArg) -> None:
        t = self._timeout if timeout is _UNSET else _check_timeout(timeout)
        mm = self._mm
        P = self._P
        free_word = self._free_word
        if t != 0:
            for i in range(self._spin):
                if free_word.value >= required:
                    break
                if i >= _SPIN_FAST:
                    os.sched_yield()
        start = time.monotonic()
        deadline = None if t is None else start + t
        sem = self._sem_r
        try:
            while True:
                free = free_word.value
                if free > P:
                    self._corrupt_free(free)
                if free >= required:
                    return
                if self.interrupted:
                    self.interrupted = False
                    raise TransportClosed(
                        f"writer of {self.name!r} was closed while it waited for space; the "
                        "frame was not written"
                    )
                pid = _U64.unpack_from(mm, L.OFF_READER_PID)[0]
                if not pid:
                    raise ReaderDead(
                        f"buffer {self.name!r}: the reader closed while the writer waited for "
                        "space. Start a new reader, then a new writer."
                    )
                wait = POLL_INTERVAL
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        self._no_space(pid, required, free, t)
                if _shm.try_acquire(sem, wait):
                    continue
                if not _shm.pid_alive(pid):
                    raise ReaderDead(
                        f"buffer {self.name!r}: the reader (pid {pid}) died. Start a new "
                        "reader, then a new writer."
                    )
        finally:
            self._blocked += time.monotonic() - start

    def _no_space(self, pid: int, required: int, free: int, timeout: float | None) -> None:
        if not _shm.pid_alive(pid):
            raise ReaderDead(f"buffer {self.name!r}: the reader (pid {pid}) died")
        raise BufferFull(
            f"buffer {self.name!r}: no room within {timeout} s for a frame needing {required} "
            f"bytes ({free} of {self._P} free). The reader (pid {pid}) is alive but has not "
            "read or released enough frames; wait longer, release frames sooner, or use a "
            "bigger payload_size.",
            timeout=timeout,
        )

    def _publish(self, skip: int, n: int) -> None:
        """docs/protocol.md 'frame written': header, then OIEB (free, write_pos, written_count),
        then one sem-w post. A wrap's marker and tail are published together with the frame.
        Compiled, it is one attribute store (the commit): nothing after it runs a signal handler
        before write()/commit() has returned."""
        publisher = self._publisher
        if publisher is not None:
            publisher.publish = (skip, n)
            self._again = None
            if not self._sem_handle:
                _shm.post(self._sem_w)  # without our own handle (not signal safe)
                if self._bell is not None:
                    _ring_bell(self._bell)
            return
        mm = self._mm
        ring = self._ring
        words = self._words
        base = self._base
        total = n + _HDR
        if skip >= _HDR:
            _HEADER.pack_into(mm, base + ring.write_pos, 0, 0)
        pos, entries = ring.advance(skip, total)
        _HEADER.pack_into(mm, base + pos, n, words[SEQ])
        words[SEQ] += 1
        self._again = None
        words[WRITTEN] = (words[WRITTEN] + entries) & _U64_MAX  # a counter, wraps like C
        # Free space first (docs/protocol.md order): a writer killed between these steps then
        # leaks the frame's bytes at worst, instead of leaving space counted free twice.
        self._free.sub(skip + total)
        self._write_pos_word.value = ring.write_pos
        self._written_word.value = words[WRITTEN]
        _shm.post(self._sem_w)
        if self._bell is not None:
            _ring_bell(self._bell)
        words[FRAMES] += 1
        words[BYTES] += n

    # -- state -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"writer of {self.name!r} is closed; create a new Writer")

    def stats(self) -> WriterStats:
        """Ring usage and counters now, including frames the reader has not read yet."""
        P = self._P
        if self._closed:
            free, unread = P, 0
        else:
            mm = self._mm
            free = min(self._free_word.value, P)
            read_count = _U64.unpack_from(mm, L.OFF_READ_COUNT)[0]
            unread = max(0, self._words[WRITTEN] - read_count)
        return WriterStats(
            capacity=P,
            used=P - free,
            free=free,
            utilisation=(P - free) / P,
            frames=self._words[FRAMES],
            bytes=self._words[BYTES],
            frames_unread=unread,
            blocked_seconds=self._blocked,
        )

    def interrupt(self) -> None:
        """Make a wait for space in progress (in another thread) raise TransportClosed within
        `POLL_INTERVAL`, so that thread lets go before close(); a store, safe from any thread.
        Taken once: by the wait it ends, or by the next one (clear `interrupted` to cancel)."""
        self.interrupted = True

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Detach (writer_pid = 0; a reserved frame is dropped). Never unlinks. Safe twice."""
        if self._closed:
            return
        with interrupts_deferred():  # Ctrl-C: detached whole, or not yet
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._res is not None:
            self._end_reservation()
        if os.getpid() != self._pid:
            return  # a forked child: the writer role belongs to the parent
        with contextlib.suppress(Exception):
            _shm.compare_exchange(self._addr + L.OFF_WRITER_PID, self._pid, 0)
        _shm.close_semaphore(self._sem_w)
        _shm.close_semaphore(self._sem_r)
        if self._sem_handle:
            assert _shm.hotpath is not None
            with contextlib.suppress(OSError):
                _shm.hotpath.sem_detach(self._sem_handle)
            self._sem_handle = 0
        self._rw.release()
        with contextlib.suppress(BufferError):
            self._mm.close()  # still exported (a reserve() view kept alive): GC unmaps later

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"payload {self._P} bytes"
        return f"<Writer {getattr(self, 'name', '?')!r} {state}>"
