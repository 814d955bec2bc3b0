"""`zcser bench --plot`: rows grouped into charts by section and unit, and a real PNG written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from zcser.tools.plot import panels

REPO = Path(__file__).resolve().parents[3]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_panels_group_by_section_and_unit_and_skip_derived_values() -> None:
    results = {
        "codec": [
            {"case": "a", "zcser_us": 2.0, "pickle5_us": 4.0, "ratio": 0.5, "note": "x"},
            {"case": "b", "zcser_us": 3.0, "pickle5_us": None, "ratio": None, "note": ""},
        ],
        "snapshot": [
            {"case": "load 4 MB (us)", "zcser": 10.0, "npy": 20.0},
            {"case": "save 4 MB (GB/s)", "zcser": 1.5, "npy": 0.5, "ratio_vs_best": 3.0},
        ],
    }
    charts = {p.title: p for p in panels(results)}
    assert set(charts) == {"codec (µs)", "snapshot (µs)", "snapshot (GB/s)"}
    assert charts["codec (µs)"].bars == {"a": {"zcser": 2.0, "pickle5": 4.0}, "b": {"zcser": 3.0}}
    assert charts["snapshot (µs)"].bars == {"load 4 MB": {"zcser": 10.0, "npy": 20.0}}
    assert charts["snapshot (GB/s)"].higher_is_better
    assert not charts["snapshot (µs)"].higher_is_better
    assert charts["snapshot (GB/s)"].metrics == ["zcser", "npy"]


def test_rows_naming_their_peer_merge_into_one_group_per_case() -> None:
    results = {
        "channel": [
            {"case": "rtt", "zcser_us": 9.0, "peer": "mp.Pipe", "peer_us": 80.0, "ratio": 0.1},
            {"case": "rtt", "zcser_us": 9.0, "peer": "mp.Queue", "peer_us": 120.0, "ratio": 0.1},
            {"case": "rate", "zcser_per_s": 9e4, "peer": "mp.Pipe", "peer_per_s": 2e4},
        ]
    }
    charts = {p.title: p for p in panels(results)}
    assert charts["channel (µs)"].bars == {
        "rtt": {"zcser": 9.0, "mp.Pipe": 80.0, "mp.Queue": 120.0}
    }
    assert charts["channel (per s)"].bars == {"rate": {"zcser": 9e4, "mp.Pipe": 2e4}}
    assert charts["channel (per s)"].higher_is_better


def test_each_peers_p99_is_a_bar_of_its_own() -> None:
    row = {"case": "rtt", "zcser_us": 9.0, "zcser_p99_us": 20.0, "ratio_p99": 0.5}
    results = {
        "channel": [
            {**row, "peer": "iceoryx2", "peer_us": 8.0, "peer_p99_us": 40.0},
            {**row, "peer": "mp.Pipe", "peer_us": 80.0, "peer_p99_us": 140.0},
        ]
    }
    charts = {p.title: p for p in panels(results)}
    assert charts["channel (µs)"].bars == {
        "rtt": {
            "zcser": 9.0,
            "zcser_p99": 20.0,
            "iceoryx2": 8.0,
            "iceoryx2 p99": 40.0,
            "mp.Pipe": 80.0,
            "mp.Pipe p99": 140.0,
        }
    }


def test_panels_ignore_rows_without_numbers() -> None:
    assert panels({"empty": [{"case": "nothing", "note": "n/a"}]}) == []


def test_bench_plot_writes_a_png_and_keeps_json_on_stdout(tmp_path: Path) -> None:
    out = tmp_path / "bench.png"
    command = ["bench", "--quick", "--json", "--section", "codec-threshold", "--plot", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "zcser", *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"codec-threshold"}
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 10_000
