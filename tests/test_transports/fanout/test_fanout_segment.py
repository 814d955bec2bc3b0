"""The fan-out transport: frames written once and read in place by several readers, pins
never overwritten, hostile bytes refused, stale segments replaced, slots and bells."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import RUN_TOKEN, unique_name

from transports.errors import (
    BufferExists,
    BufferFull,
    BufferNotFound,
    CorruptBuffer,
    FrameTooLarge,
    TransportClosed,
    TransportEnvironmentError,
    WriterDead,
)
from transports.errors import Timeout as TTimeout
from transports.fanout import FanoutFrame, FanoutReader, FanoutWriter
from transports.fanout import layout as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_each_frame_is_written_once_and_read_in_place_by_every_reader() -> None:
    name = unique_name("ft")
    w = FanoutWriter(name, payload_size=1 << 16, slots=4, metadata=b"meta")
    readers = [FanoutReader(name, policy="block") for _ in range(3)]
    try:
        assert bytes(readers[0].metadata) == b"meta"
        for i in range(500):
            payload = bytes([i % 251]) * (1 + i % 900)
            w.write(payload, timeout=1)
            offsets = set()
            for r in readers:
                f = r.read(timeout=1)
                assert isinstance(f, FanoutFrame) and not f.private
                assert bytes(f.data) == payload and f.sequence == i + 1 and f.missed == 0
                offsets.add(f.address - r._addr)  # where it lies in each reader's mapping
                f.release()
            assert len(offsets) == 1  # one copy in shared memory, read in place by all
        assert {s.lag for s in w.subscribers()} == {0}
    finally:
        for r in readers:
            r.close()
        w.close()


def test_a_held_frame_is_never_overwritten_and_others_go_on() -> None:
    name = unique_name("ft")
    w = FanoutWriter(name, payload_size=1 << 16, slots=2)
    holder = FanoutReader(name, policy="drop")
    other = FanoutReader(name, policy="block")
    try:
        w.write(b"keep me", timeout=1)
        kept = holder.read(timeout=1)
        other.read(timeout=1).release()
        for i in range(2000):  # many laps around the pinned frame
            w.write(i.to_bytes(4, "little") * 100, timeout=1)
            f = other.read(timeout=1)
            assert bytes(f.data[:4]) == i.to_bytes(4, "little")
            f.release()
            assert bytes(kept.data) == b"keep me"
        kept.release()
    finally:
        holder.close()
        other.close()
        w.close()


def test_block_reader_makes_the_writer_wait_then_buffer_full() -> None:
    name = unique_name("ft")
    w = FanoutWriter(name, payload_size=1 << 14, slots=1)
    r = FanoutReader(name, policy="block")
    try:
        with pytest.raises(BufferFull, match="block"):
            for _ in range(100):
                w.write(b"x" * 1000, timeout=0.05)
        r.read(timeout=0).release()
        w.write(b"x" * 1000, timeout=0)  # room again
        with pytest.raises(FrameTooLarge):
            w.write(b"x" * (1 << 13), timeout=0)
    finally:
        r.close()
        w.close()


def test_hostile_headers_raise_corrupt_buffer_never_crash() -> None:
    name = unique_name("ft")
    w = FanoutWriter(name, payload_size=1 << 14, slots=1)
    r = FanoutReader(name)
    try:
        w.write(b"a" * 10, timeout=0)  # starts the reader
        r.read(timeout=0).release()
        w.write(b"b" * 10, timeout=0)
        base = F.payload_offset(1, F.align(8)) + r._s_read.value % w.capacity
        mm = w._mm
        good = bytes(mm[base : base + 16])
        for n in (0, 1 << 40, w.capacity):
            F.FRAME_HEADER.pack_into(mm, base, n, 2)
            with pytest.raises(CorruptBuffer):
                r.read(timeout=0)
        mm[base : base + 16] = good
        F.U64.pack_into(mm, F.OFF_HEAD, 1 << 50)  # a head far beyond the cursor
        with pytest.raises(CorruptBuffer):
            r.read(timeout=0)
    finally:
        r.close()
        w.close()


def test_slots_run_out_with_a_clear_error() -> None:
    name = unique_name("ft")
    w = FanoutWriter(name, payload_size=1 << 14, slots=1)
    r = FanoutReader(name)
    try:
        with pytest.raises(TransportEnvironmentError, match="subscriber slots"):
            FanoutReader(name)
        r.close()
        FanoutReader(name).close()  # the slot is free again
    finally:
        w.close()
    with pytest.raises(BufferNotFound):
        FanoutReader(name)


def test_close_ends_the_stream_after_the_last_frame() -> None:
    name = unique_name("ft")
    w = FanoutWriter(name, payload_size=1 << 14, slots=1)
    r = FanoutReader(name)
    w.write(b"1", timeout=0)
    w.write(b"2", timeout=0)
    w.close()
    assert bytes(r.read(timeout=0, limit=100)) == b"1"
    assert bytes(r.read(timeout=0, limit=100)) == b"2"
    with pytest.raises(TransportClosed):
        r.read(timeout=0)
    r.close()


def test_a_dead_publishers_segment_is_replaced_and_its_readers_told() -> None:
    name = unique_name("ft")
    code = (
        "import sys, time; from transports.fanout import FanoutWriter\n"
        f"w = FanoutWriter({name!r}, payload_size=1 << 14, slots=2)\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        "w.write(b'last', timeout=1); print('sent', flush=True); time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == b"ready"
        with pytest.raises(BufferExists):
            FanoutWriter(name, payload_size=1 << 14)
        r = FanoutReader(name)
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == b"sent"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert bytes(r.read(timeout=1, limit=100)) == b"last"  # what it published comes first
    with pytest.raises(WriterDead):
        r.read(timeout=1)
    r.close()
    FanoutWriter(name, payload_size=1 << 14).close()  # the name is free again


def test_timeout_when_nothing_comes() -> None:
    name = unique_name("ft")
    w = FanoutWriter(name, payload_size=1 << 14, slots=1)
    r = FanoutReader(name)
    try:
        with pytest.raises(TTimeout):
            r.read(timeout=0.05)
    finally:
        r.close()
        w.close()


def test_gc_removes_a_dead_publishers_segment_and_keeps_live_ones() -> None:
    from transports.admin import collect_garbage

    dead, live = unique_name("ft"), unique_name("ft")
    code = (
        "import time; from transports.fanout import FanoutWriter\n"
        f"w = FanoutWriter({dead!r}, payload_size=1 << 14, slots=2)\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert os.path.exists(f"/dev/shm/{dead}")
    w = FanoutWriter(live, payload_size=1 << 14)
    try:
        removed = collect_garbage(prefix=RUN_TOKEN)  # this test run's names only
        assert dead in removed and live not in removed
        assert not os.path.exists(f"/dev/shm/{dead}")
        assert os.path.exists(f"/dev/shm/{live}")
    finally:
        w.close()
