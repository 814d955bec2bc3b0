"""`python -m zcser.tools.bench.transport --quick` runs end to end and prints its table (no thresholds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import unique_name

REPO = Path(__file__).resolve().parents[3]


def test_quick_bench_prints_the_table() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zcser.tools.bench.transport",
            "--quick",
            "--prefix",
            unique_name("bench"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "median of 3 runs" in out
    for row in (
        "1 KiB frames, frames/s",
        "8 MiB write (copy), GB/s",
        "8 MiB reserve+fill (copy), GB/s",
        "8 MiB reserve, no fill (zero-copy), GB/s",
        "np.copyto 8 MiB, GB/s",
        "np.copyto 8 MiB into 64 MiB, GB/s",
        "np.copyto 100 MB, GB/s",
        "ours write / memcpy 8 MiB",
    ):
        assert row in out, out
    first_row = next(line for line in out.splitlines() if line.startswith("1 KiB frames"))
    assert len(first_row.split()) == 8, first_row  # label words + ours, reference, memcpy, ratio
