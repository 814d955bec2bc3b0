"""Mutate a LIVE channel's shared memory (OIEB, metadata block, frame header, message bytes) and
check what the receiver and sender do next: only transports/zcser errors, never a crash or a
hang, and with checksums on never an object that was not sent.

Cases come from hypothesis and run in a long-lived worker subprocess (tests/fixtures/
fuzz_worker.py) under a watchdog; a crash or hang restarts the worker and fails the case. A
failing case is appended to tests/fixtures/fuzz_live_cases.json, which `test_replay` runs on
every CI run (it also holds hand-picked cases for each region). CI: 2 x 150 cases; `make soak`:
2 x 5,000.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RUN_TOKEN, unique_name
from fixtures.procs import Script
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transports.admin import collect_garbage

CASES_FILE = Path(__file__).resolve().parents[2] / "fixtures" / "fuzz_live_cases.json"
TARGETS = ["oieb", "metadata", "header", "message", "message"]
RING = 256 << 10
INTERESTING = [0, 1, 7, 15, 16, 17, 63, 64, 128, RING - 1, RING, RING + 1, 2**31, 2**32]
INTERESTING += [2**63, 2**64 - 1]
WATCHDOG = 20.0
WORKER_CODE = """
import sys
sys.path.insert(0, "tests")
from fixtures.fuzz_worker import main
main()
"""


class _Worker:
    """The worker subprocess; restarted after a crash or hang."""

    def __init__(self) -> None:
        self._child: Script | None = None

    def run(self, case: dict[str, Any]) -> list[str]:
        if self._child is None or self._child.proc.poll() is not None:
            self._child = Script(WORKER_CODE, prelude="")
        child = self._child
        child.send(json.dumps(case))
        try:
            line = child.line(WATCHDOG)
        except AssertionError:
            self._child = None
            collect_garbage(RUN_TOKEN)
            return [f"HANG (no answer within {WATCHDOG} s)"]
        if line is None:
            rc = child.wait(10)
            err = child.stderr()[-2000:]
            self._child = None
            collect_garbage(RUN_TOKEN)
            return [f"CRASH (exit {rc}): {err}"]
        result: list[str] = json.loads(line)
        return result

    def close(self) -> None:
        if self._child is not None:
            self._child.kill()


@pytest.fixture(scope="module")
def worker() -> Iterator[_Worker]:
    w = _Worker()
    yield w
    w.close()


def _problems(case: dict[str, Any], outcomes: list[str]) -> list[str]:
    """What is wrong with these outcomes (empty: fine)."""
    bad = [o for o in outcomes if o.startswith(("BAD", "CRASH", "HANG"))]
    if "WRONG" in outcomes:
        data_hit = any(m[0] == "message" for m in case["mutations"])
        if case["checksum"] or not data_hit:
            bad.append("WRONG: decoded into an object that was never sent")
    return bad


def _check(worker: _Worker, case: dict[str, Any]) -> list[str]:
    outcomes = worker.run({**case, "name": unique_name("fz")})
    problems = _problems(case, outcomes)
    assert not problems, f"{case}: {outcomes}"
    return outcomes


def _record(case: dict[str, Any]) -> None:
    """Keep a failing case as a regression fixture (replayed by test_replay)."""
    saved = _saved()
    if case not in [entry["case"] for entry in saved]:
        saved.append({"why": "found by test_fuzz_live", "case": case})
        CASES_FILE.write_text(json.dumps(saved, indent=1) + "\n")


_mutation = st.tuples(
    st.sampled_from(TARGETS),
    st.integers(0, 1 << 20),
    st.sampled_from(["xor", "u64"]),
    st.one_of(st.integers(1, 255), st.sampled_from(INTERESTING), st.integers(0, 2**64 - 1)),
)


def _cases(checksum: bool) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "checksum": st.just(checksum),
            "copy": st.booleans(),
            "mutations": st.lists(_mutation, min_size=1, max_size=3),
        }
    )


def _fuzz(worker: _Worker, checksum: bool, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_cases(checksum))
    def run(case: dict[str, Any]) -> None:
        last[0] = case
        _check(worker, case)

    last: list[dict[str, Any]] = [{}]
    try:
        run()
    except AssertionError:
        _record(last[0])  # hypothesis replays the minimal failing case last
        raise


@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "no-checksum"])
def test_fuzz_live_channel(worker: _Worker, checksum: bool) -> None:
    _fuzz(worker, checksum, 150)


@pytest.mark.soak
@pytest.mark.parametrize("checksum", [True, False], ids=["checksum", "no-checksum"])
def test_fuzz_live_channel_soak(worker: _Worker, checksum: bool) -> None:
    _fuzz(worker, checksum, 5000)


def _saved() -> list[dict[str, Any]]:
    return list(json.loads(CASES_FILE.read_text()))


@pytest.mark.parametrize("entry", _saved(), ids=lambda e: e["why"][:60])
def test_replay(worker: _Worker, entry: dict[str, Any]) -> None:
    outcomes = _check(worker, entry["case"])
    if "expect_first" in entry:
        assert outcomes[0] in entry["expect_first"], outcomes
