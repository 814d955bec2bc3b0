"""`python -m zcser demo`: runs end to end in real processes, checks pass, nothing is left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import unique_name

from zcser import _demo, _harness

REPO = Path(__file__).resolve().parent.parent


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
    assert "100.0" in out.split("mp.Queue")[-1]  # the Queue reader holds a private 100 MiB copy
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
