"""SIGKILL the writer or the reader at random moments, hundreds of times, in real processes.

Moments covered by the random kill time and the children's random behaviour: during buffer
creation, while attaching, while a frame is reserved and half filled (reserve + chunked fill),
mid-copy in write(), right after commit, and while the reader holds several frames released
in random order. After every kill the survivor must get its documented error (WriterDead or
ReaderDead) within its timeout plus a margin, must never see a partial or corrupted frame
(every frame carries sequence, length and CRC-32), and the buffer name must be usable again:
a new writer takes over a live reader's buffer, a new reader re-creates a dead reader's buffer.
Children are forked, so an iteration costs tens of milliseconds. CI form: 60 writer and 100 reader iterations; `make soak`: 2 x 600.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import unique_name
from fixtures import roles

from transports import errors as E
from transports.admin import inspect_buffer
from transports.zerobuffer import BufferConfig, Reader, Writer

CTX = multiprocessing.get_context("fork")
"""Fork (about 5 ms under pytest; a forkserver child re-imports pytest's main, about 90 ms).
Children never run the parent's finalizers, and the transport ignores objects inherited
across a fork."""

RING = 16 << 10
MAX_FRAME = 5000
TIMEOUT = 1.0
MARGIN = 5.0
"""Generous: 'did not hang', not a performance bound."""


def _kill_delay(rng: random.Random) -> float:
    """A quarter of kills land while the child starts up (creation, attach), the rest mid-stream."""
    return rng.uniform(0.0, 0.004) if rng.random() < 0.25 else rng.uniform(0.004, 0.04)


class _Killer:
    """SIGKILL a process after a delay, from a timer thread; remembers when."""

    def __init__(self, proc: Any, delay: float) -> None:
        self.at: float | None = None
        self._proc = proc
        self._timer = threading.Timer(delay, self._kill)
        self._timer.start()

    def _kill(self) -> None:
        self.at = time.monotonic()
        self._proc.kill()

    def wait(self) -> float:
        self._timer.join(30)
        assert self.at is not None
        return self.at


def _kill_writer_once(rng: random.Random) -> str:
    """Our reader survives a killed writer. Returns how the stream ended."""
    name = unique_name("kw")
    with Reader(name, BufferConfig(0, RING), timeout=TIMEOUT) as r:
        proc = CTX.Process(target=roles.writer, args=(name, rng.getrandbits(32), MAX_FRAME))
        proc.start()
        killer = _Killer(proc, _kill_delay(rng))
        held: list[Any] = []
        expected = 1
        try:
            while True:
                frame = r.read()
                roles.check(frame.data, frame.sequence)
                assert frame.sequence == expected, (frame.sequence, expected)
                expected += 1
                held.append(frame)
                while held and len(held) > rng.randint(0, 3):
                    held.pop(rng.randrange(len(held))).release()
        except E.WriterDead:
            outcome = "writer-dead"
        except E.Timeout:
            info = inspect_buffer(name)
            assert info.oieb is not None
            assert info.oieb["writer_pid"] == 0 and expected == 1, "live writer timed out"
            outcome = "never-attached"
        ended = time.monotonic()
        assert ended - killer.wait() < TIMEOUT + MARGIN
        proc.join(10)
        assert proc.exitcode == -9
        for frame in held:
            frame.release()
        with Writer(name, timeout=TIMEOUT) as w:  # a new writer takes over the same buffer
            w.write(roles.make_frame(1, 100, rng))
            with r.read() as frame:
                assert roles.check(frame.data, frame.sequence) == 1
    return outcome


def _attach(name: str, proc: Any) -> Writer | None:
    """Connect once the child's buffer is ready; None if the child died before that."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return Writer(name, timeout=TIMEOUT)
        except (E.BufferNotFound, E.ReaderDead, E.CorruptBuffer):
            if not proc.is_alive():
                return None
            time.sleep(0.0005)
    raise AssertionError("the reader never became ready")


def _kill_reader_once(rng: random.Random) -> str:
    """Our writer survives a killed reader; then a new reader re-creates the same name."""
    name = unique_name("kr")
    receive, send = CTX.Pipe(duplex=False)
    args = (name, rng.getrandbits(32), RING, send, rng.choice((0, 1, 4, 8)))
    proc = CTX.Process(target=roles.reader, args=args)
    proc.start()
    send.close()
    killer = _Killer(proc, _kill_delay(rng))
    outcome = "never-attached"
    w = _attach(name, proc)
    if w is not None:
        with w:
            seq = 0
            try:
                while True:
                    seq += 1
                    try:
                        w.write(roles.make_frame(seq, rng.randint(roles.MIN_FRAME, MAX_FRAME), rng))
                    except E.BufferFull:
                        assert proc.is_alive(), "BufferFull while the reader is dead"
                        seq -= 1
            except E.ReaderDead:
                outcome = "reader-dead"
            assert time.monotonic() - killer.wait() < TIMEOUT + MARGIN
    killer.wait()
    proc.join(10)
    assert proc.exitcode == -9
    events = []
    with contextlib.suppress(EOFError):
        while receive.poll():
            events.append(receive.recv())
    bad = [text for kind, text in events if kind == "bad"]
    assert not bad, f"the reader saw a bad frame: {bad}"
    receive.close()
    with Reader(name, BufferConfig(0, RING), timeout=TIMEOUT) as r, Writer(name) as w2:
        w2.write(roles.make_frame(1, 64, rng))
        with r.read() as frame:
            assert roles.check(frame.data, frame.sequence) == 1
    return outcome


def _loop(once: Any, iterations: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    for i in range(iterations):
        try:
            outcome = once(rng)
        except BaseException as exc:
            exc.add_note(f"iteration {i} of seed {seed}")
            raise
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


_GLIBC_TEMP = re.compile(r"^sem\.[A-Za-z0-9]{6}$")


def _glibc_temps() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if _GLIBC_TEMP.match(n)}


@pytest.fixture(autouse=True)
def _remove_orphaned_sem_temps() -> Iterator[None]:
    """glibc's sem_open builds a semaphore under a random `sem.XXXXXX` name and links it to the
    real one; a child SIGKILLed inside that call leaves the temp file behind (nothing of ours
    names it, so no stale cleanup can tell it from another program's). Killing children in the
    middle of creation is this module's point, so it removes the orphans its kills made."""
    before = _glibc_temps()
    yield
    for orphan in _glibc_temps() - before:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{orphan}")


def test_kill_writer_loop() -> None:
    outcomes = _loop(_kill_writer_once, 60, seed=1)  # ~0.2 s each: more in the soak form
    assert outcomes.get("writer-dead", 0) >= 30, outcomes


def test_kill_reader_loop() -> None:
    outcomes = _loop(_kill_reader_once, 100, seed=2)
    assert outcomes.get("reader-dead", 0) >= 50, outcomes


@pytest.mark.soak
@pytest.mark.parametrize("seed", [11, 12])
def test_kill_writer_loop_soak(seed: int) -> None:
    _loop(_kill_writer_once, 300, seed)


@pytest.mark.soak
@pytest.mark.parametrize("seed", [21, 22])
def test_kill_reader_loop_soak(seed: int) -> None:
    _loop(_kill_reader_once, 300, seed)
