"""zcser.load / snapshot_info on paths that are not snapshot files: a FIFO, a symlink, a huge
sparse file, a file larger than its header says (docs/security.md). Each is refused with
CorruptSnapshot before the file is read, never by blocking or by a raw OSError."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import unique_name

import zcser
from zcser.errors import CorruptSnapshot

REPO = Path(__file__).resolve().parents[3]
CHILD_TIMEOUT = 60
"""Seconds a child may take: a bound on 'did not block', not a performance threshold."""

HUGE = 1 << 40
"""A sparse file of 1 TiB: more than this machine could copy into memory."""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=env,
        cwd=REPO,
    )


def test_load_and_info_refuse_a_fifo_instead_of_blocking(tmp_path: Path) -> None:
    """Regression: opening a FIFO to read it blocked forever (bounded here by CHILD_TIMEOUT)."""
    fifo = tmp_path / unique_name("fifo")
    os.mkfifo(fifo, 0o600)
    result = _python(
        f"""
        import zcser
        for mode in ("r", "copy"):
            try:
                zcser.load({str(fifo)!r}, mode=mode)
            except Exception as exc:
                print(type(exc).__name__, exc)
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith(f"CorruptSnapshot {fifo}: {fifo} is a FIFO, not a regular file")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    info = subprocess.run(
        [sys.executable, "-m", "zcser", "snapshot", "info", str(fifo)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=env,
    )
    assert info.returncode == 1 and "is a FIFO, not a regular file" in info.stderr


def test_load_does_not_follow_a_symlink_and_says_what_to_pass(tmp_path: Path) -> None:
    path = tmp_path / unique_name("s")
    zcser.save({"a": np.arange(10)}, path)
    link = tmp_path / "latest"
    link.symlink_to(path)
    with pytest.raises(CorruptSnapshot, match="symbolic link, which is not followed"):
        zcser.load(link)
    with pytest.raises(CorruptSnapshot, match="pass the file it points to"):
        zcser.snapshot_info(link)
    assert zcser.load(os.path.realpath(link))["a"].tolist() == list(range(10))


def test_copy_mode_refuses_a_huge_sparse_file_before_reading_it(tmp_path: Path) -> None:
    """Regression: mode="copy" allocated and read the whole file first (here: a raw OSError
    ENOMEM for 1 TiB; for a smaller one, its full size in memory)."""
    path = tmp_path / unique_name("h")
    with open(path, "wb") as fh:
        fh.write(b"not a snapshot at all, just a big file")
    os.truncate(path, HUGE)
    with pytest.raises(CorruptSnapshot, match="not a zcser snapshot"):
        zcser.load(path, mode="copy")


def test_copy_mode_checks_the_size_the_header_declares_before_reading(tmp_path: Path) -> None:
    path = tmp_path / unique_name("x")
    zcser.save({"a": np.arange(1000)}, path)
    size = path.stat().st_size
    os.truncate(path, HUGE)  # extended (sparse): the header still says `size`
    with pytest.raises(CorruptSnapshot, match=f"the file has {HUGE} bytes, its header says {size}"):
        zcser.load(path, mode="copy")


def test_copy_mode_refusal_costs_no_memory(tmp_path: Path) -> None:
    """The peak resident memory of a process refusing a 512 MiB sparse file that starts with a
    real snapshot's header in copy mode grows by far less than the file (before: by all of it)."""
    path = tmp_path / unique_name("m")
    zcser.save({"a": np.arange(10)}, path)
    os.truncate(path, 512 << 20)
    result = _python(
        f"""
        import resource, zcser
        from zcser.errors import CorruptSnapshot
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            zcser.load({str(path)!r}, mode="copy")
        except CorruptSnapshot as exc:
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, exc)
        """
    )
    assert result.returncode == 0, result.stderr
    grown_kib, message = result.stdout.split(" ", 1)
    assert "truncated or extended" in message
    assert int(grown_kib) < 64 << 10  # KiB: under 64 MiB of a 512 MiB file
