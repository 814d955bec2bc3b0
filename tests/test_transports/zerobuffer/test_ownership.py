"""Only our own files, and only ours to remove (docs/security.md, "Attacks and the tests that cover
them"). A buffer's shared memory, semaphores and lock file must be regular files of this user
that nobody else may write; a Reader replaces only a stale ZeroBuffer of this user; the lock
directory is never followed through a symlink nor used when another user owns it; stale cleanup
removes only lock files of buffers it proved stale.

The second user is real (`nobody`, by a forked child that drops to it). Lock directory attacks
run in a temporary lock directory (layout.LOCK_DIR monkeypatched, or $ZEROBUFFER_LOCK_DIR):
the machine's /tmp/zerobuffer is shared with other test runs and never touched."""

from __future__ import annotations

import multiprocessing.shared_memory as mp_shm
import os
import pwd
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import unique_name
from fixtures.foreign import (
    NOBODY,
    SHM,
    as_nobody,
    needs_root,
    nobody_process,
    oieb,
    owner_and_mode,
    plant_ring,
    plant_semaphore,
    remove,
    ring_files,
)
from fixtures.procs import REPO

import zcser
from transports import errors as E
from transports.zerobuffer import BufferConfig, Reader, Writer
from transports.zerobuffer import layout as L
from zcser import errors as ZE

NOBODY_IS = f"owned by nobody (uid {NOBODY.pw_uid})"
ME = f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private lock directory for this test (the shared /tmp/zerobuffer stays untouched)."""
    path = tmp_path / "zerobuffer"
    path.mkdir(mode=0o700)
    monkeypatch.delenv(L.LOCK_DIR_ENV, raising=False)
    monkeypatch.setattr(L, "LOCK_DIR", path)
    return path


@pytest.fixture
def foreign_ring() -> Iterator[str]:
    """A complete buffer planted by user nobody, mode 0666, whose reader (nobody's) is alive."""
    name = unique_name("fr")
    with nobody_process() as pid:
        as_nobody(lambda: plant_ring(name, reader_pid=pid))
        try:
            yield name
        finally:
            remove(*ring_files(name))


# --- 1. a buffer, semaphore or lock file of another user, or writable by others, is refused ---


@needs_root
def test_writer_refuses_a_buffer_another_user_created_naming_owner_and_mode(
    foreign_ring: str,
) -> None:
    with pytest.raises(E.ForeignResource) as err:
        Writer(foreign_ring)
    assert f"/dev/shm/{foreign_ring} is {NOBODY_IS} with mode 0666" in str(err.value)
    assert (err.value.owner, err.value.mode) == (NOBODY.pw_uid, 0o666)  # type: ignore[attr-defined]


@needs_root
def test_sender_refuses_a_buffer_another_user_created_and_writes_nothing_into_it(
    foreign_ring: str,
) -> None:
    before = (SHM / foreign_ring).read_bytes()
    with pytest.raises(ZE.ChannelError) as err:
        zcser.Sender(foreign_ring)
    assert NOBODY_IS in str(err.value) and "mode 0666" in str(err.value)
    assert isinstance(err.value.__cause__, E.ForeignResource)
    assert (SHM / foreign_ring).read_bytes() == before  # no writer PID, no stream schema


@pytest.mark.parametrize("which", [0, 1, 2], ids=["shm", "sem-w", "sem-r"])
@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_writer_refuses_our_own_buffer_when_group_or_others_may_write_it(
    shm_name: str, which: int, mode: int
) -> None:
    with Reader(shm_name, BufferConfig(0, 1024)):
        path = ring_files(shm_name)[which]
        path.chmod(mode)
        with pytest.raises(E.ForeignResource) as err:
            Writer(shm_name)
        assert f"{path} is owned by {ME} with mode {mode:04o}" in str(err.value)


@needs_root
def test_reader_refuses_a_semaphore_another_user_planted_and_leaves_it(shm_name: str) -> None:
    sem = SHM / f"sem.sem-r-{shm_name}"
    as_nobody(lambda: plant_semaphore(L.sem_r_name(shm_name)))
    try:
        with pytest.raises(E.ForeignResource) as err:
            Reader(shm_name, BufferConfig(0, 1024))
        assert f"{sem} is {NOBODY_IS} with mode 0666" in str(err.value)
        assert owner_and_mode(sem) == ("nobody", 0o666)
        assert not (SHM / shm_name).exists()  # what the reader created is removed again
    finally:
        remove(sem)


@needs_root
def test_reader_refuses_a_lock_file_of_another_user(shm_name: str, lock_dir: Path) -> None:
    lock = lock_dir / f"{shm_name}.lock"
    lock.touch(mode=0o600)
    os.chown(lock, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(E.ForeignResource) as err:
        Reader(shm_name, BufferConfig(0, 1024))
    assert f"the lock file {lock} is {NOBODY_IS} with mode 0600" in str(err.value)
    assert lock.exists() and not (SHM / shm_name).exists()


def test_reader_refuses_a_lock_file_others_may_write(shm_name: str, lock_dir: Path) -> None:
    """Ours but mode 0666, of a buffer a live writer still maps (so no sweep removes it)."""
    plant_ring(shm_name, reader_pid=1 << 40, mode=0o600)
    fd = os.open(SHM / shm_name, os.O_RDWR)
    os.pwrite(fd, L.U64.pack(os.getpid()), L.OFF_WRITER_PID)  # this process: a live writer
    os.close(fd)
    lock = lock_dir / f"{shm_name}.lock"
    lock.touch()
    lock.chmod(0o666)
    try:
        with pytest.raises(E.ForeignResource, match=f"lock file {lock} is owned by .* mode 0666"):
            Reader(shm_name, BufferConfig(0, 1024))
    finally:
        remove(lock, *ring_files(shm_name))


def test_receiver_translates_a_refused_lock_directory_to_channel_error(
    shm_name: str, lock_dir: Path
) -> None:
    lock_dir.chmod(0o777)  # others may write, no sticky bit: they could swap our lock files
    with pytest.raises(ZE.ChannelError, match="with mode 0777") as err:
        zcser.Receiver(shm_name)
    assert isinstance(err.value.__cause__, E.ForeignResource)
    assert os.listdir(lock_dir) == [] and not (SHM / shm_name).exists()


# --- 2. a Receiver removes an existing /dev/shm/NAME only if it is a stale ZeroBuffer of ours ---


def test_receiver_leaves_another_programs_shared_memory_alone(shm_name: str) -> None:
    block = mp_shm.SharedMemory(shm_name, create=True, size=4096)
    try:
        block.buf[:5] = b"mine!"
        with pytest.raises(ZE.ChannelError) as err:
            zcser.Receiver(shm_name)
        assert isinstance(err.value.__cause__, E.NameInUse)
        assert "not a ZeroBuffer" in str(err.value) and "Pick another buffer name" in str(err.value)
        assert bytes(block.buf[:5]) == b"mine!"
        assert (SHM / shm_name).stat().st_ino == os.fstat(block._fd).st_ino  # not replaced
    finally:
        block.close()
        block.unlink()


@needs_root
def test_reader_leaves_a_stale_buffer_of_another_user_alone(shm_name: str) -> None:
    dead = 1 << 40  # no such PID
    as_nobody(lambda: plant_ring(shm_name, reader_pid=dead, mode=0o600))
    try:
        with pytest.raises(E.ForeignResource, match=re.escape(f"{NOBODY_IS} with mode 0600")):
            Reader(shm_name, BufferConfig(0, 1024))
        assert [owner_and_mode(p) for p in ring_files(shm_name)] == [("nobody", 0o600)] * 3
    finally:
        remove(*ring_files(shm_name))


def test_reader_refuses_a_name_taken_by_a_fifo_and_keeps_it(shm_name: str) -> None:
    os.mkfifo(SHM / shm_name, 0o600)
    try:
        with pytest.raises(E.NameInUse, match="a FIFO"):
            Reader(shm_name, BufferConfig(0, 1024))
        with pytest.raises(E.NameInUse, match="a FIFO"):
            Writer(shm_name)
        assert stat.S_ISFIFO(os.stat(SHM / shm_name).st_mode)
    finally:
        remove(SHM / shm_name)


def test_reader_replaces_a_stale_buffer_of_ours(shm_name: str) -> None:
    plant_ring(shm_name, reader_pid=1 << 40, mode=0o600)
    before = (SHM / shm_name).stat().st_ino
    with Reader(shm_name, BufferConfig(0, 1024)), Writer(shm_name) as w:
        assert (SHM / shm_name).stat().st_ino != before
        w.write(b"fresh")


@pytest.mark.parametrize("cut", ["empty", "signed", "signed, not sized"])
def test_reader_replaces_a_buffer_whose_creation_was_cut_short(shm_name: str, cut: str) -> None:
    """A reader killed between creating its shm and writing the control block leaves an empty
    or signed-only segment (8 bytes when killed before its pages were reserved; and its lock
    file): still recognisably ours, so replaced."""
    fd = os.open(SHM / shm_name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    if cut != "empty":
        os.pwrite(fd, oieb(0, 0, 0)[:8], 0)
    if cut == "signed":
        os.ftruncate(fd, 4096)
    os.close(fd)
    with Reader(shm_name, BufferConfig(0, 1024)), Writer(shm_name) as w:
        w.write(b"fresh")


def test_reader_leaves_an_8_byte_segment_without_our_signature_alone(shm_name: str) -> None:
    path = SHM / shm_name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"8 bytes!")
    os.close(fd)
    try:
        with pytest.raises(E.NameInUse, match="not a ZeroBuffer"):
            Reader(shm_name, BufferConfig(0, 1024))
        assert path.read_bytes() == b"8 bytes!"
    finally:
        remove(path)


def test_writer_waits_for_a_buffer_being_created(shm_name: str) -> None:
    """A signed-only segment (creation under way) is 'not there yet' to a writer, as before."""
    fd = os.open(SHM / shm_name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.pwrite(fd, oieb(0, 0, 0)[:8], 0)
    os.ftruncate(fd, 4096)
    os.close(fd)
    try:
        with pytest.raises(E.BufferNotFound, match="still being created"):
            Writer(shm_name)
    finally:
        remove(SHM / shm_name)


# --- 3. the lock directory ----------------------------------------------------------------------


def _victim(tmp_path: Path) -> tuple[Path, list[Path]]:
    victim = tmp_path / "victim"
    victim.mkdir()
    files = [victim / "precious.lock", victim / "other-program.lock"]
    for file in files:
        file.write_text("not yours")
    return victim, files


def test_a_symlinked_lock_directory_is_not_followed(
    shm_name: str, lock_dir: Path, tmp_path: Path
) -> None:
    victim, files = _victim(tmp_path)
    lock_dir.rmdir()
    lock_dir.symlink_to(victim)
    with pytest.raises(E.ForeignResource, match="a symbolic link, not a directory"):
        Reader(shm_name, BufferConfig(0, 1024))
    assert [f.read_text() for f in files] == ["not yours"] * 2
    assert sorted(os.listdir(victim)) == sorted(f.name for f in files)


@needs_root
def test_a_lock_directory_of_another_user_is_refused(shm_name: str, lock_dir: Path) -> None:
    os.chown(lock_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(E.ForeignResource, match=re.escape(f"{lock_dir} is {NOBODY_IS}")):
        Reader(shm_name, BufferConfig(0, 1024))
    assert os.listdir(lock_dir) == []


def test_a_lock_directory_others_may_write_needs_the_sticky_bit(
    shm_name: str, lock_dir: Path
) -> None:
    lock_dir.chmod(0o777)
    with pytest.raises(E.ForeignResource, match="with mode 0777"):
        Reader(shm_name, BufferConfig(0, 1024))
    lock_dir.chmod(0o1777)
    with Reader(shm_name, BufferConfig(0, 1024)):
        assert (lock_dir / f"{shm_name}.lock").exists()


def test_the_lock_directory_is_chosen_by_the_environment(shm_name: str, tmp_path: Path) -> None:
    """$ZEROBUFFER_LOCK_DIR, in a fresh process: the lock file is made there (0600, in a
    directory created 0700), not in /tmp/zerobuffer."""
    locks = tmp_path / "locks"
    code = (
        "import os, sys\n"
        "from transports.zerobuffer import BufferConfig, Reader\n"
        f"with Reader({shm_name!r}, BufferConfig(0, 1024)):\n"
        f"    st = os.stat({str(locks / (shm_name + '.lock'))!r})\n"
        f"    print(oct(st.st_mode & 0o777), oct(os.stat({str(locks)!r}).st_mode & 0o777))\n"
        f"    print(os.path.exists('/tmp/zerobuffer/{shm_name}.lock'))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), ZEROBUFFER_LOCK_DIR=str(locks))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0o600", "0o700", "False"]
    assert os.listdir(locks) == []  # removed on close


# --- stale cleanup removes only lock files of buffers it proved stale ----------------------------


def _sweep() -> None:
    """What every new Reader does first: the stale-resource sweep of the lock directory."""
    name = unique_name("sw")
    Reader(name, BufferConfig(0, 256)).close()


def test_stale_cleanup_leaves_another_programs_shared_memory_and_its_lock_file(
    shm_name: str, lock_dir: Path
) -> None:
    block = mp_shm.SharedMemory(shm_name, create=True, size=4096)  # zeros: PIDs read as 0
    lock = lock_dir / f"{shm_name}.lock"
    lock.touch(mode=0o600)
    try:
        _sweep()
        assert (SHM / shm_name).exists() and lock.exists()
    finally:
        block.close()
        block.unlink()
        lock.unlink()


def test_stale_cleanup_keeps_the_lock_file_of_a_buffer_a_live_writer_still_maps(
    shm_name: str, lock_dir: Path
) -> None:
    plant_ring(shm_name, reader_pid=1 << 40, mode=0o600)
    fd = os.open(SHM / shm_name, os.O_RDWR)
    os.pwrite(fd, L.U64.pack(os.getpid()), L.OFF_WRITER_PID)  # this process: a live writer
    os.close(fd)
    lock = lock_dir / f"{shm_name}.lock"
    lock.touch(mode=0o600)
    try:
        _sweep()
        assert lock.exists() and all(p.exists() for p in ring_files(shm_name))
    finally:
        remove(lock, *ring_files(shm_name))


@needs_root
@pytest.mark.parametrize("kind", ["not a buffer name", "another user's"])
def test_stale_cleanup_leaves_lock_files_that_are_not_ours(lock_dir: Path, kind: str) -> None:
    name = unique_name("lk")
    lock = lock_dir / (f"{name}.tar.lock" if kind == "not a buffer name" else f"{name}.lock")
    lock.touch(mode=0o600)
    if kind == "another user's":
        os.chown(lock, NOBODY.pw_uid, NOBODY.pw_gid)
    _sweep()
    assert lock.exists()
    lock.unlink()


def test_stale_cleanup_removes_a_stale_buffer_of_ours_and_its_lock_file(
    shm_name: str, lock_dir: Path
) -> None:
    plant_ring(shm_name, reader_pid=1 << 40, mode=0o600)
    lock = lock_dir / f"{shm_name}.lock"
    lock.touch(mode=0o600)
    _sweep()
    assert not lock.exists() and not any(p.exists() for p in ring_files(shm_name))
