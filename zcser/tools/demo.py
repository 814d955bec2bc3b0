"""`python -m zcser demo`: a writer process sends objects holding 8 MiB and 100 MiB arrays plus
small fields to this process, by copying send and by zero-copy `empty()` send; this process
checks values, zero-copy by address and read-only views, and prints latency and GB/s next to
`multiprocessing.Queue` and pickle-5-over-`shared_memory` measured in the same run, plus its own
private memory growth (USS) while holding a 100 MiB message. Exit status 1 if any check fails.
"""

from __future__ import annotations

import os
import time

from zcser.tools import harness as _harness

SIZES = (8 << 20, 100 << 20)
REPEAT = {8 << 20: 15, 100 << 20: 5}
QUICK_REPEAT = {8 << 20: 3, 100 << 20: 2}


def _fmt_mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / (1 << 20):.2f} MiB"


def run(quick: bool = False, prefix: str | None = None) -> int:
    """Run the demo and print its table; returns the exit status (0: every check passed)."""
    prefix = prefix or f"zcdemo{os.getpid()}x"
    start = time.perf_counter()
    results: list[_harness.OneWay] = []
    failures: list[str] = []
    repeats = QUICK_REPEAT if quick else REPEAT
    print("zcser demo: {'data': float64 array, 'i': int, 't': float, 'label': str}")
    print("from a writer process to this one; one-way latency, median of timed messages\n")
    print(f"{'size':>8}  {'method':<14}{'latency':>12}{'GB/s':>9}{'vs Queue':>10}  reader USS")
    zero_copy = "zcser empty()"
    try:
        for nbytes in SIZES:
            row: list[_harness.OneWay] = []
            for method in _harness.ONE_WAY:
                big = nbytes == SIZES[-1]
                result = _harness.one_way(method, nbytes, repeats.get(nbytes, 3), prefix, uss=big)
                row.append(result)
                failures.extend(result.failures)
            queue = row[-1].median
            for r in row:
                rate = "   (none)" if r.method == zero_copy else f"{r.gbps:>9.2f}"
                print(
                    f"{nbytes >> 20:>4} MiB  {r.method:<14}{r.median * 1e3:>9.2f} ms"
                    f"{rate}{queue / r.median:>9.1f}x  {_fmt_mib(r.uss_growth)}"
                )
            results.extend(row)
    finally:
        left = _harness.cleanup(prefix)
    if left:
        failures.append(f"left behind in shared memory: {[str(p) for p in left]}")
    print(
        "\nzcser views are read-only, inside the receiver's shared-memory mapping (checked by "
        "address);\nempty() arrays were written by the writer in place (no copy on either side): "
        "no bytes move,\nso a rate means nothing there (none); its latency does not grow with "
        "the size."
    )
    print(
        f"checks: {len(results)} runs, {len(failures)} failures, {time.perf_counter() - start:.1f} s"
    )
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0
