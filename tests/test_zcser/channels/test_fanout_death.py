"""Fan-out under SIGKILL: a subscriber or the publisher killed at a random moment. Nobody
hangs, the others go on, nothing a live view can see is overwritten, nothing is left in
/dev/shm or the lock directory (the conftest leak check)."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from typing import Any

import numpy as np
import pytest
from conftest import unique_name

import zcser
from zcser import errors

CTX = mp.get_context("fork")


def message(i: int) -> dict[str, Any]:
    return {"i": i, "arr": np.full(30_000 + 1000 * (i % 7), i, np.int32)}


def check(obj: dict[str, Any]) -> int:
    i = obj["i"]
    arr = obj["arr"]
    assert arr.shape == (30_000 + 1000 * (i % 7),) and arr[0] == i and arr[-1] == i
    return int(i)


def reader(q: Any, index: int, name: str, policy: str, keep: int, seed: int) -> None:
    rng = random.Random(seed)
    sub = zcser.Subscriber(name, policy=policy, timeout=10)
    q.put("ready")
    kept: list[dict[str, Any]] = []
    got = []
    for obj in sub:
        got.append(check(obj))
        kept.append(obj)
        del kept[:-keep]
        for old in kept:  # views still alive: their memory is untouched
            check(old)
        if rng.random() < 0.1:
            time.sleep(rng.random() * 0.01)
    q.put((index, got))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_subscriber_killed_at_a_random_moment_frees_its_cursor_and_pins(seed: int) -> None:
    rng = random.Random(seed)
    name = unique_name("fk")
    n = 300
    q = CTX.Queue()
    with zcser.Publisher(name, capacity=2 << 20, subscribers=3) as pub:
        procs = [
            CTX.Process(target=reader, args=(q, k, name, policy, keep, seed), daemon=True)
            for k, (policy, keep) in enumerate((("block", 3), ("block", 3), ("drop", 5)))
        ]
        for p in procs:
            p.start()
        for _ in procs:
            assert q.get(timeout=30) == "ready"
        victims = rng.sample(procs[1:], rng.randint(1, 2))
        kill_at = {id(v): rng.randrange(n) for v in victims}
        for i in range(n):
            for v in victims:
                if kill_at[id(v)] == i:
                    os.kill(v.pid, signal.SIGKILL)
            pub.send(message(i), timeout=30)  # never waits on the dead
    results = dict(q.get(timeout=60) for v in procs if v not in victims)
    assert results[0] == list(range(n))  # the block survivor got everything, in order
    if 2 in results:  # the drop subscriber survived: what it got is in order, up to the end
        assert results[2] == sorted(results[2]) and results[2][-1] == n - 1
    for p in procs:
        p.join(30)
        assert p.exitcode == (-signal.SIGKILL if p in victims else 0)


def publisher(q: Any, name: str) -> None:
    pub = zcser.Publisher(name, capacity=2 << 20, subscribers=2)
    q.put("ready")
    i = 0
    while True:
        pub.send(message(i), timeout=None)
        i += 1


@pytest.mark.parametrize("seed", [1, 2])
def test_a_publisher_killed_at_a_random_moment_ends_after_what_it_published(seed: int) -> None:
    rng = random.Random(seed)
    name = unique_name("fk")
    q = CTX.Queue()
    p = CTX.Process(target=publisher, args=(q, name), daemon=True)
    p.start()
    try:
        assert q.get(timeout=30) == "ready"
        sub = zcser.Subscriber(name, timeout=10)
        got = []
        kept: list[dict[str, Any]] = []
        deadline = rng.randint(20, 400)
        with pytest.raises(errors.WriterDead):
            while True:
                obj = sub.recv(timeout=30)
                got.append(check(obj))
                kept = [*kept[-2:], obj]
                if len(got) == deadline:
                    os.kill(p.pid, signal.SIGKILL)
        assert got == list(range(got[0], got[0] + len(got)))  # in order, none lost
        assert len(got) >= deadline
        for obj in kept:
            check(obj)  # the dead publisher's memory stays mapped while views live
        del obj, kept
        sub.close()
    finally:
        p.kill()
        p.join(30)


EXIT_CHILD = """
import sys
import zcser
pub = zcser.Publisher(sys.argv[1], capacity=1 << 20, subscribers=2)
pub.send({"i": 0})
print("sent", flush=True)
sys.stdin.readline()
raise KeyboardInterrupt  # as a Ctrl-C in a script that made its publisher without `with`
"""


def test_a_publisher_left_open_at_exit_is_closed_and_its_names_removed() -> None:
    """A script that makes its Publisher without `with` and stops on an uncaught exception:
    the publisher closes at interpreter exit (its subscriber ends with Closed after the last
    message, not WriterDead) and its segment is gone from /dev/shm."""
    import subprocess
    import sys

    from transports.zerobuffer import posix

    name = unique_name("fx")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen(
        [sys.executable, "-c", EXIT_CHILD, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline() == "sent\n"
        with zcser.Subscriber(name, timeout=10) as sub:
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait(timeout=60)
            assert "KeyboardInterrupt" in child.stderr.read()  # type: ignore[union-attr]
            assert not posix.shm_exists(name)
            with pytest.raises(errors.Closed):
                sub.recv(timeout=10)
    finally:
        child.kill()
        child.wait()
