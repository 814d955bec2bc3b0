"""Long streams: random frame sizes over a small ring (constant wrap-around), the reader holding
random numbers of frames and releasing them in random order. Every frame is checked (sequence
continuity, length, CRC-32); RSS and open descriptors of both processes and this run's entries
in /dev/shm must stay flat (measured after 10% and at 90% of the stream). CI form: 20,000 frames; `make soak`: 1,000,000.
"""

from __future__ import annotations

import multiprocessing
import os
import random
from typing import Any

import psutil
import pytest
from conftest import RUN_TOKEN, unique_name
from fixtures import roles

from transports.zerobuffer import BufferConfig, Reader

CTX = multiprocessing.get_context("fork")
RING = 64 << 10
MAX_FRAME = 6000
RSS_SLACK = 24 << 20
"""Allowed RSS growth between the first checkpoint (after warm-up) and the end: allocator noise,
far below what one leaked frame per iteration would cost over the run."""


def _writer(name: str, frames: int, seed: int) -> None:
    rng = random.Random(seed)
    from transports.zerobuffer import Writer

    with Writer(name, timeout=60) as w:
        for seq in range(1, frames + 1):
            n = rng.randint(roles.MIN_FRAME, 256 if rng.random() < 0.7 else MAX_FRAME)
            if seq % 3:
                w.write(roles.make_frame(seq, n, rng))
            else:
                view = w.reserve(n)
                roles.fill_frame(view, seq, rng)
                del view
                w.commit()


def _usage(*procs: psutil.Process) -> tuple[int, int, int]:
    """(total RSS, total open fds, this run's entries in /dev/shm)."""
    rss = sum(p.memory_info().rss for p in procs)
    fds = sum(p.num_fds() for p in procs)
    return rss, fds, len([n for n in os.listdir("/dev/shm") if RUN_TOKEN in n])


def _stream(frames: int, seed: int) -> dict[str, Any]:
    name = unique_name("sk")
    rng = random.Random(seed)
    me = psutil.Process()
    with Reader(name, BufferConfig(0, RING), timeout=30) as r:
        child = CTX.Process(target=_writer, args=(name, frames, seed))
        child.start()
        peer = psutil.Process(child.pid)
        held: list[Any] = []
        checkpoints = []
        wraps_seen = 0
        last_offset = -1
        try:
            for seq in range(1, frames + 1):
                frame = r.read()
                assert roles.check(frame.data, frame.sequence) == seq
                if frame.offset < last_offset:
                    wraps_seen += 1
                last_offset = frame.offset
                held.append(frame)
                if len(held) > rng.choice((0, 0, 1, 2, 5, 9)):
                    rng.shuffle(held)
                    keep = rng.randint(0, len(held) // 2)
                    for f in held[keep:]:
                        f.release()
                    del held[keep:]
                if seq in (frames // 10, frames - frames // 10):  # the writer still runs
                    for f in held:
                        f.release()
                    held.clear()
                    checkpoints.append(_usage(me, peer))
        finally:
            for f in held:
                f.release()
            child.join(60)
        assert child.exitcode == 0
        stats = r.stats()
    assert stats.frames == frames and stats.frames_held == 0 and stats.used == 0
    (rss0, fds0, shm0), (rss1, fds1, shm1) = checkpoints
    assert rss1 - rss0 < RSS_SLACK, (rss0, rss1)
    assert fds1 == fds0 and shm1 == shm0
    assert wraps_seen > frames // 100
    return {"wraps": wraps_seen}


def test_soak_short() -> None:
    _stream(20_000, seed=5)


@pytest.mark.soak
def test_soak_million_frames() -> None:
    _stream(1_000_000, seed=6)
