"""Bench section "channel": zcser.Sender/Receiver between two processes against the peers users
have today, all measured in the same run (medians; ratios zcser / peer, below 1 is better for
times and above 1 for rates). The two-process plumbing lives in `zcser.tools.harness`."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from zcser.codec import memory
from zcser.tools import harness as _harness

Row = dict[str, Any]
MIB = 1 << 20

ICEORYX2 = "iceoryx2 on this machine kind (earlier, not this run): 315k msg/s"
RTT_ROUNDS = 3
"""Rounds of the round trip, each method once per round (its round trips pooled for the median
and the 99th percentile)."""
COPY_ROUNDS = 5
"""Rounds of the 100 MiB copying send, zcser, pickle5+shm and np.copyto once each per round."""
RATE_ROUNDS = 7
"""Rounds of the small-message rate, each method once per round: single runs on a shared VM
swing by +-30% (the same code runs at two speeds, depending on the core it lands on)."""
SMALL_DICT = {"id": 12345, "t": 1.5, "name": "sensor-01", "ok": True, "tags": [1, 2, 3]}


def _copyto_us(nbytes: int, repeat: int) -> float:
    """Single-process memcpy ceiling: np.copyto between two warm arrays."""
    src = np.ones(nbytes // 8)
    dst = np.zeros_like(src)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _row(case: str, zcser_us: float, peer: str, peer_us: float, note: str = "") -> Row:
    return {
        "case": case,
        "zcser_us": zcser_us,
        "peer": peer,
        "peer_us": peer_us,
        "ratio": zcser_us / peer_us,
        "note": note,
    }


def _gbps(nbytes: int, us: float) -> str:
    return f"{nbytes / us / 1e3:.2f} GB/s"


def bench_channel(quick: bool) -> list[Row]:
    """Big-object throughput, empty() latency, small-message round trip and rate."""
    prefix = f"zcbench{time.monotonic_ns() % 10**8}x"
    rows: list[Row] = []
    big = 16 * MIB if quick else 100 * MIB
    repeat = 3 if quick else 7
    try:
        runs: dict[str, list[float]] = {"zcser": [], "pickle5": [], "memcpy": []}
        for _ in range(1 if quick else COPY_ROUNDS):  # alternating, like the rate below
            runs["zcser"].append(_harness.one_way("zcser copy", big, repeat, prefix).median * 1e6)
            runs["pickle5"].append(
                _harness.one_way("pickle5+shm", big, repeat, prefix).median * 1e6
            )
            runs["memcpy"].append(_copyto_us(big, repeat))
        zc_us = statistics.median(runs["zcser"])
        label = f"{big // MIB} MiB object, copying send, one way"
        note = (
            f"zcser {_gbps(big, zc_us)} with {memory.default_threads()} streaming copy threads "
            "(Sender default; peers copy with one memcpy)"
        )
        for peer, key in (("np.copyto", "memcpy"), ("pickle5+shm", "pickle5")):
            ratios = [z / p for z, p in zip(runs["zcser"], runs[key], strict=True)]
            peer_us = statistics.median(runs[key])
            row = _row(label, zc_us, peer, peer_us, f"{note}, peer {_gbps(big, peer_us)}")
            row["ratio"] = statistics.median(ratios)
            row["note"] += (
                f"; median of {len(ratios)} alternating rounds, per-round ratios "
                f"{min(ratios):.2f}-{max(ratios):.2f}"
            )
            rows.append(row)
        p5_us = statistics.median(runs["pickle5"])
        for nbytes in (8 * MIB, big):
            empty = _harness.one_way("zcser empty()", nbytes, repeat, prefix).median * 1e6
            peer_us = (
                p5_us
                if nbytes == big
                else _harness.one_way("pickle5+shm", nbytes, repeat, prefix).median * 1e6
            )
            rows.append(
                _row(
                    f"{nbytes // MIB} MiB object, empty() send, one way",
                    empty,
                    "pickle5+shm",
                    peer_us,
                    f"{_gbps(nbytes, empty)} effective; size independent when below ~1 ms",
                )
            )
        rows.extend(_round_trip_rows(quick, prefix))
        if _harness.two_cores() is not None:
            rows.extend(_round_trip_rows(quick, prefix, pin=True))
        n = 2000 if quick else 20000
        rounds = 1 if quick else RATE_ROUNDS
        rates: dict[str, list[float]] = {m: [] for m in _harness.SMALL}
        for _ in range(rounds):  # alternating, so a slow spell of the VM hits every method
            for m in _harness.SMALL:
                rates[m].append(_harness.messages_per_second(m, SMALL_DICT, n, prefix))
        for peer in ("mp.Pipe", "mp.Queue"):
            ratios = [z / p for z, p in zip(rates["zcser"], rates[peer], strict=True)]
            rows.append(
                {
                    "case": "~100-byte dict messages per second, one way",
                    "zcser_per_s": statistics.median(rates["zcser"]),
                    "peer": peer,
                    "peer_per_s": statistics.median(rates[peer]),
                    "ratio": statistics.median(ratios),
                    "note": f"median of {rounds} alternating rounds; per-round ratios "
                    f"{min(ratios):.2f}-{max(ratios):.2f}; {ICEORYX2}",
                }
            )
    finally:
        _harness.cleanup(prefix)
    return rows


def _p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


PINNED = "1 KiB message round trip, each end pinned to its own CPU"
"""The pinned rows' case: every method's two processes run on two fixed CPUs (os.sched_setaffinity,
the same two for every method), so where the scheduler puts them does not decide the result;
the unpinned rows are what users get without pinning."""


def _round_trip_rows(quick: bool, prefix: str, pin: bool = False) -> list[Row]:
    """1 KiB ping-pong, zcser against iceoryx2 (publish-subscribe, when installed),
    multiprocessing.Pipe and Queue: median and p99 of every method, alternating rounds.
    `pin`: each end of every method on its own CPU (rows named PINNED)."""
    case = PINNED if pin else "1 KiB message round trip"
    count = 300 if quick else 1000
    rounds = 1 if quick else RTT_ROUNDS
    missing = _harness.iceoryx2_missing()
    methods = [m for m in _harness.ROUND_TRIP if m != "iceoryx2" or missing is None]
    times: dict[str, list[float]] = {m: [] for m in methods}
    medians: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):  # alternating, so a slow spell of the VM hits every method
        for m in methods:
            got = _harness.round_trips(m, bytes(1024), count, prefix, pin=pin)
            times[m] += got
            medians[m].append(statistics.median(got))
    zc = times["zcser"]
    zc_us, zc_p99 = statistics.median(zc) * 1e6, _p99(zc) * 1e6
    rows: list[Row] = []
    for peer in ("iceoryx2", "mp.Pipe", "mp.Queue"):
        if peer not in times:
            rows.append(
                {
                    "case": case,
                    "zcser_us": zc_us,
                    "zcser_p99_us": zc_p99,
                    "peer": peer,
                    "note": f"not measured: {missing}",
                }
            )
            continue
        row = _row(case, zc_us, peer, statistics.median(times[peer]) * 1e6)
        ratios = [z / p for z, p in zip(medians["zcser"], medians[peer], strict=True)]
        row["zcser_p99_us"] = zc_p99
        row["peer_p99_us"] = _p99(times[peer]) * 1e6
        row["ratio_p99"] = zc_p99 / row["peer_p99_us"]
        row["note"] = (
            f"{rounds} alternating rounds of {count} round trips each, pooled; per-round median "
            f"ratios {min(ratios):.2f}-{max(ratios):.2f}"
        )
        if peer == "iceoryx2":
            row["note"] += "; iceoryx2 polls receive() (it has no blocking receive)"
        rows.append(row)
    return rows
