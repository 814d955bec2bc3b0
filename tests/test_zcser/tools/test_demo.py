"""`python -m zcser demo`: runs end to end in real processes, checks pass, nothing is left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import unique_name

from zcser.tools import demo as _demo
from zcser.tools import harness as _harness

REPO = Path(__file__).resolve().parents[3]


def test_demo_runs_clean_and_prints_the_table() -> None:
    prefix = unique_name("demo")
    done = subprocess.run(
        [sys.executable, "-m", "zcser", "demo", "--quick", "--prefix", prefix],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for method in _harness.ONE_WAY:
        assert out.count(method) >= 2, out
    assert "0 failures" in out and "FAILED" not in out
    uss = {
        method: float(line.split()[-2])
        for line in out.splitlines()
        for method in _harness.ONE_WAY
        if line.split()[:2] == ["100", "MiB"] and method in line
    }
    assert uss["mp.Queue"] >= 99  # the Queue reader holds a private 100 MiB copy
    assert uss["zcser copy"] < 1 and uss["zcser empty()"] < 1  # views of shared memory
    assert not _harness.leftovers(prefix)


def test_demo_exits_nonzero_when_a_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _harness.one_way

    def broken(
        method: str, nbytes: int, repeat: int, prefix: str, uss: bool = False
    ) -> _harness.OneWay:
        result = real(method, nbytes, 1, prefix, uss=uss, warmup=0)
        if method == "zcser copy":
            result.failures.append("zcser copy: injected failure")
        return result

    monkeypatch.setattr(_harness, "one_way", broken)
    monkeypatch.setattr(_demo, "SIZES", (1 << 20,))
    assert _demo.run(quick=True, prefix=unique_name("demo")) == 1


def test_channel_bench_section_quick_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zcser", "bench", "--quick", "--section", "channel", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["channel"]
    peers = {(row["case"], row["peer"]) for row in rows}
    assert ("1 KiB message round trip", "mp.Pipe") in peers
    assert ("~100-byte dict messages per second, one way", "mp.Queue") in peers
    for row in rows:
        if "peer_us" not in row and "peer_per_s" not in row:
            assert "not measured" in row["note"]  # a peer that is not installed says so
        elif "zcser_us" in row:
            assert row["ratio"] == row["zcser_us"] / row["peer_us"] > 0
        else:
            assert row["ratio"] == row["zcser_per_s"] / row["peer_per_s"] > 0


@pytest.mark.parametrize(
    "script", [["quickstart.py"], ["producer_pool.py", "--producers", "2", "--batches", "3"]]
)
def test_channel_examples_run_and_clean_up(script: list[str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / script[0]), *script[1:]],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err
    assert not _harness.leftovers(f"zcser-{proc.pid}-")
