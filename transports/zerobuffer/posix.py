"""Thin OS adapters for the ZeroBuffer transport: POSIX shared memory and semaphores (posix_ipc),
the flock lock file, PID liveness, and cross-process atomics on the shared free-space word.

Nothing here knows the ring protocol; nothing here registers with multiprocessing's
resource_tracker (which would unlink a buffer when an attaching process exits).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import pwd
import stat
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import posix_ipc

from transports import native
from transports.errors import (
    AtomicsUnavailable,
    BufferExists,
    BufferNotFound,
    CorruptBuffer,
    ForeignResource,
    NameInUse,
    ShmFullError,
    TransportEnvironmentError,
)
from transports.zerobuffer import layout as L

_log = logging.getLogger("transports.zerobuffer")

# --- atomics (loaded once, at import) ------------------------------------------------------------

_SEQ_CST = 5  # __ATOMIC_SEQ_CST

AtomicOp = Callable[[int, int, int], int]
CasOp = Callable[[int, int, int, int, int, int], bool]

_compiled = native.module
if _compiled is not None:
    _compiled.configure(
        L.OFF_PAYLOAD_FREE, L.OFF_WRITE_POS, L.OFF_WRITTEN_COUNT, L.OFF_READER_PID, L.HEADER_SIZE
    )

hotpath = _compiled
"""The compiled module (atomics, small-frame put/take), or None when it was not built."""


def _load_atomics() -> tuple[AtomicOp | None, AtomicOp | None, CasOp | None, str]:
    """libatomic's out-of-line 8-byte atomics, which work on any address (including shared
    memory). Returns (fetch_add, fetch_sub, compare_exchange, problem)."""
    candidates = [ctypes.util.find_library("atomic"), "libatomic.so.1", "libatomic.dylib"]
    problem = "libatomic was not found"
    for candidate in candidates:
        if not candidate:
            continue
        try:
            lib = ctypes.CDLL(candidate)
            add = lib.__atomic_fetch_add_8
            sub = lib.__atomic_fetch_sub_8
            cas = lib.__atomic_compare_exchange_8
        except (OSError, AttributeError) as exc:
            problem = f"{candidate}: {exc}"
            continue
        for fn in (add, sub):
            fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
            fn.restype = ctypes.c_uint64
        # bool __atomic_compare_exchange_8(void *ptr, void *expected, uint64 desired,
        #                                  bool weak, int success_order, int failure_order)
        cas.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_uint64,
            ctypes.c_bool,
            ctypes.c_int,
            ctypes.c_int,
        ]
        cas.restype = ctypes.c_bool
        global _LIBATOMIC
        _LIBATOMIC = candidate
        return add, sub, cas, ""
    return None, None, None, problem


_LIBATOMIC = ""
fetch_add, fetch_sub, _cas, _ATOMICS_PROBLEM = _load_atomics()

COMPILED = "compiled"
LIBATOMIC = "libatomic"


def atomics_backend() -> str:
    """Which atomics the ring uses: "compiled" (transports._native, built at install),
    "libatomic" (ctypes fallback) or "" (none: buffers refuse to open)."""
    if _compiled is not None:
        return COMPILED
    return LIBATOMIC if fetch_add is not None else ""


class _LibatomicWord:
    """libatomic through ctypes, arguments built once and entered without dropping the GIL
    (about half the cost of `atomic_add`'s generic ctypes path)."""

    __slots__ = ("_add", "_arg", "_order", "_ptr", "_sub")

    def __init__(self, address: int) -> None:
        lib = ctypes.PyDLL(_LIBATOMIC)
        self._add = lib["__atomic_fetch_add_8"]  # not lib.__x: that name would be mangled
        self._sub = lib["__atomic_fetch_sub_8"]
        self._add.restype = self._sub.restype = None
        self._ptr = ctypes.c_void_p(address)
        self._arg = ctypes.c_uint64(0)
        self._order = ctypes.c_int(_SEQ_CST)

    def add(self, value: int) -> None:
        self._arg.value = value
        self._add(self._ptr, self._arg, self._order)

    def sub(self, value: int) -> None:
        self._arg.value = value
        self._sub(self._ptr, self._arg, self._order)


class AtomicWord:
    """One u64 in shared memory with atomic `add(value)` / `sub(value)` (0 <= value < 2**64),
    for the per-frame hot path. `add` and `sub` are plain callables (no Python frame with the
    compiled backend). Not thread-safe: callers serialise (the reader under its lock,
    the one writer)."""

    __slots__ = ("add", "backend", "sub")

    def __init__(self, address: int, backend: str | None = None) -> None:
        require_atomics()
        self.backend = backend or atomics_backend()
        self.add: Callable[[int], object]
        self.sub: Callable[[int], object]
        if self.backend == COMPILED:
            if _compiled is None:
                raise AtomicsUnavailable("transports._native was not built (no C compiler?)")
            self.add = partial(_compiled.fetch_add, address)
            self.sub = partial(_compiled.fetch_sub, address)
        elif self.backend == LIBATOMIC:
            if fetch_add is None:
                raise AtomicsUnavailable(f"cannot load libatomic ({_ATOMICS_PROBLEM})")
            word = _LibatomicWord(address)
            self.add, self.sub = word.add, word.sub
        else:
            raise ValueError(
                f"unknown atomics backend {backend!r}: use {COMPILED!r} or {LIBATOMIC!r}"
            )


_U64_LE = ctypes.c_uint64.__ctype_le__


def word_at(address: int) -> ctypes.c_uint64:
    """The little-endian u64 at `address` as one whole-word load/store (`.value`).

    struct.pack_into/unpack_from move the 8 bytes one at a time: a peer reading a field while we
    store it saw 0 mid-store (measured: 2.7% of reads in a tight loop), and the reference writer,
    reading payload_read_pos as 0, wrote a frame past the ring's end. Use this for every OIEB
    field the other side reads or writes while we do. Valid while the mapping is."""
    return _U64_LE.from_address(address)


def require_atomics() -> None:
    """Raise a clear error when neither backend is there (checked when a buffer is opened)."""
    if not atomics_backend():
        raise AtomicsUnavailable(
            f"transports._native was not built and libatomic cannot be loaded ({_ATOMICS_PROBLEM}); "
            "the ZeroBuffer free-space counter needs real atomic add/sub. Reinstall zcser with a "
            "C compiler present, or install libatomic: apt-get install libatomic1 "
            "(Debian/Ubuntu), dnf install libatomic (Fedora)."
        )


def atomic_add(address: int, value: int) -> int:
    """Atomically add to the u64 at `address`; returns the old value."""
    if _compiled is not None:
        return int(_compiled.fetch_add(address, value))
    assert fetch_add is not None
    return fetch_add(address, value, _SEQ_CST)


def atomic_sub(address: int, value: int) -> int:
    """Atomically subtract from the u64 at `address`; returns the old value."""
    if _compiled is not None:
        return int(_compiled.fetch_sub(address, value))
    assert fetch_sub is not None
    return fetch_sub(address, value, _SEQ_CST)


def compare_exchange(address: int, expected: int, desired: int) -> tuple[bool, int]:
    """Atomically replace the u64 at `address` with `desired` if it equals `expected`.
    Returns (swapped, value seen)."""
    if _compiled is not None:
        swapped, seen = _compiled.compare_exchange(address, expected, desired)
        return bool(swapped), int(seen)
    assert _cas is not None
    seen_box = ctypes.c_uint64(expected)
    ok = _cas(address, ctypes.addressof(seen_box), desired, False, _SEQ_CST, _SEQ_CST)
    return bool(ok), seen_box.value


def address_of(mm: mmap.mmap) -> int:
    """Absolute address of a mapping's first byte. The ctypes view holding the export is dropped
    at once, so the mapping can still be closed; the caller keeps the address valid by keeping
    the mapping open while it uses it."""
    view = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(view)
    finally:
        del view


# --- ownership ---------------------------------------------------------------------------------
#
# Every file a buffer is made of (the shm, both semaphores, the lock file) must be a regular file
# of this user that nobody else may write; the lock directory must be a real directory (not a
# symlink) of this user or root, sticky if others may write it. Checked with fstat on the
# descriptor we then use (no check-then-use race on the path). Semaphores are opened by name:
# their file is checked through a descriptor of its own, and stays the file posix_ipc opens
# because /dev/shm is sticky (others cannot replace a file of ours there).

_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
"""Never follow a symlink, never block (a FIFO or a device in place of a file)."""

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def file_kind(mode: int) -> str:
    """'a FIFO', 'a socket', ... for a st_mode ('a regular file' for one)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((kind for test, kind in _KINDS if test(mode)), "a special file")


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _foreign(what: str, path: object, st: os.stat_result, fix: str) -> ForeignResource:
    return ForeignResource(
        f"{what} {path} is owned by {_user(st.st_uid)} with mode "
        f"{stat.S_IMODE(st.st_mode):04o}; this process runs as {_user(os.geteuid())} and uses "
        f"only its own files that nobody else may write (another user could read or change "
        f"what is sent). {fix}",
        owner=st.st_uid,
        mode=stat.S_IMODE(st.st_mode),
    )


_FIX_NAME = (
    "Pick another buffer name, or have the owner (or root) remove it after checking what it is."
)


def check_owned(st: os.stat_result, what: str, path: object) -> None:
    """Raise unless `st` (an fstat) is a regular file of this user, writable by it alone:
    NameInUse for anything but a regular file, ForeignResource for another owner or a mode
    that lets group or others write."""
    if not stat.S_ISREG(st.st_mode):
        raise NameInUse(
            f"{what} {path} is {file_kind(st.st_mode)}, not a ZeroBuffer file: the name is in "
            "use by something else; pick another buffer name"
        )
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise _foreign(what, path, st, _FIX_NAME)


def _is_ours(path: str) -> bool:
    """A regular file of this user at `path` (not followed): ours to remove."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


# --- liveness ------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True when a process with this PID exists and is not a zombie. EPERM (another user's
    process) counts as alive, unlike the reference, which counts it as dead."""
    if pid <= 0 or pid >= 1 << 31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
            if state in (b"Z", b"X"):
                return False
        except (OSError, ValueError):
            pass
    return True


# --- lock files ----------------------------------------------------------------------------------

_LOCK_FLAGS = os.O_RDWR | _OPEN_FLAGS
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_LOCK_SUFFIX = ".lock"


def _open_dir(path: Path) -> int:
    """open(O_DIRECTORY | O_NOFOLLOW); ForeignResource for a symlink or a non-directory."""
    try:
        return os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ForeignResource(
                f"the ZeroBuffer lock directory {path} is {file_kind(st.st_mode)}, not a "
                f"directory, and is not followed: remove it, or set {L.LOCK_DIR_ENV} to a "
                "directory of this user"
            ) from None
        raise TransportEnvironmentError(
            f"cannot open the ZeroBuffer lock directory {path} ({exc}); it must be a directory "
            "this user can write"
        ) from exc


def open_lock_dir(create: bool = True) -> int:
    """A descriptor of the lock directory (layout.lock_dir()). Every lock file is then reached
    relative to it, so the directory checked is the one used.

    The shared directory (/tmp/zerobuffer, as the reference uses) is created sticky and
    writable by all (mode 1777, like /tmp) when missing, so every user can keep lock files in
    it; one named by $ZEROBUFFER_LOCK_DIR is created 0700. When it cannot be used by this user (another user's, or root's without write access
    for others), this user's own `<dir>-<uid>` (mode 0700) is used instead, unless the
    directory was named by $ZEROBUFFER_LOCK_DIR: then ForeignResource. ForeignResource also
    for a symlink or a directory others may write without the sticky bit;
    FileNotFoundError if missing and not `create`."""
    path = L.lock_dir()
    named = bool(os.environ.get(L.LOCK_DIR_ENV))  # the user's own choice: kept private
    try:
        return _open_lock_dir(path, create, 0o700 if named else 0o1777)
    except _NotOurs:
        if named:
            raise
        own = path.with_name(f"{path.name}-{os.geteuid()}")
        _log.debug("lock directory %s is not usable by this user; using %s", path, own)
        return _open_lock_dir(own, create, 0o700)


class _NotOurs(ForeignResource):
    """A lock directory that is well formed but not usable by this user: root's without write
    access for others, or another user's shared (sticky, 1777) one. Not hostile: this user then
    keeps its lock files in a directory of its own."""


def _open_lock_dir(path: Path, create: bool, mode: int) -> int:
    try:
        fd = _open_dir(path)
    except FileNotFoundError:
        if not create:
            raise
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, mode, follow_symlinks=False)  # mkdir's mode is masked by the umask
        except FileExistsError:
            pass
        except OSError as exc:
            raise TransportEnvironmentError(
                f"cannot create the ZeroBuffer lock directory {path} ({exc})"
            ) from exc
        fd = _open_dir(path)
    st = os.fstat(fd)
    uid, me = st.st_uid, os.geteuid()
    sticky = st.st_mode & stat.S_ISVTX
    shared = sticky and st.st_mode & 0o002
    if (uid == 0 and me != 0 and not st.st_mode & 0o002) or (uid not in (me, 0) and shared):
        os.close(fd)
        raise _NotOurs(f"the ZeroBuffer lock directory {path} is not usable by this user")
    if uid not in (me, 0) or (st.st_mode & 0o022 and not sticky):
        os.close(fd)
        raise _foreign(
            "the ZeroBuffer lock directory",
            path,
            st,
            "Its owner could remove or replace the lock files in it, or this user cannot write "
            f"there. Use a directory of this user (set {L.LOCK_DIR_ENV}), or have root create "
            f"{path} with mode 1777.",
        )
    return fd


def _same_file(fd: int, name: str, dir_fd: int | None) -> bool:
    """Whether NAME (relative to dir_fd, not followed) is the file open as `fd`."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _same_path(fd: int, path: str) -> bool:
    return _same_file(fd, path, None)


_LOCK_GRACE = 0.25
"""Seconds a new reader retries a held lock: another process's stale-resource sweep holds a dead
reader's lock for a moment while it removes the leftovers; a live reader holds it for good."""


def _flock_patiently(fd: int) -> None:
    """flock(LOCK_EX | LOCK_NB), retried for _LOCK_GRACE; BlockingIOError if still held."""
    deadline = time.monotonic() + _LOCK_GRACE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def lock_exists(name: str) -> bool:
    """Whether NAME's lock file exists (in a lock directory we would use)."""
    try:
        dir_fd = open_lock_dir(create=False)
    except (OSError, ForeignResource):
        return False
    try:
        os.stat(name + _LOCK_SUFFIX, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    finally:
        os.close(dir_fd)
    return True


_PROBE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_FANOUT_LOCK = "{}.fanout"
"""A fan-out publisher's lock stem in the same directory (transports/fanout/layout.lock_stem):
a segment it is creating looks like a ZeroBuffer creation cut short."""


def lock_held(name: str) -> bool:
    """Whether a live process holds NAME's lock now: its lock file exists and is flocked.
    Looks without creating the file, and holds a shared lock for an instant only (a creator
    taking it then retries, `_flock_patiently`)."""
    try:
        dir_fd = open_lock_dir(create=False)
    except (OSError, ForeignResource):
        return False
    try:
        fd = os.open(name + _LOCK_SUFFIX, _PROBE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    finally:
        os.close(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # drops our shared lock too
    return False


def acquire_lock(name: str) -> int:
    """Create and flock NAME's lock file; returns the descriptor (keep it open for the reader's
    lifetime). Raises BufferExists when a live process holds it, ForeignResource when the file
    (or the directory) is not this user's alone."""
    path = L.lock_path(name)
    file = name + _LOCK_SUFFIX
    dir_fd = open_lock_dir()
    try:
        for _ in range(20):
            try:
                fd = os.open(file, _LOCK_FLAGS | os.O_CREAT, L.FILE_MODE, dir_fd=dir_fd)
            except OSError as exc:
                raise TransportEnvironmentError(
                    f"cannot create the lock file {path} ({exc}); {path.parent} must be a "
                    "directory this user can write (all ZeroBuffer users of a machine share it)"
                ) from exc
            try:
                check_owned(os.fstat(fd), "the lock file", path)
                _flock_patiently(fd)
            except BlockingIOError:
                os.close(fd)
                raise BufferExists(
                    f"buffer {name!r} is owned by a live reader (it holds {path}); pick another "
                    "name or close that reader first"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # A closing reader deletes its lock file after we opened it: then our flock is on an
            # unlinked inode and proves nothing. Start again on the file now at the path.
            if _same_file(fd, file, dir_fd):
                with contextlib.suppress(OSError):
                    os.fchmod(fd, L.FILE_MODE)
                return fd
            os.close(fd)
    finally:
        os.close(dir_fd)
    raise BufferExists(f"lock file {path} keeps being replaced; is another reader starting?")


def release_lock(name: str, fd: int) -> None:
    """Delete the lock file while still holding it, then unlock (by closing)."""
    file = name + _LOCK_SUFFIX
    with contextlib.suppress(OSError, ForeignResource):
        dir_fd = open_lock_dir(create=False)
        try:
            if _same_file(fd, file, dir_fd):
                os.unlink(file, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    with contextlib.suppress(OSError):
        os.close(fd)


def cleanup_stale(is_orphan: Callable[[str], bool]) -> list[str]:
    """docs/protocol.md stale-resource cleanup, limited to what is provably ours and stale. For every
    lock file of a valid buffer name that is this user's and that nobody holds, while holding it
    (so no new reader of that name can start meanwhile): if `is_orphan(name)` proves no live
    process uses NAME's buffer (or there is none), remove the shm and both semaphores (those of
    this user only), then the lock file. Anything else is left alone. Returns the names cleaned."""
    cleaned: list[str] = []
    try:
        dir_fd = open_lock_dir(create=False)
    except FileNotFoundError:
        return cleaned
    try:
        with os.scandir(dir_fd) as it:
            entries = [e.name for e in it if e.is_file(follow_symlinks=False)]
        for file in entries:
            name = file[: -len(_LOCK_SUFFIX)]
            if not file.endswith(_LOCK_SUFFIX) or not _valid_name(name):
                continue
            try:
                fd = os.open(file, _LOCK_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    continue  # not ours to judge, let alone remove
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # held: its reader is alive
                if not _same_file(fd, file, dir_fd) or not is_orphan(name):
                    continue  # replaced meanwhile, or its buffer is in use or not a ZeroBuffer
                # Count it only if something was there: a concurrent sweep may have removed
                # the leftovers and a third process re-created the lock file meanwhile.
                found = [
                    unlink_shm(name),
                    unlink_semaphore(L.sem_w_name(name)),
                    unlink_semaphore(L.sem_r_name(name)),
                    _unlink_bell_at(name, dir_fd),
                ]
                if any(found):
                    cleaned.append(name)
                    _log.info("removed stale buffer %r (its reader and writer are dead)", name)
                with contextlib.suppress(OSError):
                    os.unlink(file, dir_fd=dir_fd)
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
    return cleaned


def _unlink_bell_at(name: str, dir_fd: int) -> bool:
    file = _bell_file(name)
    try:
        st = os.stat(file, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(file, dir_fd=dir_fd)
    return True


def _valid_name(name: str) -> bool:
    return bool(name) and len(name) <= L.NAME_MAX and L.NAME_RE.fullmatch(name) is not None


# --- shared memory -------------------------------------------------------------------------------


def shm_available() -> int | None:
    """Bytes free in /dev/shm, or None where there is no such filesystem (macOS)."""
    try:
        st = os.statvfs(L.SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _shm_full(name: str, needed: int, available: int | None) -> ShmFullError:
    have = "an unknown number of" if available is None else f"{available:,}"
    return ShmFullError(
        f"cannot create buffer {name!r}: it needs {needed:,} bytes of shared memory but "
        f"{L.SHM_DIR} has {have} bytes free. Use a smaller payload_size, remove stale buffers, "
        "or give the machine more shared memory; in Docker run the container with "
        "--shm-size=<bytes, e.g. 2g> or --ipc=host.",
        needed=needed,
        available=available,
    )


def check_space(name: str, needed: int) -> None:
    available = shm_available()
    if available is not None and needed > available:
        raise _shm_full(name, needed, available)


_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
"""Map every page up front (Linux): the ring's pages are then zeroed and mapped at creation and
attach, not one fault per 4 KiB during the first lap of sends: a copy into fresh pages costs
several times one into populated pages, and populating is paid once, at creation."""


_FILES = sys.platform.startswith("linux") and L.SHM_DIR.is_dir()
"""POSIX shared memory and named semaphores are files in /dev/shm (Linux): opened, checked and
removed there directly (elsewhere through posix_ipc, without the file checks)."""

_SIGNATURE = L.HEAD.pack(L.OIEB_SIZE, *L.VERSION)
"""oieb_size and version: the first bytes of every ZeroBuffer, written first at creation."""


_SHM_DIR = os.fspath(L.SHM_DIR)


def shm_path(name: str) -> str:
    """Where Linux shows shm NAME (/dev/shm/NAME)."""
    return f"{_SHM_DIR}/{name}"


def sem_path(os_name: str) -> str:
    """Where Linux keeps named semaphore OS_NAME ('/sem-w-x' -> /dev/shm/sem.sem-w-x)."""
    return f"{_SHM_DIR}/sem.{os_name.lstrip('/')}"


def create_shm(name: str, size: int, reserve: int | None = None) -> mmap.mmap:
    """Create shm NAME exclusively (mode 0600), sign it (oieb_size and version, so a creation cut
    short is still recognisably ours), reserve its pages and map it. Raises FileExistsError if it
    exists, ShmFullError if the pages cannot be reserved. On failure nothing is left behind.

    `reserve`: reserve only the first `reserve` bytes; the rest stays a hole that costs no
    memory until `reserve_pages` (a pool's ring, reserved when a writer takes its place). Such
    a segment is mapped without populating it."""
    try:
        shm = posix_ipc.SharedMemory(
            L.shm_name(name), flags=posix_ipc.O_CREX, mode=L.FILE_MODE, size=0
        )
    except posix_ipc.ExistentialError:
        raise FileExistsError(errno.EEXIST, "shared memory exists", name) from None
    try:
        os.fchmod(shm.fd, L.FILE_MODE)
        if _FILES:
            os.pwrite(shm.fd, _SIGNATURE, 0)
        flags = _MAP_FLAGS
        if reserve is not None and reserve < size:
            os.ftruncate(shm.fd, size)
            flags = mmap.MAP_SHARED
        if hasattr(os, "posix_fallocate"):
            _fallocate(shm.fd, name, 0, size if reserve is None else min(reserve, size))
        else:  # pragma: no cover - macOS
            os.ftruncate(shm.fd, size)
        return mmap.mmap(shm.fd, size, flags=flags)
    except BaseException:
        with contextlib.suppress(posix_ipc.Error):
            shm.unlink()
        raise
    finally:
        with contextlib.suppress(posix_ipc.Error, OSError):
            shm.close_fd()


def _fallocate(fd: int, name: str, offset: int, length: int) -> None:
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise _shm_full(name, length, shm_available()) from exc
        raise


def reserve_pages(name: str, offset: int, length: int) -> None:
    """Reserve the pages of shm NAME's bytes [offset, offset+length) (a hole left by
    create_shm(reserve=...)): ShmFullError, never a later SIGBUS, when /dev/shm is short."""
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - macOS: no holes there
        return
    fd = _open_shm_fd(name, write=True)
    try:
        _fallocate(fd, name, offset, length)
    finally:
        os.close(fd)


def release_pages(mm: mmap.mmap, offset: int, length: int) -> None:
    """Give the pages of [offset, offset+length) (whole pages inside it) back to the system;
    they read as zeros afterwards. Only for bytes nobody uses (a pool's empty ring)."""
    advice = getattr(mmap, "MADV_REMOVE", None)
    if advice is None:  # pragma: no cover - not Linux
        return
    page = mmap.PAGESIZE
    start = -(-offset // page) * page
    end = (offset + length) // page * page
    if end > start:
        mm.madvise(advice, start, end - start)


# --- bells: FIFOs in the lock directory (pools, docs/protocol.md) ------------------------------

_BELL_SUFFIX = ".bell"


def _bell_file(name: str) -> str:
    return name + _BELL_SUFFIX


def _check_bell(fd: int, path: object) -> None:
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode):
        raise NameInUse(
            f"{path} is {file_kind(st.st_mode)}, not a ZeroBuffer bell (a FIFO): the name is in "
            "use by something else; pick another buffer name"
        )
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise _foreign("the bell", path, st, _FIX_NAME)


def create_bell(name: str, hang_up: bool = True) -> int:
    """Create NAME's bell, a FIFO (mode 0600) in the lock directory, replacing a leftover FIFO
    of this user (the caller holds NAME's lock), and open its reading end (non-blocking).
    Returns the descriptor. `hang_up=False` opens it read-write, so it never reports a
    hang-up when its writers leave (fan-out: the reader does not track writers by it)."""
    file = _bell_file(name)
    dir_fd = open_lock_dir()
    try:
        for _ in range(3):
            try:
                os.mkfifo(file, L.FILE_MODE, dir_fd=dir_fd)
                break
            except FileExistsError:
                try:
                    st = os.stat(file, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                path = L.lock_dir() / file
                if not stat.S_ISFIFO(st.st_mode):
                    raise NameInUse(
                        f"{path} is {file_kind(st.st_mode)}, not a bell: the name is in use by "
                        "something else; pick another buffer name"
                    ) from None
                if st.st_uid != os.geteuid():
                    raise _foreign("the bell", path, st, _FIX_NAME) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(file, dir_fd=dir_fd)
        return _open_bell(file, dir_fd, os.O_RDONLY if hang_up else os.O_RDWR)
    finally:
        os.close(dir_fd)


def _open_bell(file: str, dir_fd: int, mode: int) -> int:
    fd = os.open(file, mode | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        _check_bell(fd, L.lock_dir() / file)
    except BaseException:
        os.close(fd)
        raise
    return fd


def reopen_bell(name: str, fd: int) -> int:
    """A fresh reading end of NAME's bell in place of `fd` (which reported a hang-up: its last
    writer left; a FIFO keeps saying so until reopened)."""
    dir_fd = open_lock_dir()
    try:
        new = _open_bell(_bell_file(name), dir_fd, os.O_RDONLY)
    except OSError as exc:  # replaced by a symlink (ELOOP) or removed by someone else
        raise NameInUse(
            f"the bell {L.lock_dir() / _bell_file(name)} was replaced or removed ({exc}); "
            "the channel cannot wait on it any more: close the Receiver and create a new one"
        ) from None
    finally:
        os.close(dir_fd)
    os.close(fd)
    return new


def open_bell(name: str) -> int | None:
    """The writing end of NAME's bell (non-blocking), or None when there is none or nobody
    reads it."""
    try:
        dir_fd = open_lock_dir(create=False)
    except (OSError, ForeignResource):
        return None
    try:
        return _open_bell(_bell_file(name), dir_fd, os.O_WRONLY)
    except (FileNotFoundError, OSError):
        return None  # ENXIO: no reader has it open (closing), ELOOP: a symlink
    finally:
        os.close(dir_fd)


def ring_bell(fd: int) -> None:
    """One byte into a bell; a full FIFO (EAGAIN) has rung already, a vanished reader (EPIPE)
    is the reader's business."""
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(fd, b"\x01")


def unlink_bell(name: str) -> bool:
    """Remove NAME's bell if it is a FIFO of this user."""
    try:
        dir_fd = open_lock_dir(create=False)
    except (OSError, ForeignResource):
        return False
    try:
        return _unlink_bell_at(name, dir_fd)
    finally:
        os.close(dir_fd)


def _open_shm_fd(name: str, write: bool) -> int:
    """A descriptor of NAME's shm, never following a link nor blocking, checked with fstat: a
    regular file of this user that nobody else may write (NameInUse / ForeignResource)."""
    if _FILES:
        path = shm_path(name)
        try:
            fd = os.open(path, (os.O_RDWR if write else os.O_RDONLY) | _OPEN_FLAGS)
        except FileNotFoundError:
            raise BufferNotFound(
                f"no buffer named {name!r}: start the reader first (it creates the buffer)"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EISDIR):
                raise NameInUse(
                    f"{path} is not a ZeroBuffer's shared memory ({exc.strerror}): the name is "
                    "in use by something else; pick another buffer name"
                ) from None
            raise TransportEnvironmentError(
                f"buffer {name!r} exists but is not accessible to this user ({exc}); run the "
                "writer as the reader's user"
            ) from None
    else:  # pragma: no cover - macOS: no files to open
        try:
            shm = posix_ipc.SharedMemory(L.shm_name(name))
        except posix_ipc.ExistentialError:
            raise BufferNotFound(
                f"no buffer named {name!r}: start the reader first (it creates the buffer)"
            ) from None
        except posix_ipc.PermissionsError as exc:
            raise TransportEnvironmentError(
                f"buffer {name!r} exists but is not accessible to this user ({exc}); run the "
                "writer as the reader's user"
            ) from None
        fd, path = shm.fd, L.shm_name(name)
    try:
        check_owned(os.fstat(fd), "the shared memory", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_shm(name: str) -> mmap.mmap:
    """Map an existing shm NAME read-write (never unlinks, never creates); it must be this
    user's alone (ForeignResource) and a regular file (NameInUse)."""
    fd = _open_shm_fd(name, write=True)
    try:
        size = os.fstat(fd).st_size
        if size < L.OIEB_SIZE:
            raise CorruptBuffer(
                f"buffer {name!r} is {size} bytes, smaller than its 128-byte header; it is "
                "being created or is not a ZeroBuffer. Retry, or remove it."
            )
        return mmap.mmap(fd, size, flags=_MAP_FLAGS)
    finally:
        os.close(fd)


def ring_pids(name: str) -> tuple[int, int]:
    """(reader_pid, writer_pid) of an existing shm NAME that is a ZeroBuffer of this user, read
    with pread (no mapping: a shrunk segment cannot SIGBUS us). A creation cut short (empty,
    signed only: 8 bytes, or signed and sized) counts, with both PIDs 0; callers hold NAME's
    lock, so a creation under way is never taken for one cut short. Raises BufferNotFound if
    there is none, NameInUse if it is not a ZeroBuffer (another program's shared memory, a
    FIFO), ForeignResource if it is not this user's alone."""
    fd = _open_shm_fd(name, write=False)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, L.OIEB_SIZE, 0)
    finally:
        os.close(fd)
    if size == 0:
        return 0, 0  # killed between creating and signing it
    if size == len(_SIGNATURE) and head[:5] == _SIGNATURE[:5]:
        # Killed between signing it and reserving its pages: create_shm leaves this exact
        # state (8 bytes, our signature) and nothing else does. Every caller holds NAME's lock,
        # so the creation that signed it is over: a stale segment, with no process attached.
        return 0, 0
    if len(head) < L.OIEB_SIZE or head[:5] != _SIGNATURE[:5]:  # oieb_size, major version
        raise NameInUse(
            f"{shm_path(name)} ({size} bytes) is not a ZeroBuffer buffer (no ZeroBuffer "
            f"{L.VERSION[0]}.x header): another program's shared memory has this name. Pick "
            "another buffer name; remove it only if you know it is stale."
        )
    return L.U64.unpack_from(head, L.OFF_READER_PID)[0], L.U64.unpack_from(head, L.OFF_WRITER_PID)[
        0
    ]


def _removable(path: str, what: str) -> bool:
    """Whether `path` (not followed) is there and ours to remove: False if missing; NameInUse if
    it is not a regular file, ForeignResource if another user owns it."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise NameInUse(
            f"{what} {path} is {file_kind(st.st_mode)}: the name is in use by something else; "
            "pick another buffer name"
        )
    if st.st_uid != os.geteuid():
        raise _foreign(what, path, st, _FIX_NAME)
    return True


def remove_stale_ring(name: str) -> None:
    """Before re-creating NAME (its lock held): remove an existing shm NAME and its semaphores
    only if they are a stale ZeroBuffer of this user (a valid header, its reader dead). Raises
    BufferExists for a live one, NameInUse for anything that is not a ZeroBuffer,
    ForeignResource for another user's; removes nothing then."""
    try:
        reader_pid, _ = ring_pids(name)
    except BufferNotFound:
        reader_pid = 0
    if reader_pid and pid_alive(reader_pid):
        raise BufferExists(
            f"buffer {name!r} already exists with a live reader (pid {reader_pid}); pick another "
            "name or close that reader first"
        )
    if not reader_pid and lock_held(_FANOUT_LOCK.format(name)):
        # An empty NAME is also a fan-out segment its publisher is creating (it then holds its
        # own lock: ours, NAME's, does not keep it away)
        raise BufferExists(
            f"{name!r} is being created by a fan-out publisher (it holds its lock); a channel "
            "cannot share its name: pick another name"
        )
    sems = [L.sem_w_name(name), L.sem_r_name(name)]
    if _FILES:
        for os_name in sems:
            _removable(sem_path(os_name), "the semaphore")
    if unlink_shm(name):
        _log.info("replaced stale buffer %r of a dead reader", name)
    for os_name in sems:
        unlink_semaphore(os_name)


def unlink_shm(name: str) -> bool:
    """Unlink NAME's shm if it is this user's regular file; False if it was not there (or not
    ours)."""
    if _FILES and not _is_ours(shm_path(name)):
        return False
    try:
        posix_ipc.unlink_shared_memory(L.shm_name(name))
    except posix_ipc.ExistentialError:
        return False
    return True


def shm_exists(name: str) -> bool:
    """Whether anything has NAME in /dev/shm (a file of any kind)."""
    if _FILES:
        return os.path.lexists(shm_path(name))
    try:  # pragma: no cover - macOS
        shm = posix_ipc.SharedMemory(L.shm_name(name))
    except posix_ipc.Error:
        return False
    with contextlib.suppress(posix_ipc.Error, OSError):
        shm.close_fd()
    return True


# --- semaphores ----------------------------------------------------------------------------------


def create_semaphore(os_name: str) -> posix_ipc.Semaphore:
    """Create a semaphore (initial 0, mode 0600), replacing a leftover of this user of the same
    name (the caller holds the buffer's lock and created its shm exclusively, so no live buffer
    owns it). Another user's raises ForeignResource, anything but a file NameInUse."""
    for _ in range(3):
        try:
            return posix_ipc.Semaphore(
                os_name, flags=posix_ipc.O_CREX, mode=L.FILE_MODE, initial_value=0
            )
        except posix_ipc.ExistentialError:
            if _FILES:
                _removable(sem_path(os_name), "the semaphore")
            unlink_semaphore(os_name)
        except OSError as exc:  # a semaphore is a page in /dev/shm: full after the shm fit
            if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                raise _shm_full(os_name.lstrip("/"), mmap.PAGESIZE, shm_available()) from exc
            raise
    raise FileExistsError(errno.EEXIST, "semaphore keeps reappearing", os_name)


def _missing_semaphore(os_name: str) -> BufferNotFound:
    return BufferNotFound(
        f"semaphore {os_name} is missing: the buffer is being created or was closed; start "
        "(or restart) the reader, then connect"
    )


def open_semaphore(os_name: str) -> posix_ipc.Semaphore:
    """Open an existing semaphore; its file must be this user's alone (ForeignResource)."""
    fd = -1
    path = sem_path(os_name)
    if _FILES:
        try:
            fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
        except FileNotFoundError:
            raise _missing_semaphore(os_name) from None
        except OSError as exc:
            raise NameInUse(
                f"the semaphore {path} cannot be opened as a file ({exc.strerror}): the name is "
                "in use by something else; pick another buffer name"
            ) from None
    try:
        if fd >= 0:
            check_owned(os.fstat(fd), "the semaphore", path)
        try:
            sem = posix_ipc.Semaphore(os_name)
        except posix_ipc.ExistentialError:
            raise _missing_semaphore(os_name) from None
        if fd >= 0 and not _same_path(fd, path):
            close_semaphore(sem)
            raise _missing_semaphore(os_name)  # replaced meanwhile (by our own user)
        return sem
    finally:
        if fd >= 0:
            os.close(fd)


def unlink_semaphore(os_name: str) -> bool:
    """Unlink a named semaphore if it is this user's; False if it was not there (or not ours)."""
    if _FILES and not _is_ours(sem_path(os_name)):
        return False
    try:
        posix_ipc.unlink_semaphore(os_name)
    except posix_ipc.ExistentialError:
        return False
    return True


def close_semaphore(sem: posix_ipc.Semaphore) -> None:
    with contextlib.suppress(posix_ipc.Error, OSError):
        sem.close()


def post(sem: posix_ipc.Semaphore) -> None:
    """Post; a semaphore at its maximum count already says "wake up", so overflow is ignored."""
    try:
        sem.release()
    except OSError as exc:  # pragma: no cover - needs 2**31 unconsumed posts
        if exc.errno != errno.EOVERFLOW:
            raise


def try_acquire(sem: posix_ipc.Semaphore, timeout: float) -> bool:
    """Wait up to `timeout` seconds (0: one try). False on timeout or on a signal (the caller
    re-tests and loops, so Python's signal handlers run)."""
    try:
        sem.acquire(timeout)
    except (posix_ipc.BusyError, posix_ipc.SignalError):
        return False
    return True


SEM_VALUE = bool(posix_ipc.SEMAPHORE_VALUE_SUPPORTED)
"""sem_getvalue works (Linux): spinning can peek at the count without a failing syscall."""


def try_take(sem: posix_ipc.Semaphore) -> bool:
    """One non-blocking try, peeking first where possible (a failed acquire raises, ~10x dearer)."""
    if SEM_VALUE and not sem.value:
        return False
    return try_acquire(sem, 0)
