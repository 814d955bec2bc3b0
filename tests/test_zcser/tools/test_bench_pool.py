"""The pool bench section's runs work (tiny counts), and its pinned runs pin what they say."""

from __future__ import annotations

import os

import pytest

from zcser.tools.bench import pool


@pytest.mark.parametrize("method", pool._peers())
def test_a_run_delivers_every_producers_messages(method: str) -> None:
    busy: list[float] = []
    assert pool._run(method, "dict", 2, 50, busy=busy) > 0
    assert len(busy) == 1 and 0 < busy[0] < 1.5  # CPU time over the run's time
    assert pool._run(method, "1 MiB array", 2, 3) > 0


def _where_am_i(
    make: object, kind: str, count: int, ready: object, go: object, cpus: object
) -> None:
    _producer(make, kind, count, ready, go, cpus)  # type: ignore[arg-type]
    seen.put(sorted(os.sched_getaffinity(0)))


seen = pool._ctx.SimpleQueue()
_producer = pool._zcser_producer


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs")
def test_a_pinned_run_puts_the_producers_on_one_cpu_and_restores_the_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    monkeypatch.setattr(pool, "_zcser_producer", _where_am_i)
    assert pool._run("zcser", "dict", 3, 40, pin=True) > 0
    assert [seen.get() for _ in range(3)] == [[cpus[0]]] * 3
    assert os.sched_getaffinity(0) == before


def test_pinned_runs_are_refused_for_peers() -> None:
    with pytest.raises(ValueError, match="zcser"):
        pool._run("mp.Queue", "dict", 1, 10, pin=True)
