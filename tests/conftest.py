"""Shared fixtures: unique resource names per test run and a check that nothing is left behind."""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SHM_DIR = Path("/dev/shm")
LOCK_DIR = Path("/tmp/zerobuffer")

# Every shm/semaphore/lock name a test makes starts with this token, so concurrent test runs on
# the same machine never see (or blame) each other's resources.
RUN_TOKEN = f"zt{uuid.uuid4().hex[:8]}"
_counter = itertools.count()


def unique_name(tag: str = "b") -> str:
    """A buffer name unique to this test run (short: macOS caps shm names at 31 bytes)."""
    return f"{RUN_TOKEN}{tag}{next(_counter)}"


def ours() -> set[str]:
    """Everything in /dev/shm and the lock directory that this test run created and left."""
    found: set[str] = set()
    for folder in (SHM_DIR, LOCK_DIR):
        with contextlib.suppress(FileNotFoundError):
            found.update(str(folder / n) for n in os.listdir(folder) if RUN_TOKEN in n)
    return found


@pytest.fixture
def shm_name() -> str:
    return unique_name()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail any test that leaves a shm segment, semaphore or lock file of this run behind."""
    before = ours()
    yield
    left = ours() - before
    for path in left:
        with contextlib.suppress(OSError):
            os.unlink(path)
    assert not left, f"test left resources behind: {sorted(left)}"


@pytest.fixture(params=["compiled", "python"])
def fanout_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The fan-out's compiled per-message paths (put, take, claim, wait), or the Python code
    alone: a test that takes it runs with both, so both keep the same rules."""
    from transports.fanout import reader, segment, writer

    if request.param == "compiled":
        if segment.native is None:
            pytest.skip("transports._native was not built")
    else:
        monkeypatch.setattr(writer, "_NATIVE", None)
        monkeypatch.setattr(reader, "_TAKE", None)
        monkeypatch.setattr(reader, "_WAIT", None)
        monkeypatch.setattr(reader, "_CLAIM", reader._claim_py)
    yield request.param
