"""`python -m zcser bench --quick` runs every codec section end to end (no thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CODEC_SECTIONS = ["codec-large", "codec-decode-size", "codec-many-small", "codec-threshold"]


def _bench(*extra: str) -> subprocess.CompletedProcess[str]:
    sections = [arg for name in CODEC_SECTIONS for arg in ("--section", name)]
    return subprocess.run(
        [sys.executable, "-m", "zcser", "bench", "--quick", *sections, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_quick_bench_json_has_every_section_with_peer_ratios() -> None:
    proc = _bench("--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert sorted(result) == sorted(CODEC_SECTIONS)
    for name in ("codec-large", "codec-decode-size", "codec-many-small"):
        rows = [row for row in result[name] if row["pickle5_us"] is not None]
        assert rows, name
        for row in rows:
            assert row["zcser_us"] > 0 and row["pickle5_us"] > 0
            assert row["ratio"] == row["zcser_us"] / row["pickle5_us"]


def test_quick_bench_text_output() -> None:
    proc = _bench()
    assert proc.returncode == 0, proc.stderr
    for name in CODEC_SECTIONS:
        assert f"== {name}" in proc.stdout
    assert "ratio=" in proc.stdout
