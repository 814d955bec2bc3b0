"""The channel section's round-trip rows: every method's median and p99, iceoryx2 as a peer when
its package is installed and a row saying so when it is not."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from zcser.tools import harness
from zcser.tools.bench import channel


def _fake_trips(
    method: str, payload: Any, count: int, prefix: str, pin: bool = False
) -> list[float]:
    base = {"zcser": 5e-6, "iceoryx2": 8e-6, "mp.Pipe": 50e-6, "mp.Queue": 200e-6}[method]
    base *= 0.5 if pin else 1.0
    return [base] * (count - 3) + [10 * base] * 3  # 1 % slow: p99 is the slow value


def test_round_trip_rows_report_p99_for_every_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "round_trips", _fake_trips)
    monkeypatch.setattr(harness, "iceoryx2_missing", lambda: None)
    rows = channel._round_trip_rows(True, "unused")
    assert [r["peer"] for r in rows] == ["iceoryx2", "mp.Pipe", "mp.Queue"]
    for row in rows:
        assert row["zcser_us"] == pytest.approx(5.0)
        assert row["zcser_p99_us"] == pytest.approx(50.0)
        assert row["peer_p99_us"] == pytest.approx(10 * row["peer_us"])
        assert row["ratio"] == pytest.approx(row["zcser_us"] / row["peer_us"])
        assert row["ratio_p99"] == pytest.approx(row["zcser_p99_us"] / row["peer_p99_us"])


def test_round_trip_rows_say_when_iceoryx2_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "round_trips", _fake_trips)
    monkeypatch.setattr(harness, "iceoryx2_missing", lambda: "iceoryx2 not installed (test)")
    rows = channel._round_trip_rows(True, "unused")
    missing = [r for r in rows if r["peer"] == "iceoryx2"]
    assert len(missing) == 1 and "not measured" in missing[0]["note"]
    assert "peer_us" not in missing[0]
    assert {r["peer"] for r in rows if "peer_us" in r} == {"mp.Pipe", "mp.Queue"}


@pytest.mark.skipif(harness.iceoryx2_missing() is not None, reason=str(harness.iceoryx2_missing()))
def test_iceoryx2_round_trips_run() -> None:
    prefix = f"zct{time.monotonic_ns() % 10**8}x"
    try:
        times = harness.round_trips("iceoryx2", bytes(1024), 50, prefix, warmup=5)
    finally:
        harness.cleanup(prefix)
    assert len(times) == 50 and all(0 < t < harness.WAIT for t in times)


def test_pinned_rows_pin_every_method_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, bool]] = []

    def trips(method: str, payload: Any, count: int, prefix: str, pin: bool = False) -> list[float]:
        asked.append((method, pin))
        return _fake_trips(method, payload, count, prefix, pin)

    monkeypatch.setattr(harness, "round_trips", trips)
    monkeypatch.setattr(harness, "iceoryx2_missing", lambda: None)
    rows = channel._round_trip_rows(True, "unused", pin=True)
    assert {m for m, pin in asked if pin} == set(harness.ROUND_TRIP)
    assert all(pin for _, pin in asked)
    assert all(r["case"] == channel.PINNED for r in rows)
    assert rows[0]["zcser_us"] == pytest.approx(2.5)


@pytest.mark.skipif(harness.two_cores() is None, reason="needs two CPUs")
@pytest.mark.parametrize("method", ["zcser", "mp.Pipe"])
def test_pinned_round_trips_run_each_end_on_its_own_cpu_and_restore_the_affinity(
    method: str,
) -> None:
    before = os.sched_getaffinity(0)
    prefix = f"zcp{time.monotonic_ns() % 10**8}x"
    try:
        times = harness.round_trips(method, bytes(1024), 20, prefix, warmup=2, pin=True)
    finally:
        harness.cleanup(prefix)
    assert len(times) == 20 and all(0 < t < harness.WAIT for t in times)
    assert os.sched_getaffinity(0) == before


def test_the_echo_runs_on_the_cpu_it_was_given() -> None:
    cores = harness.two_cores()
    if cores is None:
        pytest.skip("needs two CPUs")
    mine, theirs = harness._ctx.Pipe()
    proc = harness._ctx.Process(
        target=harness._run_on,
        args=(cores[1], lambda conn: conn.send(sorted(os.sched_getaffinity(0))), theirs),
    )
    proc.start()
    try:
        assert mine.poll(harness.WAIT) and mine.recv() == [cores[1]]
    finally:
        proc.join(harness.WAIT)
        mine.close()
        theirs.close()
