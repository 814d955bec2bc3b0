"""transports.zerobuffer against itself: real shared memory, real semaphores, real processes.

Interop with the reference implementation and its bugs are in test_interop.py and
test_reference_bugs.py; the pure ring logic is in test_ring.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
import multiprocessing as mp
import os
import queue
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from conftest import unique_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transports import errors as E
from transports.zerobuffer import BufferConfig, Frame, Reader, Writer
from transports.zerobuffer import layout as L
from transports.zerobuffer import posix as _shm
from transports.zerobuffer import reader as zb_reader
from transports.zerobuffer import writer as zb_writer
from transports.zerobuffer.ring import REWIND_MIN

P_SMALL = 1024
HDR = L.HEADER_SIZE


def pattern(seq: int, n: int) -> bytes:
    """Every byte of frame `seq` is determined by (seq, position)."""
    return random.Random(seq * 1_000_003 + n).randbytes(n)


def resources(name: str) -> dict[str, bool]:
    return {
        "shm": os.path.exists(f"/dev/shm/{name}"),
        "sem_w": os.path.exists(f"/dev/shm/sem.sem-w-{name}"),
        "sem_r": os.path.exists(f"/dev/shm/sem.sem-r-{name}"),
        "lock": os.path.exists(L.lock_path(name)),
    }


@contextlib.contextmanager
def raw_oieb(name: str) -> Iterator[mmap.mmap]:
    """The live mapping, as something else scribbling on it would see it."""
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 0)
    finally:
        os.close(fd)
    try:
        yield mm
    finally:
        mm.close()


def oieb_bytes(name: str) -> bytes:
    with raw_oieb(name) as mm:
        return bytes(mm[: L.OIEB_SIZE])


def field(name: str, offset: int) -> int:
    with raw_oieb(name) as mm:
        return int(L.U64.unpack_from(mm, offset)[0])


@pytest.fixture
def pair(shm_name: str) -> Iterator[tuple[Reader, Writer]]:
    with Reader(shm_name, BufferConfig(256, P_SMALL), timeout=2.0) as r, Writer(shm_name) as w:
        yield r, w


# --- child processes -----------------------------------------------------------------------------

PRELUDE = """
import os, random, sys, time
from transports.zerobuffer import BufferConfig, Reader, Writer
from transports import errors as E
def pattern(seq, n):
    return random.Random(seq * 1_000_003 + n).randbytes(n)
def say(*words):
    print(*words, flush=True)
"""


class Child:
    """A Python child running `code`; its stdout lines are read with timeouts. Every child still
    running when its test ends is killed (see `kill_leftover_children`)."""

    running: ClassVar[list[Child]] = []

    def __init__(self, code: str) -> None:
        Child.running.append(self)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, word: str, timeout: float = 30.0) -> list[str]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"child said nothing within {timeout} s") from None
        if line is None or line.split()[0] != word:
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"expected {word!r}, got {line!r}; stderr:\n{err}")
        return line.split()[1:]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def finish(self, timeout: float = 30.0) -> None:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        err = self.proc.stderr.read() if self.proc.stderr else ""
        assert rc == 0, f"child failed ({rc}):\n{err}"


@pytest.fixture(autouse=True)
def kill_leftover_children() -> Iterator[None]:
    yield
    while Child.running:
        Child.running.pop().kill()


def reclaim(name: str) -> None:
    """A new reader of the same name cleans a killed reader's leftovers; then close it."""
    Reader(name, BufferConfig(0, 64)).close()
    assert not any(resources(name).values())


# --- round trips ---------------------------------------------------------------------------------


def test_single_process_round_trip_every_byte(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    rng = random.Random(1)
    for seq in range(1, 400):
        n = rng.choice([1, 2, 15, 16, 17, 63, 64, 65, rng.randint(1, P_SMALL // 2 - HDR)])
        w.write(pattern(seq, n))
        with r.read() as f:
            assert f.sequence == seq
            assert f.size == n
            assert bytes(f.data) == pattern(seq, n)
            assert f.data.readonly
            assert ctypes.string_at(f.address, n) == pattern(seq, n)
            assert f.address % 64 == f.offset % 64
    assert r.stats().free == P_SMALL
    assert field(r.name, L.OFF_WRITTEN_COUNT) == field(r.name, L.OFF_READ_COUNT)


@pytest.mark.parametrize("backend", [_shm.COMPILED, _shm.LIBATOMIC])
def test_read_small_copies_out_small_frames_and_keeps_ring_order(
    shm_name: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small frames come back as bytes with their space already released, large ones as
    Frames; held Frames keep every later small frame's space from going back (ring order),
    wraps and withheld bytes included. At the end everything is free again."""
    if backend == _shm.LIBATOMIC:  # as when transports._native could not be built
        monkeypatch.setattr(_shm, "_compiled", None)
        monkeypatch.setattr(zb_writer, "_PUBLISHER", None)
        monkeypatch.setattr(zb_reader, "_TAKE_RUN", None)
    limit = 40
    rng = random.Random(7)
    with Reader(shm_name, BufferConfig(0, P_SMALL), timeout=2.0) as r, Writer(shm_name) as w:
        held: list[Frame] = []
        seq = 0
        for _ in range(3000):
            if held and (rng.random() < 0.3 or r.stats().free < P_SMALL // 2):
                frame = held.pop(rng.randrange(len(held)))
                frame.release()
                continue
            published = []
            for _ in range(rng.randint(1, 3)):
                n = rng.choice([1, 15, 16, limit, limit + 1, rng.randint(1, 120)])
                if r.stats().free - sum(p + HDR for p in published) < 2 * (n + HDR) + 120:
                    break
                seq += 1
                w.write(pattern(seq, n))
                published.append(n)
            for i, n in enumerate(published, start=seq - len(published) + 1):
                got = r.read_small(limit)
                if n <= limit:
                    assert got == pattern(i, n)
                else:
                    assert isinstance(got, Frame)
                    assert got.sequence == i
                    assert bytes(got.data) == pattern(i, n)
                    held.append(got)
            if not held:
                assert r.stats().free == P_SMALL  # nothing published: nothing withheld
            else:
                assert r.stats().free <= P_SMALL - sum(f.size + HDR for f in held)
        for frame in held:
            frame.release()
        assert r.stats().free == P_SMALL
        assert r.stats().frames_held == 0
        assert seq > 1000


@pytest.mark.parametrize("compiled", [True, False])
def test_release_queued_under_the_lock_is_applied_on_the_small_path(
    shm_name: str, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame released while the reader holds its lock (the GC inside a read, another thread)
    is queued; the small-message path must apply the queue, else the held frame pins the ring
    until the writer reports BufferFull (found in review)."""
    if not compiled:
        monkeypatch.setattr(zb_reader, "_TAKE_RUN", None)
    with Reader(shm_name, BufferConfig(0, P_SMALL), timeout=2.0) as r, Writer(shm_name) as w:
        w.write(b"L" * 300)
        big = r.read_small(200)
        assert isinstance(big, Frame)
        with r._core.lock:
            r._core.busy = True  # as a read under way (the GC inside it) has it
            big.release()  # queued: a step is under way
            r._core.busy = False
        assert r._core.deferred
        for seq in range(2, 200):  # ~24 KB of small frames through a 1 KiB ring
            w.write(pattern(seq, 100), timeout=1.0)
            assert r.read_small(200) == pattern(seq, 100)
        assert not r._core.deferred
        assert r.stats().free == P_SMALL and r.stats().frames_held == 0


@pytest.mark.parametrize("compiled", [True, False])
def test_read_small_publishes_read_pos_before_giving_bytes_back(
    shm_name: str, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference writer places frames from payload_read_pos: it must never lag behind the
    frames taken, whose bytes may go back (a lagging read_pos made it write past the ring's
    end). One frame per call without the compiled path; a whole run per call with it."""
    if not compiled:
        monkeypatch.setattr(zb_reader, "_TAKE_RUN", None)
    size = 64 * 1024
    with Reader(shm_name, BufferConfig(0, size), timeout=2.0) as r, Writer(shm_name) as w:
        for seq in range(1, 11):
            w.write(pattern(seq, 20))
        for seq in range(1, 11):
            assert r.read_small(64) == pattern(seq, 20)
            taken = 10 if compiled else seq
            assert field(shm_name, L.OFF_READ_POS) == taken * (20 + HDR)
            assert field(shm_name, L.OFF_READ_COUNT) == taken
            if compiled:
                assert r.stats().free == size  # the run's bytes went back together
            elif seq < 10:
                assert r.stats().free < size - (10 - seq) * (20 + HDR)  # bytes batched
        assert r.stats().free == size


def test_take_run_needs_a_list_and_takes_nothing_otherwise(shm_name: str) -> None:
    """The compiled run appends each frame straight onto the reader's list of taken frames; given
    anything else it refuses before taking a post, so the frame stays for the next read."""
    assert zb_reader._TAKE_RUN is not None
    with Reader(shm_name, BufferConfig(0, P_SMALL), timeout=2.0) as r, Writer(shm_name) as w:
        w.write(pattern(1, 30))
        core = r._core
        args = (core.addr, core.base, core.ring.size, core.words, 64, 32, 1 << 18)
        with pytest.raises(TypeError, match="list"):
            zb_reader._TAKE_RUN(*args, core.sem_handle, core.sem_r_handle, deque())
        assert core.words[zb_reader.POSTS] == 0 and core.words[zb_reader.FRAMES] == 0
        taken: list[bytes] = []
        assert zb_reader._TAKE_RUN(*args, core.sem_handle, core.sem_r_handle, taken) == 1
        assert taken == [pattern(1, 30)] and core.words[zb_reader.FRAMES] == 1


def test_read_small_reads_ahead_a_run_and_returns_it_in_order(shm_name: str) -> None:
    """With the compiled path one call takes up to _RUN_FRAMES published small frames (their
    space goes back at once) and the next calls return them; read() and a smaller limit get
    them as private Frames (offset -1); close() drops them."""
    size = 64 * 1024
    with Reader(shm_name, BufferConfig(0, size), timeout=2.0) as r, Writer(shm_name) as w:
        assert r._core.sem_handle, "the compiled path should be in use"
        for seq in range(1, 6):
            w.write(pattern(seq, 20))
        assert r.read_small(64) == pattern(1, 20)
        assert field(shm_name, L.OFF_READ_COUNT) == 5  # all five taken by one run
        assert r.stats().free == size  # a run that found no more posts gives everything back
        assert r.stats().frames == 5
        assert r.read_small(64) == pattern(2, 20)
        frame = r.read()  # a Frame over the private copy
        assert (frame.offset, frame.sequence, frame.size) == (-1, 3, 20)
        assert bytes(frame.data) == pattern(3, 20) and frame.data.readonly
        view = np.frombuffer(frame.data, dtype=np.uint8)
        with pytest.raises(BufferError):
            frame.release()
        del view
        frame.release()
        small = r.read_small(10)  # over this call's limit: a Frame too
        assert isinstance(small, Frame) and small.sequence == 4
        assert r.read_small(64) == pattern(5, 20)
        with pytest.raises(E.Timeout):
            r.read_small(64, timeout=0)

        for seq in range(6, 6 + 40):
            w.write(pattern(seq, 20))
        assert r.read_small(64) == pattern(6, 20)
        assert field(shm_name, L.OFF_READ_COUNT) == 5 + zb_reader._RUN_FRAMES  # frame bound
        assert r.stats().free == size - (40 - zb_reader._RUN_FRAMES) * (20 + HDR)
        for seq in range(7, 6 + 40):
            assert r.read_small(64) == pattern(seq, 20)
        assert r.stats().free == size

        for seq in range(46, 49):
            w.write(pattern(seq, 20))
        assert r.read_small(64) == pattern(46, 20)
        r.close()
        with pytest.raises(E.TransportClosed):
            r.read_small(64)


def test_a_full_run_gives_its_bytes_back_at_once(shm_name: str) -> None:
    """A run of exactly _RUN_FRAMES cannot tell whether more is published: keeping its bytes
    back left a writer waiting for space already read (found in review)."""
    size = 1 << 20
    run = zb_reader._RUN_FRAMES
    with (
        Reader(shm_name, BufferConfig(0, size), timeout=2.0) as r,
        Writer(shm_name, timeout=0.5) as w,
    ):
        w.write(b"B" * (size - run * (20 + HDR) - HDR))  # the run then ends at the ring's end
        r.read().release()
        for seq in range(2, 2 + run):
            w.write(pattern(seq, 20))
        assert r.read_small(64) == pattern(2, 20)
        assert r.stats().free == size
        w.write(b"y" * (size - 200))  # needs every byte read so far: BufferFull before the fix


@pytest.mark.parametrize("compiled", [True, False])
def test_small_reads_across_wraps_return_every_byte_exactly_once(
    shm_name: str, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrap markers send small reads down the general path, which may withhold bytes while
    more is posted; the next run must give those back once, not twice (a double give-back made
    the free counter exceed the ring, found by a channel test) and not never."""
    if not compiled:
        monkeypatch.setattr(zb_reader, "_TAKE_RUN", None)
    size = 64 * 1024  # withholds up to 1 KiB
    rng = random.Random(5)
    with Reader(shm_name, BufferConfig(0, size), timeout=2.0) as r, Writer(shm_name) as w:
        seq = 0
        for _ in range(400):
            burst = [rng.randint(1, 400) for _ in range(rng.randint(1, 40))]
            for n in burst:
                seq += 1
                w.write(pattern(seq, n), timeout=1.0)
            for i, n in enumerate(burst, start=seq - len(burst) + 1):
                assert r.read_small(512) == pattern(i, n)
                assert r.stats().free <= size
            assert r.stats().free == size
        assert field(shm_name, L.OFF_READ_COUNT) >= seq  # frames plus wrap markers


def test_read_small_run_stops_past_its_byte_bound(shm_name: str) -> None:
    size = 1 << 20
    n = 10 * 1024
    with Reader(shm_name, BufferConfig(0, size), timeout=2.0) as r, Writer(shm_name) as w:
        for seq in range(1, 41):
            w.write(pattern(seq, n))
        assert r.read_small(16 * 1024) == pattern(1, n)
        taken = -(-zb_reader._RUN_BYTES // n)
        assert field(shm_name, L.OFF_READ_COUNT) == taken
        for seq in range(2, 41):
            assert r.read_small(16 * 1024) == pattern(seq, n)
        assert r.stats().free == size


def test_read_small_withholds_only_while_more_is_published(
    shm_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the compiled path: one frame a call, bytes batched while more are posted."""
    monkeypatch.setattr(zb_reader, "_TAKE_RUN", None)
    size = 64 * 1024  # withholds up to size // 64 bytes
    with Reader(shm_name, BufferConfig(0, size), timeout=2.0) as r, Writer(shm_name) as w:
        for i in range(1, 6):
            w.write(pattern(i, 20))
        for i in range(1, 5):
            assert r.read_small(64) == pattern(i, 20)
            assert r.stats().free == size - 5 * (20 + HDR)  # withheld: more to read
        assert r.read_small(64) == pattern(5, 20)
        assert r.stats().free == size  # the last one gives everything back
        for i in range(6, 6 + 40):
            w.write(pattern(i, 20))
        for i in range(6, 6 + 39):
            assert r.read_small(64) == pattern(i, 20)
            assert size - r.stats().free <= 40 * (20 + HDR)
            assert size - r.stats().free - (6 + 39 - i) * (20 + HDR) < size // 64  # bounded
        w.write(pattern(46, 20))
        assert r.read_small(64) == pattern(45, 20)
        assert 0 <= size - r.stats().free - (20 + HDR) < size // 64  # 46 unread
        assert r.read_small(64) == pattern(46, 20)
        assert r.stats().free == size
        w.write(pattern(47, 20))
        w.write(pattern(48, 20))
        assert r.read_small(64) == pattern(47, 20)
        assert r.stats().free == size - 2 * (20 + HDR)
        assert r.read_small(64) == pattern(48, 20)
        with pytest.raises(E.Timeout):
            r.read_small(64, timeout=0)
        assert r.stats().free == size


def test_reserving_again_after_abort_keeps_the_place(shm_name: str) -> None:
    """A rewind to offset 0 (empty ring, large frame) sticks across abort() and reserve() until
    the next publish, and so does a placement made while a frame was held: a re-reserved frame
    stays where arrays made in it live, whatever the reader released meanwhile."""
    big = REWIND_MIN
    with Reader(shm_name, BufferConfig(0, 8 * big), timeout=2.0) as r, Writer(shm_name) as w:
        w.write(b"x" * (3 * big))
        r.read().release()  # ring empty, write_pos 3 * big + 16
        w.reserve(big)
        assert w.reserved_offset == r._core.base + HDR  # rewound to 0
        w.abort()
        w.reserve(4 * big)  # does not fit below write_pos: placed there
        assert w.reserved_offset == r._core.base + 3 * big + 16 + HDR
        w.abort()
        w.reserve(big)  # the first placement again
        assert w.reserved_offset == r._core.base + HDR
        w.commit()
        held = r.read()
        w.reserve(big)  # a frame is held: no rewind
        at = w.reserved_offset
        assert at == r._core.base + big + 2 * HDR
        w.abort()
        held.release()  # now the ring is empty, but the aborted placement is kept
        w.reserve(big)
        assert w.reserved_offset == at
        w.commit()
        with r.read() as f:
            assert f.offset == at
        w.reserve(big)  # after a publish the ring decides afresh: empty, so back to 0
        assert w.reserved_offset == r._core.base + HDR
        w.abort()


def test_write_accepts_any_contiguous_buffer(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    arr = np.arange(10, dtype=np.float64)
    w.write(arr)
    w.write(memoryview(bytearray(b"abc")))
    w.write(np.arange(12, dtype=np.int32).reshape(3, 4))
    with r.read() as f:
        assert np.array_equal(np.frombuffer(bytes(f.data), np.float64), arr)
    with r.read() as f:
        assert bytes(f.data) == b"abc"
    with r.read() as f:
        assert f.size == 48
    with pytest.raises(TypeError):
        w.write(np.arange(10)[::2])
    with pytest.raises(E.InvalidFrameSize):
        w.write(b"")


def test_two_processes_our_writer_to_our_reader(shm_name: str) -> None:
    sizes = _sizes(seed=2, count=1500, ring=P_SMALL)
    with Reader(shm_name, BufferConfig(64, P_SMALL), timeout=20.0) as r:
        child = Child(
            f"""
            w = Writer({shm_name!r}, timeout=20.0)
            w.set_metadata(b"stream-v1")
            for seq, n in enumerate({sizes!r}, 1):
                if seq % 3:
                    w.write(pattern(seq, n))
                else:
                    buf = w.reserve(n)
                    buf[:] = pattern(seq, n)
                    w.commit()
            say("done")
            w.close()
            """
        )
        held: list[Frame] = []
        rng = random.Random(3)
        for seq, n in enumerate(sizes, 1):
            try:
                f = r.read(timeout=0)
            except E.Timeout:
                # the writer may be waiting for the space we hold: give it all back first
                while held:
                    held.pop(rng.randrange(len(held))).release()
                f = r.read()
            assert (f.sequence, f.size) == (seq, n)
            assert bytes(f.data) == pattern(seq, n)
            held.append(f)
            # hold a few frames at a time and release them in a random order
            while len(held) > rng.randint(0, 3):
                for h in held:
                    assert bytes(h.data) == pattern(h.sequence, h.size), "held frame overwritten"
                held.pop(rng.randrange(len(held))).release()
        assert r.metadata is not None and bytes(r.metadata) == b"stream-v1"
        child.expect("done")
        child.finish()
        for h in held:
            h.release()
        with pytest.raises(E.WriterDead):
            r.read(timeout=5.0)
        # both sides changed the free counter concurrently all along: no update was lost
        assert r.stats().free == P_SMALL
        assert field(shm_name, L.OFF_WRITTEN_COUNT) == field(shm_name, L.OFF_READ_COUNT)


def test_two_processes_our_reader_in_a_child(shm_name: str) -> None:
    sizes = _sizes(seed=4, count=300, ring=P_SMALL)
    child = Child(
        f"""
        r = Reader({shm_name!r}, BufferConfig(64, {P_SMALL}), timeout=20.0)
        say("ready")
        for seq, n in enumerate({sizes!r}, 1):
            with r.read() as f:
                assert (f.sequence, f.size) == (seq, n), (f.sequence, f.size, seq, n)
                assert bytes(f.data) == pattern(seq, n), seq
        assert bytes(r.metadata) == b"m"
        try:
            r.read(timeout=10.0)
        except E.WriterDead:
            say("ok")
        r.close()
        """
    )
    child.expect("ready")
    with Writer(shm_name, timeout=20.0) as w:
        w.set_metadata(b"m")
        for seq, n in enumerate(sizes, 1):
            w.write(pattern(seq, n))
    child.expect("ok")
    child.finish()


def _sizes(seed: int, count: int, ring: int) -> list[int]:
    """Mixed sizes, including frames that leave tails of 0, 1..15 and >= 16 bytes."""
    rng = random.Random(seed)
    sizes = []
    pos = 0
    for _ in range(count):
        if rng.random() < 0.3:
            # end exactly k bytes before the end of the ring (k < 16 forces a marker-less wrap)
            k = rng.choice([0, 1, 8, 15, 16, 40])
            total = ring - pos - k if ring - pos - k > HDR else rng.randint(HDR + 1, 200)
        else:
            total = rng.randint(HDR + 1, ring // 2)
        total = min(total, ring // 2) if pos else min(total, ring - 8)
        total = max(total, HDR + 1)
        sizes.append(total - HDR)
        pos = pos + total if ring - pos >= total else total
        if pos == ring:
            pos = ring  # at the end: the next frame wraps without waste
    return sizes


# --- metadata ------------------------------------------------------------------------------------


def test_metadata_once(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    assert r.metadata is None
    w.set_metadata(np.arange(4, dtype=np.uint16))
    assert r.metadata is not None and bytes(r.metadata) == np.arange(4, dtype=np.uint16).tobytes()
    assert r.metadata.readonly
    with pytest.raises(E.MetadataAlreadyWritten):
        w.set_metadata(b"again")
    with pytest.raises(E.MetadataAlreadyWritten):
        Writer.__new__(Writer)  # (a second writer on the same buffer is refused below)
        raise E.MetadataAlreadyWritten()
    assert field(r.name, L.OFF_METADATA_WRITTEN) == 8 + 8
    assert field(r.name, L.OFF_METADATA_FREE) == 256 - 16


def test_metadata_empty_and_too_large(shm_name: str) -> None:
    with Reader(shm_name, BufferConfig(64, 256)) as r, Writer(shm_name) as w:
        with pytest.raises(E.MetadataTooLarge):
            w.set_metadata(b"x" * 57)
        w.set_metadata(b"")
        assert r.metadata is not None and bytes(r.metadata) == b""


def test_metadata_size_zero_is_allowed(shm_name: str) -> None:
    with Reader(shm_name, BufferConfig(0, 256)) as r, Writer(shm_name) as w:
        assert os.stat(f"/dev/shm/{shm_name}").st_size == 128 + 256
        with pytest.raises(E.MetadataTooLarge):
            w.set_metadata(b"")
        w.write(b"frame")
        with r.read() as f:
            assert f.offset == 128 + 16
            assert bytes(f.data) == b"frame"


# --- wrap-around ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [0, 1, 8, 15, 16, 17, 100])
def test_wrap_with_every_kind_of_tail(pair: tuple[Reader, Writer], tail: int) -> None:
    """A frame ends `tail` bytes before the end of the ring; the next one must wrap (with a
    marker when tail >= 16, without one when 0 < tail < 16, and with no wrap at all at 0)."""
    r, w = pair
    name = r.name
    first = P_SMALL - tail - HDR - 300
    w.write(pattern(1, 300 - HDR))
    w.write(pattern(2, first))
    for seq, n in ((1, 300 - HDR), (2, first)):
        with r.read() as f:
            assert bytes(f.data) == pattern(seq, n)
    assert field(name, L.OFF_WRITE_POS) == P_SMALL - tail
    n3 = 200 if tail < 100 else 150
    w.write(pattern(3, n3))
    with raw_oieb(name) as mm:
        if tail >= 16:
            assert L.HEADER.unpack_from(mm, 128 + 256 + P_SMALL - tail) == (0, 0)
    assert field(name, L.OFF_WRITE_POS) == HDR + n3
    # entries written: two frames, the third, plus a wrap when bytes were wasted
    assert field(name, L.OFF_WRITTEN_COUNT) == 3 + (1 if tail else 0)
    with r.read() as f:
        assert f.offset == 128 + 256 + HDR
        assert bytes(f.data) == pattern(3, n3)
    assert field(name, L.OFF_READ_COUNT) == field(name, L.OFF_WRITTEN_COUNT)
    assert field(name, L.OFF_READ_POS) == HDR + n3
    assert r.stats().free == P_SMALL


def test_frames_exactly_filling_the_ring_then_more(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    for seq in range(1, 5):
        w.write(pattern(seq, 256 - HDR), timeout=0)
    assert w.stats().free == 0
    with pytest.raises(E.BufferFull):
        w.write(b"x", timeout=0)
    for seq in range(1, 5):
        with r.read() as f:
            assert bytes(f.data) == pattern(seq, 256 - HDR)
    w.write(pattern(5, 100), timeout=0)
    with r.read() as f:
        assert f.offset == 128 + 256 + HDR
        assert bytes(f.data) == pattern(5, 100)


def test_frame_too_large_raises_at_once(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    with pytest.raises(E.FrameTooLarge):
        w.write(b"x" * (P_SMALL - HDR + 1), timeout=None)
    with pytest.raises(E.FrameTooLarge):
        w.reserve(P_SMALL, timeout=None)
    w.write(b"x" * (P_SMALL - HDR), timeout=0)  # exactly the ring
    r.read().release()
    # from offset 200 a 900-byte frame needs the 824-byte tail and 900 bytes at once
    w.write(b"y" * (200 - HDR))
    r.read().release()
    with pytest.raises(E.FrameTooLarge, match="twice the largest frame"):
        w.write(b"z" * (900 - HDR), timeout=None)
    w.write(b"z" * (P_SMALL // 2 - HDR), timeout=0)


# --- holding frames ------------------------------------------------------------------------------


def test_hold_several_release_out_of_order_writer_waits(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    for seq in range(1, 5):
        w.write(pattern(seq, 256 - HDR))
    a, b, c, d = (r.read() for _ in range(4))
    for f in (d, b, c):
        f.release()
    assert r.stats().frames_held == 1
    # b, c, d are released but a (older) is held: no space may go back yet
    assert r.stats().free == 0
    with pytest.raises(E.BufferFull):
        w.write(b"x", timeout=0)
    with pytest.raises(E.BufferFull):
        w.write(b"x", timeout=0.2)
    assert bytes(a.data) == pattern(1, 256 - HDR)
    a.release()
    assert r.stats().free == P_SMALL
    w.write(pattern(5, 3 * 256 - HDR), timeout=0)
    with r.read() as f:
        assert bytes(f.data) == pattern(5, 3 * 256 - HDR)


def test_writer_in_another_process_blocks_instead_of_overwriting(shm_name: str) -> None:
    count = 60
    with Reader(shm_name, BufferConfig(0, P_SMALL), timeout=10.0) as r:
        child = Child(
            f"""
            w = Writer({shm_name!r}, timeout=None)
            for seq in range(1, {count} + 1):
                w.write(pattern(seq, 100))
            say("done")
            """
        )
        first = r.read()
        seen = 1
        with pytest.raises(E.Timeout):  # the writer is stuck behind `first`
            while True:
                with r.read(timeout=1.0) as f:
                    seen += 1
                    assert bytes(f.data) == pattern(seen, 100)
        assert seen < count
        assert bytes(first.data) == pattern(1, 100)
        first.release()
        for seq in range(seen + 1, count + 1):
            with r.read() as f:
                assert bytes(f.data) == pattern(seq, 100)
        child.expect("done")
        child.finish()


def test_garbage_collected_frame_is_released(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    for seq in range(1, 5):
        w.write(pattern(seq, 256 - HDR))
    frames = [r.read() for _ in range(4)]
    with pytest.raises(E.BufferFull):
        w.write(b"x", timeout=0)
    del frames
    gc.collect()
    assert r.stats().frames_held == 0
    w.write(b"x", timeout=0)


def test_frame_in_a_reference_cycle_is_released_by_the_collector(
    pair: tuple[Reader, Writer],
) -> None:
    r, w = pair
    w.write(b"abc")
    holder: list[object] = [r.read()]
    holder.append(holder)
    del holder
    gc.collect()
    assert r.stats().frames_held == 0


def test_release_while_exported_raises_and_keeps_the_frame(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(pattern(1, 256 - HDR))
    f = r.read()
    arr = np.frombuffer(f.data, dtype=np.uint8)
    with pytest.raises(BufferError):
        f.release()
    assert not f.released
    assert r.stats().frames_held == 1
    assert arr.tobytes() == pattern(1, 256 - HDR)
    del arr
    with pytest.raises(ValueError):
        bytes(f.data)  # the first try released `data` itself; only the slot stayed held
    f.release()
    assert f.released
    assert r.stats().frames_held == 0
    with pytest.raises(ValueError):
        bytes(f.data)
    f.release()  # twice: no-op


def test_dropped_frame_with_live_views_waits_for_them(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(pattern(1, 256 - HDR))
    f = r.read()
    arr = np.frombuffer(f.data, dtype=np.uint8)
    del f  # the Frame is collected while the array still points into the ring
    gc.collect()
    assert r.stats().frames_held == 1
    w.write(b"x" * (P_SMALL - 256 - HDR), timeout=0)
    with pytest.raises(E.BufferFull):
        w.write(b"y", timeout=0)  # the array's bytes are not handed back to the writer
    assert arr.tobytes() == pattern(1, 256 - HDR)
    del arr
    assert r.stats().frames_held == 0  # stats() (like read()) retries held-back releases
    r.read().release()
    assert r.stats().free == P_SMALL


def test_slices_and_memoryviews_of_data_also_pin_the_frame(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    for make in (lambda d: d[10:20], memoryview, lambda d: d.cast("B", (2, 15))):
        w.write(pattern(1, 30))
        f = r.read()
        view = make(f.data)
        with pytest.raises(BufferError, match="still in use"):
            f.release()
        assert not f.released and r.stats().frames_held == 1
        assert bytes(view) in pattern(1, 30)
        del view
        f.release()
        assert r.stats().frames_held == 0


def test_data_outliving_its_dropped_frame_stays_valid(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(b"abc")
    w.write(b"def")
    assert bytes(r.read().data) == b"abc"  # the Frame dies before bytes() runs
    data = r.read().data
    assert r.stats().frames_held == 1  # the first went back at the next call; `data` pins one
    assert bytes(data) == b"def"
    del data
    assert r.stats().frames_held == 0
    assert r.stats().free == P_SMALL


def test_frame_context_manager_and_repr(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(b"hello")
    with r.read() as f:
        assert "5 bytes" in repr(f)
    assert f.released and "released" in repr(f)


# --- reserve / commit / abort --------------------------------------------------------------------


def test_reserve_commit_zero_copy(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    buf = w.reserve(100)
    assert not buf.readonly and buf.nbytes == 100
    assert w.reserved_address % 64 == w.reserved_offset % 64
    ctypes.memmove(w.reserved_address, pattern(1, 100), 100)  # write by address
    w.commit()
    with r.read() as f:
        assert bytes(f.data) == pattern(1, 100)
    buf = w.reserve(100)
    buf[:40] = pattern(2, 40)
    offset = w.reserved_offset
    w.commit(40)
    with r.read() as f:
        assert (f.size, f.offset) == (40, offset)
        assert bytes(f.data) == pattern(2, 40)
    with pytest.raises(ValueError):
        buf[0] = 1  # the view died with the commit


def test_abort_leaves_no_trace(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(b"first")
    with raw_oieb(r.name) as mm:
        before = bytes(mm[: L.OIEB_SIZE])
    buf = w.reserve(300)
    buf[:] = b"z" * 300
    w.abort()
    with raw_oieb(r.name) as mm:
        assert bytes(mm[: L.OIEB_SIZE]) == before
    with pytest.raises(E.ReservationError):
        w.abort()
    w.write(b"second")
    assert bytes(r.read().data) == b"first"
    with r.read() as f:
        assert (f.sequence, bytes(f.data)) == (2, b"second")


def test_reservation_misuse(pair: tuple[Reader, Writer]) -> None:
    _, w = pair
    with pytest.raises(E.ReservationError):
        w.commit()
    with pytest.raises(E.ReservationError):
        _ = w.reserved_offset
    w.reserve(10)
    with pytest.raises(E.ReservationError):
        w.reserve(10)
    with pytest.raises(E.ReservationError):
        w.write(b"x")
    with pytest.raises(E.InvalidFrameSize):
        w.commit(0)
    with pytest.raises(E.InvalidFrameSize):
        w.commit(11)
    w.commit(10)
    with pytest.raises(E.InvalidFrameSize):
        w.reserve(0)


# --- timeouts ------------------------------------------------------------------------------------


def test_read_timeouts_with_a_live_writer(pair: tuple[Reader, Writer]) -> None:
    r, _ = pair
    with pytest.raises(E.Timeout) as info:
        r.read(timeout=0)
    assert "alive" in str(info.value)
    with pytest.raises(E.Timeout):
        r.read(timeout=0.1)
    with pytest.raises(TimeoutError):
        r.read(timeout=0)


def test_read_with_no_writer_yet_times_out(shm_name: str) -> None:
    with (
        Reader(shm_name, BufferConfig(0, 256), timeout=0.1) as r,
        pytest.raises(E.Timeout, match="no writer has connected"),
    ):
        r.read()


def test_write_timeouts_with_a_live_reader(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(b"x" * (P_SMALL - HDR), timeout=0)
    with pytest.raises(E.BufferFull) as info:
        w.write(b"y", timeout=0)
    assert info.value.timeout == 0  # type: ignore[attr-defined]
    with pytest.raises(E.BufferFull):
        w.reserve(1, timeout=0.1)
    assert w.stats().blocked_seconds > 0
    r.read().release()
    w.write(b"y", timeout=0)


@pytest.mark.parametrize("bad", [-1, "1", True])
def test_bad_timeouts_are_refused(pair: tuple[Reader, Writer], bad: object) -> None:
    r, w = pair
    w.write(b"x" * (P_SMALL - HDR))
    with pytest.raises(E.InvalidConfig):
        w.write(b"y", timeout=bad)  # type: ignore[arg-type]
    r.read().release()
    with pytest.raises(E.InvalidConfig):
        r.read(timeout=bad)  # type: ignore[arg-type]


# --- peers going away ----------------------------------------------------------------------------


def test_killed_writer_is_noticed_while_blocked_forever(shm_name: str) -> None:
    with Reader(shm_name, BufferConfig(0, P_SMALL)) as r:
        child = Child(
            f"""
            w = Writer({shm_name!r})
            w.write(b"one"); w.write(b"two")
            say("ready")
            time.sleep(600)
            """
        )
        child.expect("ready")
        assert [bytes(r.read().data) for _ in range(2)] == [b"one", b"two"]
        killer = threading.Timer(0.3, child.kill)
        killer.start()
        with pytest.raises(E.WriterDead, match="died"):
            r.read(timeout=None)
        killer.join()


def test_frames_of_a_killed_writer_are_still_read_first(shm_name: str) -> None:
    with Reader(shm_name, BufferConfig(0, P_SMALL)) as r:
        child = Child(
            f"""
            w = Writer({shm_name!r})
            for seq in range(1, 4):
                w.write(pattern(seq, 50))
            say("ready")
            time.sleep(600)
            """
        )
        child.expect("ready")
        child.kill()
        for seq in range(1, 4):
            assert bytes(r.read(timeout=5.0).data) == pattern(seq, 50)
        with pytest.raises(E.WriterDead):
            r.read(timeout=5.0)


def test_closed_writer_gives_writer_dead_after_the_last_frame(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(b"last")
    w.close()
    assert field(r.name, L.OFF_WRITER_PID) == 0
    assert bytes(r.read(timeout=0).data) == b"last"
    with pytest.raises(E.WriterDead, match="closed"):
        r.read(timeout=0)
    with pytest.raises(E.WriterDead):
        r.read(timeout=None)


def test_killed_reader_is_noticed_by_a_blocked_writer(shm_name: str) -> None:
    child = Child(
        f"""
        r = Reader({shm_name!r}, BufferConfig(0, {P_SMALL}))
        say("ready")
        time.sleep(600)
        """
    )
    child.expect("ready")
    try:
        with Writer(shm_name) as w:
            w.write(b"x" * (P_SMALL - HDR), timeout=0)
            with pytest.raises(E.BufferFull):
                w.write(b"x", timeout=0)
            killer = threading.Timer(0.3, child.kill)
            killer.start()
            with pytest.raises(E.ReaderDead, match="died"):
                w.write(b"x", timeout=None)
            killer.join()
            with pytest.raises(E.ReaderDead):
                w.write(b"x", timeout=0)
    finally:
        child.kill()
        reclaim(shm_name)


def test_closed_reader_gives_reader_dead(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    r.close()
    with pytest.raises(E.ReaderDead, match="closed"):
        w.write(b"x")
    with pytest.raises(E.ReaderDead):
        w.reserve(1)


def test_reader_closing_during_a_reservation_drops_the_frame(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.reserve(10)
    r.close()
    with pytest.raises(E.ReaderDead):
        w.commit()


# --- names, attach, ownership --------------------------------------------------------------------


def test_writer_already_connected(pair: tuple[Reader, Writer], shm_name: str) -> None:
    with pytest.raises(E.WriterAlreadyConnected):
        Writer(shm_name)


def test_writer_in_another_live_process_refuses_us_and_a_dead_one_is_taken_over(
    shm_name: str,
) -> None:
    with Reader(shm_name, BufferConfig(0, P_SMALL), timeout=5.0) as r:
        child = Child(
            f"""
            w = Writer({shm_name!r})
            w.write(pattern(1, 10)); w.write(pattern(2, 10))
            say("ready")
            time.sleep(600)
            """
        )
        child.expect("ready")
        with pytest.raises(E.WriterAlreadyConnected, match=str(child.pid)):
            Writer(shm_name)
        child.kill()
        assert field(shm_name, L.OFF_WRITER_PID) == child.pid
        with Writer(shm_name) as w:  # the dead writer's role is taken over
            assert field(shm_name, L.OFF_WRITER_PID) == os.getpid()
            w.write(pattern(1, 20))  # sequences restart at 1 per writer
            assert [r.read().sequence for _ in range(3)] == [1, 2, 1]


def test_buffer_not_found(shm_name: str) -> None:
    with pytest.raises(E.BufferNotFound, match="start the reader"):
        Writer(shm_name)


def test_buffer_exists_for_a_live_reader(pair: tuple[Reader, Writer], shm_name: str) -> None:
    with pytest.raises(E.BufferExists):
        Reader(shm_name)
    assert all(resources(shm_name).values())


def test_buffer_exists_for_a_live_reader_in_another_process(shm_name: str) -> None:
    child = Child(
        f"""
        r = Reader({shm_name!r}, BufferConfig(0, 256))
        say("ready")
        sys.stdin.read() if False else time.sleep(600)
        """
    )
    child.expect("ready")
    try:
        inode = os.stat(f"/dev/shm/{shm_name}").st_ino
        with pytest.raises(E.BufferExists):
            Reader(shm_name)
        with pytest.raises(E.BufferExists):
            Reader(unique_name(), BufferConfig(0, 64)).close()
            Reader(shm_name)
        assert os.stat(f"/dev/shm/{shm_name}").st_ino == inode  # nothing of it was touched
    finally:
        child.kill()
        reclaim(shm_name)


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "x" * 300, "ü"])
def test_invalid_names(bad: str) -> None:
    with pytest.raises(E.InvalidName):
        Reader(bad)
    with pytest.raises(E.InvalidName):
        Writer(bad)


@pytest.mark.parametrize(
    "config", [(-1, 64), (0, 0), (64, -5), (1.5, 64), (True, 64)], ids=lambda c: repr(c)
)
def test_invalid_configs(config: tuple[object, object]) -> None:
    with pytest.raises(E.InvalidConfig):
        BufferConfig(*config)  # type: ignore[arg-type]


def test_sizes_are_rounded_up_to_64(shm_name: str) -> None:
    with Reader(shm_name, BufferConfig(1, 65)) as r:
        assert os.stat(f"/dev/shm/{shm_name}").st_size == 128 + 64 + 128
        assert r.stats().capacity == 128
        assert field(shm_name, L.OFF_METADATA_SIZE) == 64


# --- creation, cleanup and lifetime --------------------------------------------------------------


def test_close_unlinks_everything_and_is_idempotent(shm_name: str) -> None:
    r = Reader(shm_name, BufferConfig(0, 256))
    w = Writer(shm_name)
    assert all(resources(shm_name).values())
    w.close()
    w.close()
    assert all(resources(shm_name).values()), "attaching or detaching must never unlink"
    r.close()
    r.close()
    assert not any(resources(shm_name).values())
    with pytest.raises(E.TransportClosed):
        r.read()
    with pytest.raises(E.TransportClosed):
        w.write(b"x")


def test_modes_are_0600(pair: tuple[Reader, Writer], shm_name: str) -> None:
    for path in (
        f"/dev/shm/{shm_name}",
        f"/dev/shm/sem.sem-w-{shm_name}",
        f"/dev/shm/sem.sem-r-{shm_name}",
        L.lock_path(shm_name),
    ):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_initial_oieb(pair: tuple[Reader, Writer], shm_name: str) -> None:
    with raw_oieb(shm_name) as mm:
        values = L.OIEB_STRUCT.unpack_from(mm, 0)
    assert values[:5] == (128, 1, 0, 0, 0)
    assert values[5:9] == (256, 256, 0, P_SMALL)  # M, metadata free, written, P
    assert values[9:15] == (P_SMALL, 0, 0, 0, 0, os.getpid())  # free, wp, rp, counts, writer
    assert values[15] == os.getpid()
    assert values[16:] == (0, 0, 0, 0)


def test_frames_outlive_reader_close(shm_name: str) -> None:
    r = Reader(shm_name, BufferConfig(0, 256))
    with Writer(shm_name) as w:
        w.write(b"kept")
        w.write(b"also")
    f = r.read()
    g = r.read()
    r.close()
    assert not any(resources(shm_name).values())
    assert bytes(f.data) == b"kept"
    f.release()
    del r
    gc.collect()
    assert bytes(g.data) == b"also"
    g.release()


def test_stale_leftovers_of_a_killed_reader_are_cleaned(shm_name: str) -> None:
    child = Child(
        f"""
        r = Reader({shm_name!r}, BufferConfig(0, 256))
        say("ready")
        time.sleep(600)
        """
    )
    child.expect("ready")
    child.kill()
    assert all(resources(shm_name).values())
    other = unique_name()
    with Reader(other, BufferConfig(0, 64)):  # any new reader sweeps every stale lock
        assert not any(resources(shm_name).values())
    child2 = Child(
        f"""
        r = Reader({shm_name!r}, BufferConfig(0, 256))
        say("ready")
        time.sleep(600)
        """
    )
    child2.expect("ready")
    child2.kill()
    with Reader(shm_name, BufferConfig(0, 512)) as r, Writer(shm_name) as w:  # same name reused
        w.write(b"fresh")
        assert bytes(r.read().data) == b"fresh"
    assert not any(resources(shm_name).values())


def test_leftover_semaphores_without_lock_are_replaced(shm_name: str) -> None:
    """The reference's Reader.close() leaves both semaphores behind (its bug 5)."""
    import posix_ipc

    for sem_name in (L.sem_w_name(shm_name), L.sem_r_name(shm_name)):
        posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, initial_value=3).close()
    with Reader(shm_name, BufferConfig(0, 256)) as r, Writer(shm_name) as w:
        with pytest.raises(E.Timeout):
            r.read(timeout=0)  # a stale post would have shown up as a bogus frame
        w.write(b"ok")
        assert bytes(r.read().data) == b"ok"


def test_shm_full_error_before_allocating(shm_name: str) -> None:
    available = _shm.shm_available()
    assert available is not None
    with pytest.raises(E.ShmFullError) as info:
        Reader(shm_name, BufferConfig(0, available + (1 << 30)))
    message = str(info.value)
    assert "--shm-size" in message and "--ipc=host" in message
    assert f"{info.value.needed:,}" in message  # type: ignore[attr-defined]
    assert info.value.available is not None  # type: ignore[attr-defined]
    assert not any(resources(shm_name).values())


def test_fallocate_enospc_is_shm_full(shm_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_shm.os, "posix_fallocate", no_space)
    with pytest.raises(E.ShmFullError, match="--shm-size"):
        Reader(shm_name, BufferConfig(0, 256))
    assert not any(resources(shm_name).values())


@pytest.mark.parametrize("step", ["create_semaphore", "address_of"])
def test_creation_is_failure_atomic(
    shm_name: str, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    real = getattr(_shm, step)
    calls = []

    def flaky(*args: object) -> object:
        calls.append(args)
        if step == "address_of" or len(calls) == 2:
            raise RuntimeError(f"injected failure in {step}")
        return real(*args)

    monkeypatch.setattr(_shm, step, flaky)
    with pytest.raises(RuntimeError, match="injected"):
        Reader(shm_name, BufferConfig(0, 256))
    assert not any(resources(shm_name).values())
    monkeypatch.setattr(_shm, step, real)
    Reader(shm_name, BufferConfig(0, 256)).close()


def test_nothing_registered_with_the_resource_tracker(shm_name: str) -> None:
    child = Child(
        f"""
        from multiprocessing import resource_tracker
        r = Reader({shm_name!r}, BufferConfig(0, 256))
        w = Writer({shm_name!r})
        w.write(b"x"); r.read().release()
        w.close(); r.close()
        say("tracker", resource_tracker._resource_tracker._pid)
        """
    )
    assert child.expect("tracker") == ["None"]
    child.finish()


def test_a_forked_child_never_unlinks_its_parents_buffer(shm_name: str) -> None:
    r = Reader(shm_name, BufferConfig(0, 256))
    w = Writer(shm_name)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            w.close()
            r.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert all(resources(shm_name).values())
    assert field(shm_name, L.OFF_READER_PID) == os.getpid()
    assert field(shm_name, L.OFF_WRITER_PID) == os.getpid()
    w.write(b"still here")
    assert bytes(r.read().data) == b"still here"
    w.close()
    r.close()


def test_stats(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(b"a" * 100)
    w.write(b"b" * 50)
    ws = w.stats()
    assert (ws.capacity, ws.frames, ws.bytes, ws.frames_unread) == (P_SMALL, 2, 150, 2)
    assert ws.used == 182 and ws.free == P_SMALL - 182
    f = r.read()
    rs = r.stats()
    assert (rs.frames, rs.bytes, rs.frames_held, rs.bytes_held) == (1, 100, 1, 116)
    assert rs.used == 182 and rs.utilisation == pytest.approx(182 / P_SMALL)
    with pytest.raises(AttributeError):
        rs.frames = 3  # type: ignore[misc]
    f.release()
    assert r.stats().used == 66


# --- corruption ----------------------------------------------------------------------------------


def test_corrupt_frame_length_is_caught_and_sticks(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(b"x" * 10)
    with raw_oieb(r.name) as mm:
        L.HEADER.pack_into(mm, 128 + 256, 1 << 62, 1)
    with pytest.raises(E.CorruptBuffer, match="claims"):
        r.read(timeout=0)
    w.write(b"y")
    with pytest.raises(E.CorruptBuffer):
        r.read(timeout=0)


def test_corrupt_marker_and_sequences(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    base = 128 + 256
    w.write(b"x" * 10)
    with raw_oieb(r.name) as mm:
        L.HEADER.pack_into(mm, base, 10, 7)
    with pytest.raises(E.SequenceError) as info:
        r.read(timeout=0)
    assert (info.value.expected, info.value.got) == (1, 7)  # type: ignore[attr-defined]
    w.write(b"z")  # seq 2 < expected 8: a repeat
    with pytest.raises(E.SequenceError):
        r.read(timeout=0)
    assert r.stats().frames_held == 0 and r.stats().free == P_SMALL  # skipped frames went back
    w.write(b"w")
    with raw_oieb(r.name) as mm:
        L.HEADER.pack_into(mm, base + 26 + 17, 0, 99)  # a "marker" with a sequence number
    with pytest.raises(E.CorruptBuffer, match="marker"):
        r.read(timeout=0)


def test_marker_at_offset_zero_is_corrupt(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.write(b"x")
    with raw_oieb(r.name) as mm:
        L.HEADER.pack_into(mm, 128 + 256, 0, 0)
    with pytest.raises(E.CorruptBuffer):
        r.read(timeout=0)


def test_corrupt_metadata_length(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    w.set_metadata(b"meta")
    with raw_oieb(r.name) as mm:
        L.U64.pack_into(mm, 128, 1 << 40)
    with pytest.raises(E.CorruptBuffer):
        _ = r.metadata


def test_corrupt_free_counter_stops_the_writer(pair: tuple[Reader, Writer]) -> None:
    r, w = pair
    with raw_oieb(r.name) as mm:
        L.U64.pack_into(mm, L.OFF_PAYLOAD_FREE, P_SMALL + 64)
    with pytest.raises(E.CorruptBuffer, match="payload_free_bytes"):
        w.write(b"x", timeout=0)


@pytest.mark.parametrize(
    ("offset", "value", "error"),
    [
        (L.OFF_OIEB_SIZE, 64, E.IncompatibleBuffer),
        (L.OFF_VERSION, 2, E.IncompatibleBuffer),
        (L.OFF_PAYLOAD_SIZE, 1 << 40, E.CorruptBuffer),
        (L.OFF_PAYLOAD_SIZE, 100, E.CorruptBuffer),
        (L.OFF_METADATA_SIZE, 1 << 63, E.CorruptBuffer),
        (L.OFF_WRITE_POS, P_SMALL + 1, E.CorruptBuffer),
        (L.OFF_READ_POS, P_SMALL, E.CorruptBuffer),
        (L.OFF_PAYLOAD_FREE, 1 << 64 - 1, E.CorruptBuffer),
        (L.OFF_METADATA_WRITTEN, 1 << 20, E.CorruptBuffer),
        (L.OFF_READER_PID, 0, E.ReaderDead),
        (L.OFF_READER_PID, (1 << 64) - 1, E.ReaderDead),
    ],
)
def test_writer_refuses_to_attach_to_a_corrupt_oieb(
    shm_name: str, offset: int, value: int, error: type[Exception]
) -> None:
    with Reader(shm_name, BufferConfig(256, P_SMALL)):
        with raw_oieb(shm_name) as mm:
            if offset == L.OFF_VERSION:
                mm[offset] = value
            elif offset == L.OFF_OIEB_SIZE:
                mm[0:4] = value.to_bytes(4, "little")
            else:
                L.U64.pack_into(mm, offset, value)
        with pytest.raises(error):
            Writer(shm_name)


_U64S = st.one_of(
    st.sampled_from(
        [0, 1, 15, 16, 17, P_SMALL - 16, P_SMALL - 15, P_SMALL, 1 << 63, (1 << 64) - 1]
    ),
    st.integers(0, (1 << 64) - 1),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=_U64S, seq=_U64S, at_wrap=st.booleans())
def test_garbage_frame_headers_only_raise_transport_errors(n: int, seq: int, at_wrap: bool) -> None:
    name = unique_name("g")
    with Reader(name, BufferConfig(0, P_SMALL)) as r, Writer(name) as w:
        base = 128
        if at_wrap:  # put the garbage where the reader expects a header after a wrap
            w.write(b"a" * (P_SMALL - 100 - HDR))
            r.read().release()
            w.write(b"b" * 200)  # wraps: marker at P - 100, frame at 0
            pos = 0
        else:
            w.write(b"a" * 30)
            pos = 0
        with raw_oieb(name) as mm:
            L.HEADER.pack_into(mm, base + pos, n, seq)
        try:
            with r.read(timeout=0) as f:
                assert f.size == n and 0 < n <= P_SMALL - HDR
                assert f.offset + f.size <= 128 + P_SMALL
        except (E.CorruptBuffer, E.SequenceError):
            pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(offset=st.sampled_from(range(0, L.OIEB_SIZE, 8)), value=_U64S)
def test_garbage_in_any_oieb_field_only_raises_transport_errors(offset: int, value: int) -> None:
    name = unique_name("o")
    with Reader(name, BufferConfig(64, P_SMALL), timeout=0) as r:
        with raw_oieb(name) as mm:
            L.U64.pack_into(mm, offset, value)
        try:
            with Writer(name, timeout=0) as w:
                w.set_metadata(b"m")
                w.write(b"frame")
                w.write(b"x" * 600)
        except E.TransportError:
            pass
        try:
            with contextlib.suppress(E.Timeout, E.WriterDead, E.SequenceError):
                for _ in range(3):
                    with r.read(timeout=0) as f:
                        assert f.offset + f.size <= 128 + 64 + P_SMALL
            _ = r.metadata
            r.stats()
        except E.TransportError:
            pass


def test_paths() -> None:
    assert L.lock_path("abc") == Path("/tmp/zerobuffer/abc.lock")
    assert (L.shm_name("abc"), L.sem_w_name("abc"), L.sem_r_name("abc")) == (
        "/abc",
        "/sem-w-abc",
        "/sem-r-abc",
    )


def test_no_atomics_is_a_clear_error(shm_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shm, "_compiled", None)
    monkeypatch.setattr(_shm, "fetch_add", None)
    assert _shm.atomics_backend() == ""
    with pytest.raises(E.AtomicsUnavailable, match="apt-get install libatomic1"):
        Reader(shm_name)
    with pytest.raises(E.AtomicsUnavailable):
        Writer(shm_name)
    assert not any(resources(shm_name).values())


def test_compiled_atomics_are_built() -> None:
    """The install compiles transports/_native.c (the fast path the benchmarks measure); if this
    fails, the build could not find a C compiler and the ring runs on libatomic via ctypes."""
    assert _shm.atomics_backend() == _shm.COMPILED
    mm = mmap.mmap(-1, 64)
    assert _shm.AtomicWord(_shm.address_of(mm)).backend == _shm.COMPILED
    mm.close()


def test_libatomic_fallback_when_not_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shm, "_compiled", None)
    assert _shm.atomics_backend() == _shm.LIBATOMIC
    test_atomics_on_shared_memory()
    mm = mmap.mmap(-1, 64)
    word = _shm.AtomicWord(_shm.address_of(mm))
    assert word.backend == _shm.LIBATOMIC
    word.add(7)
    word.sub(2)
    assert L.U64.unpack_from(mm, 0)[0] == 5
    del word
    mm.close()


def test_atomic_word_rejects_unknown_or_missing_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown atomics backend"):
        _shm.AtomicWord(8, backend="magic")
    monkeypatch.setattr(_shm, "_compiled", None)
    with pytest.raises(E.AtomicsUnavailable, match="not built"):
        _shm.AtomicWord(8, backend=_shm.COMPILED)


def test_compiled_native_checks_its_arguments() -> None:
    from transports import _native

    with pytest.raises(ValueError, match="multiple of 8"):
        _native.fetch_add(0, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        _native.fetch_sub(12, 1)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        _native.fetch_add(8)  # type: ignore[call-arg]
    with pytest.raises(OverflowError):
        _native.fetch_add(8, -1)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        _native.compare_exchange(8, 1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="must be bytes"):
        _native.put(8, 0, 64, 0, bytearray(b"x"), 1, 1, 0)  # type: ignore[arg-type]
    words = array("Q", bytes(64))
    with pytest.raises(TypeError, match="must be an int"):
        _native.take_run(8, 0, 64, words, 1.5, 1, 1, 8, 0, [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sem handle is 0"):
        _native.take_run(8, 0, 64, words, 10, 1, 1, 0, 0, [])
    with pytest.raises(TypeError, match=r"array\('Q'\)"):
        _native.take_run(8, 0, 64, array("Q", bytes(8)), 10, 1, 1, 8, 0, [])
    with pytest.raises(TypeError, match=r"array\('Q'\)"):
        _native.give_back(8, bytearray(64), 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seconds: float"):
        _native.take_post(8, words, 1)
    with pytest.raises(ValueError, match="handle is 0"):
        _native.take_post(0, words, 0.0)
    with pytest.raises(ValueError, match="multiples of 8"):
        _native.configure_reader(3, 8)
    with pytest.raises(TypeError):
        _native.Publisher(8, 0, 64, 0, bytearray(64))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        _native.Publisher(8, 0, 16, 0, array("Q", bytes(48)))
    with pytest.raises(FileNotFoundError):
        _native.sem_attach("/sem-w-zcser-no-such-semaphore")
    with pytest.raises(TypeError):
        _native.sem_attach(b"/sem-w-x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="handle is 0"):
        _native.sem_detach(0)
    with pytest.raises(ValueError, match="multiples of 8"):
        _native.configure(3, 8, 16, 24, 16)
    with pytest.raises(ValueError, match="two u64"):
        _native.configure(0, 8, 16, 24, 12)


def test_compiled_address_of_buffers() -> None:
    from transports import _native

    arr = np.arange(100, dtype=np.uint8)
    assert _native.address(arr) == arr.ctypes.data
    assert _native.address(memoryview(arr)[10:]) == arr.ctypes.data + 10
    assert _native.address(memoryview(arr).toreadonly()) == arr.ctypes.data
    assert _native.address(b"") == 0
    with pytest.raises(BufferError):
        _native.address(memoryview(arr)[::2])  # not contiguous
    with pytest.raises(TypeError):
        _native.address(3)


def test_compiled_put_and_take_run_handle_only_the_plain_case(shm_name: str) -> None:
    """put/take_run do the common frames and decline (-1 / 0 taken, nothing changed but a post
    taken for a frame they do not handle, which stays counted in the reader's words) the rest.
    take_run counts what it takes in the same call: state words, OIEB, free bytes, pending."""
    from transports import _native

    size = 256
    with Reader(shm_name, BufferConfig(0, size), timeout=2.0) as r, Writer(shm_name) as w:
        addr, base, sem_w = w._addr, w._base, r._core.sem_w
        sem, sem_r = r._core.sem_handle, r._core.sem_r_handle
        assert sem and sem_r
        pending: list[bytes] = []

        def run(pos: int, limit: int, expected: int) -> tuple[int, array[int]]:
            words = array("Q", [pos, 0, 0, expected, 0, 0, 0, 0])
            k = _native.take_run(addr, base, size, words, limit, 32, 1 << 20, sem, sem_r, pending)
            return k, words

        assert _native.put(addr, base, size, 0, b"abc", 1, 1, 0) == 19
        assert sem_w.value == 0  # sem 0: the caller posts
        assert field(shm_name, L.OFF_WRITE_POS) == 19
        assert field(shm_name, L.OFF_WRITTEN_COUNT) == 1
        assert field(shm_name, L.OFF_PAYLOAD_FREE) == size - 19
        assert run(0, 10, 1)[0] == 0  # published, but not posted yet
        before = oieb_bytes(shm_name)
        # over the limit, another sequence, a zero header (wrap or none): declined, the post
        # taken stays counted (words[7]); no room for a header, outside the ring: no post taken
        for args in [(0, 2, 1), (0, 10, 2), (19, 10, 2), (size - 8, 10, 2), (size + 8, 10, 2)]:
            sem_w.release()
            k, words = run(*args)
            taken = args[0] < size - HDR
            assert k == 0 and list(words) == [args[0], 0, 0, args[2], 0, 0, 0, int(taken)]
            assert sem_w.value == int(not taken)
            if not taken:
                sem_w.acquire(0)
        assert sem_w.value == 0 and not pending and oieb_bytes(shm_name) == before
        sem_w.release()
        k, words = run(0, 10, 1)
        assert k == 1 and pending == [b"abc"] and sem_w.value == 0
        assert list(words) == [19, 1, 1, 2, 1, 3, 0, 0]  # pos, count, first, expected, ...
        assert field(shm_name, L.OFF_READ_POS) == 19 and field(shm_name, L.OFF_READ_COUNT) == 1
        assert field(shm_name, L.OFF_PAYLOAD_FREE) == size  # given back in the same call
        assert r._core.sem_r.value == 1  # and the writer woken
        before = oieb_bytes(shm_name)
        assert _native.put(addr, base, size, 19, b"", 2, 2, 0) == -1  # empty
        assert _native.put(addr, base, size, 250, b"x" * 8, 2, 2, 0) == -1  # needs a wrap
        assert _native.put(addr, base, size, 19, b"x" * 300, 2, 2, 0) == -1  # too large
        assert _native.put(addr, base, size, size + 8, b"x", 2, 2, 0) == -1  # outside
        with raw_oieb(shm_name) as mm:
            L.U64.pack_into(mm, L.OFF_PAYLOAD_FREE, 10)
        assert _native.put(addr, base, size, 19, b"x" * 8, 2, 2, 0) == -1  # not enough free
        with raw_oieb(shm_name) as mm:
            L.U64.pack_into(mm, L.OFF_PAYLOAD_FREE, size + 1)
        assert _native.put(addr, base, size, 19, b"x" * 8, 2, 2, 0) == -1  # corrupt counter
        with raw_oieb(shm_name) as mm:
            L.U64.pack_into(mm, L.OFF_PAYLOAD_FREE, size)
            pid = L.U64.unpack_from(mm, L.OFF_READER_PID)[0]
            L.U64.pack_into(mm, L.OFF_READER_PID, 0)
        assert _native.put(addr, base, size, 19, b"x" * 8, 2, 2, 0) == -1  # no reader
        with raw_oieb(shm_name) as mm:
            L.U64.pack_into(mm, L.OFF_READER_PID, pid)
        assert oieb_bytes(shm_name) == before
        del r, w


def test_compiled_publisher_publishes_in_one_store_or_declines(shm_name: str) -> None:
    """Publisher.put writes and publishes a small frame and advances the writer's words, or
    declines (done 0) with nothing changed; Publisher.publish publishes a frame in place, with
    its wrap marker, and refuses a frame that does not fit the ring."""
    from transports import _native

    size = 256
    with Reader(shm_name, BufferConfig(0, size), timeout=2.0) as r, Writer(shm_name) as w:
        words = array("Q", [0, 1, 0, 0, 0, 0])
        p = _native.Publisher(w._addr, w._base, size, 0, words)
        p.put = b"abc"
        assert list(words) == [19, 2, 1, 1, 3, 1]  # write_pos, seq, written, frames, bytes, done
        assert field(shm_name, L.OFF_WRITE_POS) == 19
        assert field(shm_name, L.OFF_PAYLOAD_FREE) == size - 19
        before = oieb_bytes(shm_name)
        for data in (b"", b"x" * 300):
            p.put = data
            assert words[5] == 0 and oieb_bytes(shm_name) == before  # declined
        with pytest.raises(TypeError, match="bytes"):
            p.put = bytearray(b"x")  # type: ignore[assignment]
        with pytest.raises(AttributeError):
            _ = p.put
        words[0] = 200
        with pytest.raises(ValueError, match="does not fit"):
            p.publish = (0, 100)  # past the ring's end
        assert oieb_bytes(shm_name) == before
        p.publish = (56, 20)  # a wrap: marker at 200, the frame at 0
        assert list(words)[:3] == [36, 3, 3]
        assert L.HEADER.unpack_from(r._core.mm, r._core.base + 200) == (0, 0)
        assert L.HEADER.unpack_from(r._core.mm, r._core.base) == (20, 2)
        assert field(shm_name, L.OFF_PAYLOAD_FREE) == size - 19 - 56 - 36
        assert r._core.sem_w.value == 0  # sem 0: the caller posts
        del r, w


def test_compiled_take_run_stops_at_its_bounds(shm_name: str) -> None:
    """A run ends at max_frames, past max_bytes, before a frame it does not take (whose post
    stays counted), and after a frame ending exactly at the ring's end."""
    from transports import _native

    size = 128
    with Reader(shm_name, BufferConfig(0, size), timeout=2.0) as r, Writer(shm_name) as w:
        addr, base, sem_w = w._addr, w._base, r._core.sem_w
        sem = r._core.sem_handle
        words = array("Q", [0, 0, 0, 1, 0, 0, 0, 0])
        pending: list[bytes] = []

        def run(limit: int, frames: int = 32, nbytes: int = 1 << 20) -> list[bytes]:
            _native.take_run(addr, base, size, words, limit, frames, nbytes, sem, 0, pending)
            got = pending[:]
            pending.clear()
            return got

        frames = [b"de", b"fgh", b"i" * 40, b"j" * 19]  # the last ends exactly at the end
        pos = 0
        for seq, data in enumerate(frames, start=1):
            with raw_oieb(shm_name) as mm:
                L.U64.pack_into(mm, L.OFF_PAYLOAD_FREE, size)
            posted = w._sem_handle  # put posts sem-w itself through the writer's handle
            assert (
                _native.put(addr, base, size, pos, data, seq, seq, posted) == pos + len(data) + HDR
            )
            assert sem_w.value == seq
            pos += len(data) + HDR
        assert pos == size
        assert run(10, frames=1) == [b"de"]  # the frame bound
        assert run(10) == [b"fgh"]  # stops before the frame over the limit
        assert sem_w.value == 1 and words[7] == 1  # its post stays counted
        assert run(40, nbytes=1) == [b"i" * 40]  # the byte bound (after one frame)
        assert run(40) == [b"j" * 19] and sem_w.value == 0 and words[7] == 0
        assert words[0] == 0 and words[3] == 5  # back at the ring's start
        assert run(40) == []  # nothing posted
        del r, w


@pytest.mark.parametrize("compiled", [True, False])
def test_frames_round_trip_with_and_without_the_compiled_path(
    shm_name: str, compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every size and position, wraps included, through write() and read_small()/read()."""
    if not compiled:
        monkeypatch.setattr(zb_writer, "_PUBLISHER", None)
        monkeypatch.setattr(zb_reader, "_TAKE_RUN", None)
    rng = random.Random(3)
    with Reader(shm_name, BufferConfig(0, P_SMALL), timeout=2.0) as r, Writer(shm_name) as w:
        for seq in range(1, 2000):
            n = rng.choice([1, 7, 16, 100, rng.randint(1, P_SMALL // 2 - HDR)])
            data = pattern(seq, n)
            w.write(data if seq % 3 else bytearray(data))
            if seq % 2:
                got = r.read_small(200)
                if n <= 200:
                    assert got == data
                else:
                    assert isinstance(got, Frame) and bytes(got.data) == data
                    got.release()
            else:
                with r.read() as f:
                    assert f.sequence == seq and bytes(f.data) == data
        assert r.stats().free == P_SMALL
        assert field(r.name, L.OFF_WRITTEN_COUNT) == field(r.name, L.OFF_READ_COUNT)


def _store_words(name: str, stop: Any) -> None:
    mm = _shm.open_shm(name)
    word = _shm.word_at(_shm.address_of(mm) + 56)
    while not stop.is_set():
        for value in (31174, 63431, 59051, 61872, 255, 65280):
            word.value = value
    del word
    mm.close()


def test_oieb_words_are_stored_and_loaded_whole(shm_name: str) -> None:
    """A field stored while the peer reads it is seen as the old or the new value, never a mix:
    struct's byte-at-a-time stores were read as 0 (the reference writer then wrapped wrongly)."""
    mm = _shm.create_shm(shm_name, 4096)
    try:
        word = _shm.word_at(_shm.address_of(mm) + 56)
        word.value = 31174
        assert L.U64.unpack_from(mm, 56)[0] == 31174  # little endian, like the OIEB
        stop = mp.get_context("fork").Event()
        proc = mp.get_context("fork").Process(target=_store_words, args=(shm_name, stop))
        proc.start()
        seen: set[int] = set()
        reads = 0
        hang_guard = time.monotonic() + 60  # not a threshold: the child may start late
        while (len(seen) < 3 or reads < 500_000) and time.monotonic() < hang_guard:
            seen.add(word.value)
            reads += 1
        stop.set()
        proc.join(10)
        assert proc.exitcode == 0
        assert seen <= {31174, 63431, 59051, 61872, 255, 65280}
        assert len(seen) > 2
        del word
    finally:
        mm.close()
        _shm.unlink_shm(shm_name)


def test_atomics_on_shared_memory() -> None:
    mm = mmap.mmap(-1, 64)
    addr = _shm.address_of(mm)
    L.U64.pack_into(mm, 8, 10)
    assert _shm.atomic_add(addr + 8, 5) == 10
    assert _shm.atomic_sub(addr + 8, 3) == 15
    assert _shm.compare_exchange(addr + 8, 12, 99) == (True, 12)
    assert _shm.compare_exchange(addr + 8, 12, 7) == (False, 99)
    assert L.U64.unpack_from(mm, 8)[0] == 99
    mm.close()  # the address helper kept no export behind


def test_pid_liveness() -> None:
    assert _shm.pid_alive(os.getpid())
    assert not _shm.pid_alive(0)
    assert not _shm.pid_alive(1 << 40)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not _shm.pid_alive(child.pid)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(10_000):  # exited but not reaped yet: a zombie counts as dead
        with open(f"/proc/{zombie.pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        threading.Event().wait(0.001)
    assert not _shm.pid_alive(zombie.pid)
    zombie.wait()


def _add_many(address_holder: str, count: int, backend: str) -> None:
    """Child: map the shared word and add 1 `count` times, then subtract 0 once."""
    mm = _shm.open_shm(address_holder)
    try:
        word = _shm.AtomicWord(_shm.address_of(mm), backend)
        for _ in range(count):
            word.add(1)
        word.sub(0)
    finally:
        mm.close()


@pytest.mark.parametrize("backend", [_shm.COMPILED, _shm.LIBATOMIC])
def test_atomic_word_adds_exactly_across_processes(shm_name: str, backend: str) -> None:
    mm = _shm.create_shm(shm_name, 4096)
    L.U64.pack_into(mm, 0, 0)  # the word where create_shm signed the segment
    try:
        word = _shm.AtomicWord(_shm.address_of(mm), backend)
        word.add(10**6)
        word.sub(1)
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_add_many, args=(shm_name, 20_000, backend)) for _ in range(2)]
        for proc in procs:
            proc.start()
        for _ in range(20_000):
            word.sub(1)
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        assert L.U64.unpack_from(mm, 0)[0] == 10**6 - 1 + 20_000
        word.sub(2**64 - 1)  # wraps like the C counter
        assert L.U64.unpack_from(mm, 0)[0] == 10**6 + 20_000
    finally:
        mm.close()
        _shm.unlink_shm(shm_name)


def _dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("posted_count", [False, True])
def test_writer_killed_after_moving_write_pos_but_before_posting(
    shm_name: str, posted_count: bool
) -> None:
    """The kill windows between 'write_pos stored' and 'sem-w posted': the complete frame is read,
    then WriterDead; a new writer's first frame comes next (nothing stale, nothing lost)."""
    with Reader(shm_name, BufferConfig(0, 4096), timeout=1.0) as r:
        w = Writer(shm_name, timeout=1.0)
        w.write(b"first")
        with r.read() as f:
            assert bytes(f.data) == b"first"
        with (
            open(f"/dev/shm/{shm_name}", "r+b") as raw,
            mmap.mmap(raw.fileno(), 0) as view,
        ):
            base = L.OIEB_SIZE
            pos = L.U64.unpack_from(view, L.OFF_WRITE_POS)[0]
            free = L.U64.unpack_from(view, L.OFF_PAYLOAD_FREE)[0]
            L.U64.pack_into(view, L.OFF_PAYLOAD_FREE, free - L.HEADER_SIZE - 6)
            L.HEADER.pack_into(view, base + pos, 6, 2)
            view[base + pos + L.HEADER_SIZE : base + pos + L.HEADER_SIZE + 6] = b"second"
            L.U64.pack_into(view, L.OFF_WRITE_POS, pos + L.HEADER_SIZE + 6)
            if posted_count:
                count = L.U64.unpack_from(view, L.OFF_WRITTEN_COUNT)[0]
                L.U64.pack_into(view, L.OFF_WRITTEN_COUNT, count + 1)
            w._closed = True  # the process "died": no close(), no post
            L.U64.pack_into(view, L.OFF_WRITER_PID, _dead_pid())
        with r.read() as f:
            assert bytes(f.data) == b"second" and f.sequence == 2
        with pytest.raises(E.WriterDead):
            r.read()
        with Writer(shm_name, timeout=1.0) as w2:
            w2.write(b"third")
            with r.read() as f:
                assert bytes(f.data) == b"third" and f.sequence == 1


def _mappings_of(inode: int) -> list[str]:
    """This process's mappings of the /dev/shm file with this inode (named or deleted)."""
    with open("/proc/self/maps") as maps:
        return [line for line in maps if "/dev/shm/" in line and line.split()[4] == str(inode)]


def test_close_unmaps_the_semaphore_handles_of_the_compiled_path(shm_name: str) -> None:
    """Reader and Writer open their own handle on sem-w; close() must drop it even while the
    objects stay referenced: an unlinked semaphore keeps its /dev/shm page while mapped (found
    by the 64 MiB /dev/shm test)."""
    r = Reader(shm_name, BufferConfig(0, 64 * 1024), timeout=2.0)
    w = Writer(shm_name)
    assert r._core.sem_handle and w._sem_handle
    for seq in range(1, 4):
        w.write(pattern(seq, 20))
    assert r.read_small(64) == pattern(1, 20)  # a run: two frames pending
    inode = os.stat(f"/dev/shm/sem.sem-w-{shm_name}").st_ino
    assert _mappings_of(inode)
    w.close()
    r.close()
    assert _mappings_of(inode) == []
    with pytest.raises(E.TransportClosed):
        r.read_small(64)
    del r, w
