"""`python -m zcser bench --quick --section net` runs end to end (numbers are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_quick_net_bench_reports_peers_and_ratios() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "zcser", "bench", "--quick", "--section", "net", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["net"]
    timed = [r for r in rows if "zcser_us" in r]
    assert len(timed) == 2
    for row in timed:
        assert row["zcser_us"] > 0 and row["peer_us"] > 0
        assert row["ratio"] == row["zcser_us"] / row["peer_us"]
    assert "0 receive-side copies" in timed[1]["note"]
    rate = next(r for r in rows if "zcser_msgs_per_s" in r)
    assert rate["ratio"] == rate["zcser_msgs_per_s"] / rate["peer_msgs_per_s"]
