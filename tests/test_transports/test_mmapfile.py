"""transports.mmapfile: atomic streamed writes, crash safety under SIGKILL, stale temps, mappings."""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import unique_name
from fixtures.maps import mappings

from transports.errors import FileSpaceError, SnapshotFileError
from transports.mmapfile import (
    TEMP_MARKER,
    AtomicWriter,
    is_temp_name,
    open_mapping,
    remove_stale_temp_files,
    stale_temp_files,
    temp_path_for,
    write_file_atomic,
)

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 60


def _open_files() -> set[str]:
    """The paths this process has open file descriptors on."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def _temps(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if TEMP_MARKER in n)


def test_write_file_atomic_writes_pieces_at_offsets_mode_0600(tmp_path: Path) -> None:
    target = tmp_path / unique_name("f")
    pieces = [(0, memoryview(b"head")), (64, memoryview(bytearray(b"x" * 100)))]
    seen: list[int] = []
    write_file_atomic(target, 200, pieces, progress=seen.append)
    data = target.read_bytes()
    assert data == b"head" + bytes(60) + b"x" * 100 + bytes(36)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sum(seen) == 104
    assert _temps(tmp_path) == []


def test_write_at_takes_typed_memoryviews_without_copy(tmp_path: Path) -> None:
    import array

    target = tmp_path / unique_name("f")
    values = array.array("d", [1.5, 2.5])
    write_file_atomic(target, 16, [(0, memoryview(values))])
    assert target.read_bytes() == values.tobytes()


def test_writes_outside_the_file_size_are_refused(tmp_path: Path) -> None:
    with AtomicWriter(tmp_path / unique_name("f"), 10) as writer:
        with pytest.raises(ValueError, match="outside the file size"):
            writer.write_at(8, memoryview(b"abc"))
        with pytest.raises(ValueError, match="outside the file size"):
            writer.write_at(-1, memoryview(b"a"))
    assert os.listdir(tmp_path) == []


def test_failure_inside_the_writer_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path,
) -> None:
    target = tmp_path / unique_name("f")
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), AtomicWriter(target, 3) as writer:
        writer.write_at(0, memoryview(b"new"))
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert _temps(tmp_path) == []


def test_file_larger_than_the_free_space_is_refused_before_writing(tmp_path: Path) -> None:
    target = tmp_path / unique_name("f")
    free = os.statvfs(tmp_path)
    too_big = free.f_bavail * free.f_frsize + (1 << 30)
    with pytest.raises(FileSpaceError, match="not enough disk space"):
        AtomicWriter(target, too_big)
    assert os.listdir(tmp_path) == []


def test_committed_writer_refuses_more_writes(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path / unique_name("f"), 1)
    writer.write_at(0, memoryview(b"a"))
    writer.commit()
    with pytest.raises(ValueError, match="already committed"):
        writer.write_at(0, memoryview(b"b"))
    with pytest.raises(ValueError, match="already committed"):
        writer.commit()


def test_temp_names_are_recognisable_and_unique(tmp_path: Path) -> None:
    target = tmp_path / "model.zcs"
    first, second = temp_path_for(target), temp_path_for(target)
    assert first != second
    assert first.parent == tmp_path
    assert first.name.startswith(f".model.zcs{TEMP_MARKER}{os.getpid()}-")
    assert is_temp_name(first.name)
    assert not is_temp_name("model.zcs")


def test_live_writer_temp_is_not_stale(tmp_path: Path) -> None:
    with AtomicWriter(tmp_path / unique_name("f"), 4) as writer:
        assert _temps(tmp_path) == [writer.temp_path.name]
        assert stale_temp_files(tmp_path) == []
        assert remove_stale_temp_files(tmp_path) == []
        assert writer.temp_path.exists()


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import transports.mmapfile as mf

    target, version, size, piece, kill_step = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
    steps = 0

    def step(*_):
        global steps
        if steps == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        steps += 1

    real_fsync, real_rename = os.fsync, os.rename
    os.fsync = lambda fd: (step(), real_fsync(fd))
    os.rename = lambda a, b: (step(), real_rename(a, b))
    data = memoryview(bytes([version]) * size)
    pieces = [(off, data[off : off + piece]) for off in range(0, size, piece)]
    with mf.AtomicWriter(target, size) as writer:
        for off, view in pieces:
            step()
            writer.write_at(off, view)
        writer.commit()
    step()
    """
)


def _run_child(target: Path, version: int, size: int, piece: int, kill_step: int) -> int:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(target),
            str(version),
            str(size),
            str(piece),
            str(kill_step),
        ],
        cwd=REPO,
        timeout=CHILD_TIMEOUT,
        capture_output=True,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()
    return proc.returncode


def _complete(path: Path, version: int, size: int) -> bool:
    data = path.read_bytes()
    return len(data) == size and data == bytes([version]) * size


def test_sigkill_at_every_kind_of_point_leaves_old_or_new_file(tmp_path: Path) -> None:
    """Kill steps: before each piece, data fsync, rename, directory fsync, after return."""
    size, piece = 1 << 20, 1 << 18
    pieces = size // piece
    target = tmp_path / unique_name("f")
    target.write_bytes(bytes([0]) * size)
    rng = random.Random(5)
    kill_steps = sorted({*range(pieces, pieces + 4), *rng.sample(range(pieces), 2)})
    old = 0
    for i, kill_step in enumerate(kill_steps, start=1):
        code = _run_child(target, i, size, piece, kill_step)
        renamed = kill_step > pieces + 1
        assert code == -signal.SIGKILL
        expect = i if renamed else old
        assert _complete(target, expect, size), f"kill step {kill_step}: torn or wrong file"
        old = expect
        stale = stale_temp_files(tmp_path)
        assert len(stale) == (0 if renamed else 1)
        assert remove_stale_temp_files(tmp_path) == stale
        assert _temps(tmp_path) == []


def test_sigkill_at_random_times_leaves_old_or_new_file(tmp_path: Path) -> None:
    """A child rewrites the file in a loop; SIGKILL lands at a seeded random moment."""
    size = 4 << 20
    target = tmp_path / unique_name("f")
    target.write_bytes(bytes([0]) * size)
    loop = textwrap.dedent(
        """
        import sys
        import transports.mmapfile as mf
        target, size = sys.argv[1], int(sys.argv[2])
        print("ready", flush=True)
        for i in range(1, 10**9):
            data = memoryview(bytes([i % 250 + 1]) * size)
            mf.write_file_atomic(target, size, [(0, data[: size // 2]), (size // 2, data[size // 2 :])])
        """
    )
    rng = random.Random(11)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", loop, str(target), str(size)], cwd=REPO, stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=rng.uniform(0.01, 0.3))
        finally:
            proc.kill()
            proc.wait(timeout=CHILD_TIMEOUT)
            assert proc.stdout is not None
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        data = target.read_bytes()
        assert len(data) == size and data == data[:1] * size, "torn file under the real name"
        remove_stale_temp_files(tmp_path)
        assert _temps(tmp_path) == []


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / unique_name("f")
    write_file_atomic(path, 3 * mmap.PAGESIZE, [(0, memoryview(b"abc" * mmap.PAGESIZE))])
    return path


def test_read_only_mapping_refuses_writes(sample: Path) -> None:
    mm = open_mapping(sample, "r")
    view = memoryview(mm)
    assert view.readonly
    assert bytes(view[:6]) == b"abcabc"
    with pytest.raises(TypeError):
        view[0] = 0
    view.release()
    mm.close()


def test_copy_on_write_mapping_is_writable_but_private(sample: Path) -> None:
    mm = open_mapping(sample, "c")
    mm[0:3] = b"XYZ"
    assert mm[0:3] == b"XYZ"
    assert sample.read_bytes()[:3] == b"abc"
    assert open_mapping(sample, "r")[0:3] == b"abc"
    mm.close()


def test_copy_mode_reads_into_private_memory_and_closes_the_file(sample: Path) -> None:
    expected = sample.read_bytes()
    mm = open_mapping(sample, "copy")
    assert not mappings(sample)
    assert str(sample) not in _open_files()
    sample.unlink()
    assert mm[:] == expected
    mm[0:1] = b"Q"
    mm.close()


def test_mapping_lives_while_a_view_lives_and_unmaps_after(sample: Path) -> None:
    mm = open_mapping(sample, "r")
    view = memoryview(mm)[mmap.PAGESIZE :]
    del mm
    gc.collect()
    assert mappings(sample)
    assert bytes(view[:6]) == (b"abc" * mmap.PAGESIZE)[mmap.PAGESIZE : mmap.PAGESIZE + 6]
    del view
    gc.collect()
    assert not mappings(sample)


def test_unknown_mode_and_empty_file_are_refused(tmp_path: Path, sample: Path) -> None:
    with pytest.raises(ValueError, match="mode must be"):
        open_mapping(sample, "w")  # type: ignore[arg-type]
    empty = tmp_path / unique_name("f")
    empty.touch()
    for mode in ("r", "c", "copy"):
        with pytest.raises(SnapshotFileError, match="is empty"):
            open_mapping(empty, mode)  # type: ignore[arg-type]


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_mapping(tmp_path / "nope")


# --- only regular files (docs/security.md) -------------------------------------------------------


def test_a_socket_or_a_device_is_refused_as_not_a_regular_file(tmp_path: Path) -> None:
    """Regression: a socket gave a raw OSError, a device was read as an empty file (and a FIFO
    blocked forever: tests/test_zcser/snapshot/test_snapshot_files.py)."""
    import socket

    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(SnapshotFileError, match="is a socket, not a regular file"):
            open_mapping(path)
    for mode in ("r", "copy"):
        with pytest.raises(SnapshotFileError, match="/dev/null is a character device"):
            open_mapping("/dev/null", mode)  # type: ignore[arg-type]


def test_a_symlink_at_the_path_is_not_followed(tmp_path: Path, sample: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(sample)
    with pytest.raises(SnapshotFileError, match="is a symbolic link, which is not followed"):
        open_mapping(link)
    assert open_mapping(os.path.realpath(link))[:3] == b"abc"


def test_check_runs_before_the_file_is_read(sample: Path) -> None:
    seen: list[int] = []

    def refuse(fd: int, size: int) -> None:
        seen.append(size)
        raise SnapshotFileError("refused")

    with pytest.raises(SnapshotFileError, match="refused"):
        open_mapping(sample, "copy", check=refuse)
    assert seen == [3 * mmap.PAGESIZE]
    assert str(sample) not in _open_files()
