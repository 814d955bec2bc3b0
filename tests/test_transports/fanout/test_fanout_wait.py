"""How a fan-out subscriber waits: the publisher writes a sleeping subscriber's bell once per
sleep (not once per frame while it wakes up), every sleep is still woken by the next frame,
and a crowded fan-out (more processes than CPUs) sleeps without polling first."""

from __future__ import annotations

import os
import threading

import pytest
from conftest import unique_name

from transports.fanout import FanoutReader, FanoutWriter
from transports.fanout import reader as fanout_reader


def _bell_bytes(r: FanoutReader) -> int:
    """Bytes waiting in the subscriber's bell (read out, so the bell is empty after)."""
    got = 0
    while True:
        try:
            chunk = os.read(r.bell, 4096)
        except BlockingIOError:
            return got
        if not chunk:
            return got
        got += len(chunk)


def test_an_armed_subscriber_is_rung_once_until_it_reads_then_once_again(fanout_paths: str) -> None:
    name = unique_name("fw")
    w = FanoutWriter(name, payload_size=1 << 16, slots=2)
    r = FanoutReader(name, policy="block")
    try:
        w.write(b"join", timeout=1)  # the publisher starts it (its first look at the slots)
        assert r.read(timeout=1) == b"join" or r.frames == 1
        _bell_bytes(r)
        r.arm()  # as a sleep does: armed, nothing unread
        for i in range(20):
            w.write(b"x%d" % i, timeout=1)
        assert _bell_bytes(r) == 1  # one byte for the sleep, not one per frame
        for _ in range(20):
            r.read(timeout=1, limit=64)
        for i in range(5):
            w.write(b"y%d" % i, timeout=1)
        assert _bell_bytes(r) == 1  # it read past the frame rung for: its next sleep is rung
        r.disarm()
        w.write(b"z", timeout=1)
        assert _bell_bytes(r) == 0  # not armed: no bell
    finally:
        r.close()
        w.close()


def test_every_sleep_is_woken_by_the_next_frame(
    fanout_paths: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lost wake-up would leave the reader asleep until its backstop: made longer than the
    # read's timeout, so it would show as Timeout.
    monkeypatch.setattr(fanout_reader, "BACKSTOP", 30.0)
    name = unique_name("fw")
    w = FanoutWriter(name, payload_size=1 << 16, slots=2)
    r = FanoutReader(name, policy="block")
    got: list[bytes] = []
    failed: list[BaseException] = []
    asleep = threading.Event()

    def read_all() -> None:
        try:
            for _ in range(300):
                asleep.set()
                data = r.read(timeout=10, limit=64)
                assert isinstance(data, bytes)
                got.append(data)
        except BaseException as exc:  # reported by the test below
            failed.append(exc)

    try:
        t = threading.Thread(target=read_all)
        t.start()
        for i in range(300):
            asleep.wait(5)
            asleep.clear()
            if i % 3 == 0:  # now and then let it go to sleep first
                threading.Event().wait(0.002)
            w.write(b"m%d" % i, timeout=5)
        t.join(60)
        assert not failed, failed
        assert got == [b"m%d" % i for i in range(300)]
    finally:
        r.interrupt()
        r.close()
        w.close()


def test_a_crowded_fanout_sleeps_without_polling_first(monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique_name("fw")
    w = FanoutWriter(name, payload_size=1 << 16, slots=4)
    r = FanoutReader(name, policy="block")
    try:
        r._cpus = 2
        assert not r.crowded()  # publisher + 1 subscriber on 2 CPUs
        r._cpus = 1
        assert not r.crowded()  # counted once per change of subscribers
        other = FanoutReader(name, policy="drop")  # a join: counted again
        assert r.crowded()
        other.close()
        r._cpus = 2
        assert not r.crowded()

        def no_poll(limit: int) -> None:
            raise AssertionError("a crowded subscriber polled before sleeping")

        r._cpus = 1
        r._joins_seen = -1
        monkeypatch.setattr(r, "_wait_compiled", no_poll)
        threading.Timer(0.05, lambda: w.write(b"late", timeout=1)).start()
        assert r.read(timeout=5, limit=64) == b"late"
    finally:
        r.close()
        w.close()
