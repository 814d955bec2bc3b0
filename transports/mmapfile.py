"""Snapshot files on disk: crash-safe streamed writes and whole-file memory maps (POSIX only).

Writes go to a locked temporary file beside the target (mode 0600), are fsynced, renamed over
the target and the directory is fsynced, so a crash leaves the old file or the new one, never a
torn one. Reads open the path without following a symlink or blocking (a FIFO or a device
is refused, not waited on) and map the whole file; the mapping lives as long as any view of
it does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

from transports.errors import FileSpaceError, SnapshotFileError

__all__ = [
    "FILE_MODE",
    "TEMP_MARKER",
    "AtomicWriter",
    "MapMode",
    "is_temp_name",
    "open_mapping",
    "remove_stale_temp_files",
    "stale_temp_files",
    "temp_path_for",
    "write_file_atomic",
]

FILE_MODE = 0o600
TEMP_MARKER = ".zcser-tmp-"
_WRITE_CHUNK = 64 << 20
_TEMP_ATTEMPTS = 100
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

MapMode = Literal["r", "c", "copy"]
Progress = Callable[[int], None]
Check = Callable[[int, int], None]
"""check(fd, size): called before a file is mapped or read; raises to refuse it."""

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
"""Never follow a symlink at the path, never block on a FIFO or a device."""

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def temp_path_for(target: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside `target`: `.<name>.zcser-tmp-<pid>-<random>` (recognisable)."""
    path = Path(target)
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our temporary snapshot names."""
    return name.startswith(".") and TEMP_MARKER in name


def _open_locked_temp(target: Path) -> tuple[int, Path]:
    """Create and flock a new temp file; the lock tells cleaners its writer is alive."""
    for _ in range(_TEMP_ATTEMPTS):
        tmp = temp_path_for(target)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except OSError:
            pass
        try:
            linked = os.fstat(fd).st_ino == os.stat(tmp).st_ino
        except FileNotFoundError:
            linked = False
        if linked:
            return fd, tmp
        os.close(fd)
    raise FileExistsError(f"could not create a temp file beside {target}: a cleaner keeps racing")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_space(target: Path, size: int) -> FileSpaceError:
    return FileSpaceError(
        f"not enough disk space in {target.parent} for a {size}-byte file: "
        "free some space or save to another filesystem"
    )


def _check_space(fd: int, size: int, target: Path) -> None:
    """Refuse up front when the filesystem lacks the free space for `size` bytes.

    A check, not a reservation: on ext4 both posix_fallocate and sizing the file first made
    1 GB writes measurably slower (writes into a pre-sized file: ~2x); ENOSPC during the
    writes is still reported as FileSpaceError.
    """
    stats = os.fstatvfs(fd)
    if stats.f_bavail * stats.f_frsize < size:
        raise _no_space(target, size)


_FADVISE = hasattr(os, "posix_fadvise")


def _drop_cached(target: Path) -> None:
    """Drop the page cache of the file about to be replaced (clean, unmapped pages only).

    The new file then reuses that memory instead of needing a second file's worth (saves over
    an existing snapshot are several times faster; docs/benchmarks.md). Live views of the old
    file keep their pages (mapped pages are never dropped) and its bytes stay on disk.
    """
    if not _FADVISE:
        return
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a just-written range to disk now, so the final fsync finds little left.

    POSIX_FADV_DONTNEED on dirty pages starts their writeback (Linux) and cannot drop them until
    written, so the final fsync overlaps the writes (docs/benchmarks.md, snapshot section). The
    saved pages may leave the page cache sooner afterwards.
    """
    if _FADVISE:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _fsync_file(fd: int, target: Path, size: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in _SPACE_ERRNOS:
            raise _no_space(target, size) from exc
        raise


class AtomicWriter:
    """A temp file of a fixed size beside `path` that replaces `path` atomically on `commit()`."""

    def __init__(self, path: str | os.PathLike[str], size: int) -> None:
        if size < 0:
            raise ValueError(f"file size must be >= 0, got {size}")
        self.path = Path(path)
        self.size = size
        self._fd, self.temp_path = _open_locked_temp(self.path)
        self._done = False
        try:
            _check_space(self._fd, size, self.path)
            _drop_cached(self.path)
        except BaseException:
            self.abort()
            raise

    def write_at(self, offset: int, data: memoryview, progress: Progress | None = None) -> None:
        """Write `data` at `offset` straight from its memory (no copy), in chunks for progress."""
        if self._done:
            raise ValueError("this AtomicWriter is already committed or aborted")
        view = data if data.format == "B" and data.ndim == 1 else data.cast("B")
        end = offset + view.nbytes
        if offset < 0 or end > self.size:
            raise ValueError(f"write [{offset}, {end}) outside the file size {self.size}")
        pos = 0
        while pos < view.nbytes:
            try:
                wrote = os.pwrite(self._fd, view[pos : pos + _WRITE_CHUNK], offset + pos)
            except OSError as exc:
                if exc.errno in _SPACE_ERRNOS:
                    raise _no_space(self.path, self.size) from exc
                raise
            _start_writeback(self._fd, offset + pos, wrote)
            pos += wrote
            if progress is not None:
                progress(wrote)

    def sync(self) -> None:
        """fsync what is written so far; callers may run it in a thread to overlap the flush."""
        _fsync_file(self._fd, self.path, self.size)

    def commit(self) -> None:
        """Set the final size (unwritten gaps read as zeros), fsync, rename, fsync the directory."""
        if self._done:
            raise ValueError("this AtomicWriter is already committed or aborted")
        try:
            os.ftruncate(self._fd, self.size)
            _fsync_file(self._fd, self.path, self.size)
            os.rename(self.temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        os.close(self._fd)
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop the temp file; the target is untouched. Safe to call more than once."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)
        os.close(self._fd)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


def write_file_atomic(
    path: str | os.PathLike[str],
    size: int,
    pieces: Iterable[tuple[int, memoryview]],
    *,
    progress: Progress | None = None,
) -> None:
    """Write `(offset, bytes)` pieces into a new `size`-byte file that atomically becomes `path`."""
    with AtomicWriter(path, size) as writer:
        for offset, data in pieces:
            writer.write_at(offset, data, progress)
        writer.commit()


def _temp_files(directory: Path) -> Iterator[Path]:
    """Temp files of this user (whoever runs the cleanup, root included, never touches another
    user's)."""
    me = os.geteuid()
    for entry in os.scandir(directory):
        if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                owner = entry.stat(follow_symlinks=False).st_uid
            except FileNotFoundError:
                continue
            if owner == me:
                yield Path(entry.path)


def _writer_alive(path: Path) -> bool:
    """A temp file's writer holds its flock while alive; if we can take the lock, it is dead.

    Where flock is unavailable (some network filesystems) every temp file counts as alive.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Temp files in `directory` left by writers that died before renaming (no live lock)."""
    return sorted(p for p in _temp_files(Path(directory)) if not _writer_alive(p))


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the stale temp files of `directory` and return their paths."""
    removed = []
    for path in stale_temp_files(directory):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed


def _read_into(fd: int, size: int, path: Path) -> mmap.mmap:
    """The file's bytes in private, page-aligned anonymous memory."""
    try:
        memory = mmap.mmap(-1, size)
    except OSError as exc:
        raise MemoryError(
            f"cannot allocate {size} bytes for a private copy of {path} ({exc.strerror}): map "
            'it instead (mode "r" or "c"), or free memory'
        ) from exc
    view = memoryview(memory)
    try:
        pos = 0
        while pos < size:
            got = os.preadv(fd, [view[pos:]], pos)
            if got == 0:
                raise SnapshotFileError(f"{path} shrank to {pos} bytes while it was being read")
            pos += got
    finally:
        view.release()
    return memory


def _open_regular(path: Path) -> int:
    """A read-only descriptor of the regular file at `path` (the path itself, not a symlink's
    target); SnapshotFileError for a symlink or anything but a regular file."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.ENODEV):
            raise
        try:
            mode = os.stat(path, follow_symlinks=False).st_mode
        except OSError:
            mode = 0
        if stat.S_ISLNK(mode):
            raise SnapshotFileError(
                f"{path} is a symbolic link, which is not followed: pass the file it points "
                "to (os.path.realpath)"
            ) from None
        if mode:
            raise _not_regular(path, mode) from None
        raise SnapshotFileError(f"{path} cannot be opened as a file: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode)
    return fd


def _not_regular(path: Path, mode: int) -> SnapshotFileError:
    kind = next((kind for test, kind in _KINDS if test(mode)), "a special file")
    return SnapshotFileError(f"{path} is {kind}, not a regular file: it cannot be a snapshot")


def open_mapping(
    path: str | os.PathLike[str], mode: MapMode = "r", *, check: Check | None = None
) -> mmap.mmap:
    """The whole file as memory: "r" read-only map, "c" copy-on-write map, "copy" private copy.

    The path must be a regular file, not a symlink (SnapshotFileError). `check(fd, size)`, when
    given, runs before anything is mapped or read (for "copy": before the whole file is read).
    Views into the result keep it alive; it is unmapped when the last of them is collected.
    """
    if mode not in ("r", "c", "copy"):
        raise ValueError(f'mode must be "r", "c" or "copy", got {mode!r}')
    path = Path(path)
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise SnapshotFileError(f"{path} is empty: it is not a snapshot, or its write failed")
        if check is not None:
            check(fd, size)
        if mode == "copy":
            return _read_into(fd, size, path)
        access = mmap.ACCESS_READ if mode == "r" else mmap.ACCESS_COPY
        return mmap.mmap(fd, size, access=access)
    finally:
        os.close(fd)
