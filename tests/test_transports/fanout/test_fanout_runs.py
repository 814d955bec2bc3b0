"""The fan-out's per-message paths: the publisher's compiled put and the subscriber's runs of
small frames (copied out together, one cursor move) keep every rule of the Python path:
order, sequence, skips around pins and wraps, frames past the limit as views, the publisher
moving a "drop" cursor, hostile headers. Every test runs with the compiled paths and without
them (the Python code alone), so both say the same."""

from __future__ import annotations

import struct

import pytest
from conftest import unique_name

from transports.errors import CorruptBuffer
from transports.fanout import FanoutFrame, FanoutReader, FanoutWriter
from transports.fanout import layout as F

LIMIT = 1024


def payload(i: int) -> bytes:
    """Self-checking: its index in the first 4 bytes, then a length and a fill that depend on it."""
    return struct.pack("<I", i) + bytes([i % 251]) * (1 + (i * 37) % 700)


def index_of(data: bytes | memoryview) -> int:
    i = struct.unpack_from("<I", data)[0]
    assert bytes(data) == payload(i)
    return int(i)


def test_small_frames_arrive_in_order_across_wraps_and_gaps_around_pins(fanout_paths: str) -> None:
    name = unique_name("fr")
    w = FanoutWriter(name, payload_size=1 << 16, slots=3)
    reader = FanoutReader(name, policy="block")
    pinner = FanoutReader(name, policy="drop")  # holds a frame now and then: gaps to skip
    try:
        got: list[int] = []
        held: FanoutFrame | None = None
        taken_together = 0
        for i in range(3000):
            w.write(payload(i), timeout=1)
            if i % 97 == 0:  # the pinner keeps the newest frame as a view until the next one
                if held is not None:
                    held.release()
                while pinner.ready():
                    f = pinner.read(timeout=0)
                    assert isinstance(f, FanoutFrame)
                    if held is not None:
                        held.release()
                    held = f
            if i % 7 == 6:  # several published since the last look: one run takes them
                while reader.ready():
                    data = reader.read(timeout=0, limit=LIMIT)
                    assert isinstance(data, bytes)
                    taken_together = max(taken_together, len(reader._pending))
                    got.append(index_of(data))
        while reader.ready():
            data = reader.read(timeout=0, limit=LIMIT)
            got.append(index_of(bytes(data) if isinstance(data, FanoutFrame) else data))
        assert got == list(range(3000))
        assert reader.missed == 0 and reader.frames == 3000
        assert w.stats().frames == 3000
        assert {s.lag for s in w.subscribers() if s.policy == "block"} == {0}
        if fanout_paths == "compiled":
            assert taken_together > 0  # frames did come in runs
        if held is not None:
            assert index_of(held.data) >= 0  # the held frame was never overwritten
            held.release()
    finally:
        reader.close()
        pinner.close()
        w.close()


def test_a_run_stops_before_a_frame_past_the_limit_which_comes_as_a_view(fanout_paths: str) -> None:
    name = unique_name("fr")
    w = FanoutWriter(name, payload_size=1 << 16, slots=1)
    r = FanoutReader(name, policy="block")
    try:
        big = b"\x07" * (LIMIT + 1)
        for data in (payload(1), payload(2), big, payload(3)):
            w.write(data, timeout=1)
        assert r.read(timeout=1, limit=LIMIT) == payload(1)
        assert r.read(timeout=1, limit=LIMIT) == payload(2)
        frame = r.read(timeout=1, limit=LIMIT)
        assert isinstance(frame, FanoutFrame) and not frame.private
        assert bytes(frame.data) == big and frame.sequence == 3
        frame.release()
        assert r.read(timeout=1, limit=LIMIT) == payload(3)
        assert r.frames == 4
    finally:
        r.close()
        w.close()


def test_a_frame_taken_in_a_run_comes_back_as_a_private_frame_with_its_sequence(
    fanout_paths: str,
) -> None:
    name = unique_name("fr")
    w = FanoutWriter(name, payload_size=1 << 16, slots=1)
    r = FanoutReader(name, policy="block")
    try:
        with pytest.raises(Exception, match="no message"):
            r.read(timeout=0, limit=LIMIT)  # joined: it starts at the next frame
        for i in range(1, 4):
            w.write(payload(i), timeout=1)
        assert r.read(timeout=1, limit=LIMIT) == payload(1)
        frame = r.read(timeout=1)  # a frame wanted (limit -1)
        assert isinstance(frame, FanoutFrame) and bytes(frame.data) == payload(2)
        assert frame.sequence == 2 and frame.missed == 0
        frame.release()
        third = r.read(timeout=1)
        assert isinstance(third, FanoutFrame) and third.sequence == 3
        third.release()
    finally:
        r.close()
        w.close()


def test_a_drop_subscriber_overtaken_by_the_publisher_counts_what_it_missed(
    fanout_paths: str,
) -> None:
    name = unique_name("fr")
    w = FanoutWriter(name, payload_size=1 << 16, slots=2)
    slow = FanoutReader(name, policy="drop")
    try:
        w.write(payload(0), timeout=1)
        assert index_of(slow.read(timeout=1, limit=LIMIT)) == 0
        for i in range(1, 2000):  # many laps: its cursor is moved past what is overwritten
            w.write(payload(i), timeout=1)
        got = []
        while slow.ready():
            data = slow.read(timeout=0, limit=LIMIT)
            assert isinstance(data, bytes)
            got.append(index_of(data))
        assert got == sorted(got) and got[-1] == 1999
        assert slow.missed == 1999 - len(got)
        assert slow.missed > 0
    finally:
        slow.close()
        w.close()


def test_a_nonsense_header_in_the_ring_is_corrupt_buffer(fanout_paths: str) -> None:
    name = unique_name("fr")
    w = FanoutWriter(name, payload_size=1 << 16, slots=1)
    r = FanoutReader(name, policy="block")
    try:
        for i in range(1, 4):
            w.write(payload(i), timeout=1)
        second = r._s_read.value + F.frame_total(len(payload(1)))
        at = w._base + second % w.capacity
        F.FRAME_HEADER.pack_into(w._mm, at, 1 << 40, 2)  # a length far past the ring
        assert r.read(timeout=1, limit=LIMIT) == payload(1)  # the run stops before it
        with pytest.raises(CorruptBuffer, match="claims"):
            r.read(timeout=1, limit=LIMIT)
    finally:
        r.close()
        w.close()
