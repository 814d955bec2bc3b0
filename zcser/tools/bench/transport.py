"""Transport benchmark: our ZeroBuffer against the reference `zerobuffer-ipc`, same run, two processes.

`python -m zcser.tools.bench.transport [--quick] [--json] [--runs N]` prints medians and ratios:
1 KiB frames/s one way, 8 MiB frames GB/s (copying `write`, copying `reserve`+fill, and
zero-copy `reserve` with no fill), and single-process `np.copyto` GB/s as the copy ceiling.
Numbers are noisy on a shared machine; only ratios measured in the same run mean much.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import posix_ipc

import transports.zerobuffer as ours

reference: Any
try:
    import zerobuffer as reference
except ImportError:  # the reference is a test-only dependency
    reference = None

KIB = 1 << 10
MIB = 1 << 20
SMALL = KIB
BIG = 8 * MIB
HUGE = 100_000_000
READ_TIMEOUT = 30.0
_names = itertools.count()
_prefix = [f"zcbench{os.getpid()}x"]


@dataclass(frozen=True)
class Sizes:
    """How much work one run does (full or --quick). A batch of 8 MiB frames should exceed the
    64 MiB ring, so the untimed warm-up batch faults every page of the mapping in."""

    runs: int
    small_ours: int
    small_ref: int
    big_frames: int
    memcpy_repeats: int


FULL = Sizes(runs=5, small_ours=50_000, small_ref=10_000, big_frames=48, memcpy_repeats=16)
QUICK = Sizes(runs=3, small_ours=3_000, small_ref=600, big_frames=9, memcpy_repeats=2)


def _name() -> str:
    return f"{_prefix[0]}{next(_names)}"


def _unlink_reference_semaphores(name: str) -> None:
    """The reference's Reader.close() leaves both semaphores behind (its bug 5)."""
    for sem in (f"/sem-w-{name}", f"/sem-r-{name}"):
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(sem)


# ---------------------------------------------------------------- reader process


def _reader_main(
    impl: str, name: str, payload: int, runs: int, count: int, conn: Connection
) -> None:
    """Read and release `count` frames per run, telling the writer after each run."""
    if impl == "ours":
        r = ours.Reader(name, ours.BufferConfig(metadata_size=0, payload_size=payload))
        conn.send("ready")
        for _ in range(runs):
            for _ in range(count):
                r.read(timeout=READ_TIMEOUT).release()
            conn.send("done")
        r.close()
        return
    assert reference is not None
    rr = reference.Reader(name, reference.BufferConfig(64, payload))
    conn.send("ready")
    try:
        for _ in range(runs):
            for _ in range(count):
                frame = rr.read_frame(READ_TIMEOUT)
                if frame is None:
                    raise TimeoutError("reference reader got no frame")
                rr.release_frame(frame)
            conn.send("done")
    finally:
        rr.close()
        _unlink_reference_semaphores(name)


# ---------------------------------------------------------------- writer side, timed


WriteOne = Callable[[Any], None]


def _ours_write(src: np.ndarray) -> WriteOne:
    return lambda w: w.write(src, timeout=READ_TIMEOUT)


def _ours_reserve_fill(src: np.ndarray) -> WriteOne:
    def one(w: Any) -> None:
        buf = w.reserve(len(src), timeout=READ_TIMEOUT)
        np.copyto(np.frombuffer(buf, np.uint8), src)
        del buf
        w.commit()

    return one


def _ours_reserve_only(n: int) -> WriteOne:
    def one(w: Any) -> None:
        buf = w.reserve(n, timeout=READ_TIMEOUT)
        buf[0] = 1
        del buf
        w.commit()

    return one


def _ref_write(src: np.ndarray) -> WriteOne:
    return lambda w: w.write_frame(src)


def _ref_reserve_fill(src: np.ndarray) -> WriteOne:
    def one(w: Any) -> None:
        np.copyto(np.frombuffer(w.get_frame_buffer(len(src)), np.uint8), src)
        w.commit_frame()

    return one


def _ref_reserve_only(n: int) -> WriteOne:
    def one(w: Any) -> None:
        w.get_frame_buffer(n)[0] = 1
        w.commit_frame()

    return one


def _expect(conn: Connection, proc: Any, word: str, timeout: float) -> None:
    """Wait for the reader's `word`; fail fast if the reader process dies instead."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.05):
        if not proc.is_alive():
            raise RuntimeError(f"reader process exited ({proc.exitcode}) before saying {word!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"reader did not say {word!r} within {timeout} s")
    got = conn.recv()
    if got != word:
        raise RuntimeError(f"reader said {got!r}, expected {word!r}")


class _Lane:
    """One reader process plus the writer feeding it; `run()` times one batch of frames."""

    def __init__(self, impl: str, payload: int, batches: int, count: int) -> None:
        self.impl = impl
        self.count = count
        name = _name()
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        args = (impl, name, payload, batches, count, child)
        self.proc = ctx.Process(target=_reader_main, args=args)
        self.proc.start()
        self.writer: Any = None
        try:
            _expect(self.conn, self.proc, "ready", 60)
            self.writer = ours.Writer(name) if impl == "ours" else reference.Writer(name)
        except BaseException:
            self.close()
            raise

    def run(self, write_one: WriteOne) -> float:
        """Seconds from the first write to the reader having released the batch's last frame."""
        start = time.perf_counter()
        for _ in range(self.count):
            write_one(self.writer)
        _expect(self.conn, self.proc, "done", 120)
        return time.perf_counter() - start

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _memcpy_seconds(nbytes: int, runs: int, repeats: int, ring: int = 0) -> list[float]:
    """Seconds per single np.copyto of `nbytes`, one value (the mean of `repeats`) per run.
    With `ring`, each copy goes to the next slot of a `ring`-byte destination, as frames do."""
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros(max(ring, nbytes), np.uint8)
    slots = len(dst) // nbytes
    views = [dst[i * nbytes : (i + 1) * nbytes] for i in range(slots)]
    for view in views:
        np.copyto(view, src)
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        for i in range(repeats):
            np.copyto(views[i % slots], src)
        out.append((time.perf_counter() - start) / repeats)
    return out


# ---------------------------------------------------------------- report

SMALL_ROW = "1 KiB frames, frames/s"
WRITE_ROW = "8 MiB write (copy), GB/s"
FILL_ROW = "8 MiB reserve+fill (copy), GB/s"
ZERO_ROW = "8 MiB reserve, no fill (zero-copy), GB/s"
MEMCPY_HOT = "np.copyto 8 MiB, GB/s"
MEMCPY_RING = "np.copyto 8 MiB into 64 MiB, GB/s"
MEMCPY_HUGE = "np.copyto 100 MB, GB/s"
COPY_ROWS = {WRITE_ROW: "write", FILL_ROW: "reserve+fill"}


def _case(
    sizes: Sizes, payload: int, counts: tuple[int, int], ones: tuple[WriteOne, WriteOne], copy: bool
) -> dict[str, list[float]]:
    """Seconds per batch for ours, the reference and (for copying cases) a same-sized memcpy
    into a ring-sized array, taken in turn within each run so drifting load hits all alike.
    The first (warm-up) batch of each lane faults its mapping in and is dropped."""
    have_ref = reference is not None
    out: dict[str, list[float]] = {"ours": [], "ref": [], "memcpy": []}
    lane = _Lane("ours", payload, sizes.runs + 1, counts[0])
    ref_lane = _Lane("ref", payload, sizes.runs + 1, counts[1]) if have_ref else None
    try:
        lane.run(ones[0])
        if ref_lane is not None:
            ref_lane.run(ones[1])
        for _ in range(sizes.runs):
            out["ours"].append(lane.run(ones[0]))
            if ref_lane is not None:
                out["ref"].append(ref_lane.run(ones[1]))
            if copy:
                per_copy = _memcpy_seconds(BIG, 1, counts[0], payload)[0]
                out["memcpy"].append(per_copy * counts[0])
    finally:
        lane.close()
        if ref_lane is not None:
            ref_lane.close()
    return out


def run(sizes: Sizes) -> dict[str, Any]:
    """Measure everything; return medians (frames/s or GB/s) and medians of per-run ratios."""
    big_src = np.ones(BIG, np.uint8)
    small_src = np.ones(SMALL, np.uint8)
    big_payload = 64 * MIB
    r = sizes.runs
    big = (sizes.big_frames, sizes.big_frames)
    cases: list[tuple[str, int, tuple[int, int], tuple[WriteOne, WriteOne]]] = [
        (SMALL_ROW, MIB, (sizes.small_ours, sizes.small_ref), (_ours_write(small_src), _ref_write(small_src))),
        (WRITE_ROW, big_payload, big, (_ours_write(big_src), _ref_write(big_src))),
        (FILL_ROW, big_payload, big, (_ours_reserve_fill(big_src), _ref_reserve_fill(big_src))),
        (ZERO_ROW, big_payload, big, (_ours_reserve_only(BIG), _ref_reserve_only(BIG))),
    ]  # fmt: skip
    rows: dict[str, dict[str, float]] = {}
    ratios: dict[str, float] = {}
    for label, payload, counts, ones in cases:
        t = _case(sizes, payload, counts, ones, copy=label in COPY_ROWS)
        amount = [float(c) if label == SMALL_ROW else c * BIG / 1e9 for c in counts]
        rate = {k: [a / x for x in t[k]] for k, a in (("ours", amount[0]), ("ref", amount[1]))}
        row = rows[label] = {"ours": statistics.median(rate["ours"])}
        if t["ref"]:
            row["ref"] = statistics.median(rate["ref"])
            pairs = zip(rate["ours"], rate["ref"], strict=True)
            row["ours/ref"] = statistics.median(o / f for o, f in pairs)
        if t["memcpy"]:
            pairs = zip(t["ours"], t["memcpy"], strict=True)
            key = f"ours {COPY_ROWS[label]} / memcpy 8 MiB into 64 MiB, per run"
            ratios[key] = statistics.median(m / o for o, m in pairs)
    for label, nbytes, ring in (
        (MEMCPY_HOT, BIG, 0),
        (MEMCPY_RING, BIG, big_payload),
        (MEMCPY_HUGE, HUGE, 0),
    ):
        t1 = _memcpy_seconds(nbytes, r, sizes.memcpy_repeats, ring)
        rows[label] = {"memcpy": _median_rate(t1, nbytes / 1e9)}
    for label, short in COPY_ROWS.items():
        ratios[f"ours {short} / memcpy 8 MiB"] = rows[label]["ours"] / rows[MEMCPY_HOT]["memcpy"]
    return {"runs": r, "reference": reference is not None, "rows": rows, "ratios": ratios}


def _median_rate(times: list[float], amount: float) -> float:
    return amount / statistics.median(times)


def _fmt(value: float | None) -> str:
    """Thousands separators for rates, two decimals for GB/s and ratios, '-' for n/a."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.2f}"


def table(result: dict[str, Any]) -> str:
    """The result as a small fixed-width table."""
    head = f"{'case':44} {'ours':>12} {'reference':>12} {'memcpy':>10} {'ours/ref':>9}"
    lines = [f"transport benchmark: 2 processes, median of {result['runs']} runs", head]
    lines.append("-" * len(head))
    for label, row in result["rows"].items():
        cells = [_fmt(row.get(k)) for k in ("ours", "ref", "memcpy", "ours/ref")]
        lines.append(f"{label:44} {cells[0]:>12} {cells[1]:>12} {cells[2]:>10} {cells[3]:>9}")
    lines.append("-" * len(head))
    for key, value in result["ratios"].items():
        lines.append(f"{key:52} {value:>4.2f}")
    if not result["reference"]:
        lines.append("reference zerobuffer-ipc not installed: no reference columns")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry: print the table (or JSON)."""
    parser = argparse.ArgumentParser(
        prog="python -m zcser.tools.bench.transport", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="tiny runs (a few seconds)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--runs", type=int, default=None, help="runs per measurement")
    parser.add_argument("--prefix", default=None, help="prefix for the buffer names it creates")
    args = parser.parse_args(argv)
    if args.prefix:
        _prefix[0] = args.prefix
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(
            args.runs,
            *(
                getattr(sizes, f)
                for f in ("small_ours", "small_ref", "big_frames", "memcpy_repeats")
            ),
        )
    result = run(sizes)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
