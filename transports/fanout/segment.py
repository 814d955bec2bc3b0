"""The operating system side of a fan-out segment: creating and attaching the shared memory,
the publisher's lock file, and the bells (FIFOs in the lock directory) that wake sleepers.

Conventions as transports/zerobuffer/posix.py: files 0600 of this user that nobody else may
write, never a symlink followed, checked with fstat on the descriptor then used; the lock
directory is the ZeroBuffer one ($ZEROBUFFER_LOCK_DIR or /tmp/zerobuffer).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Iterable

import posix_ipc

from transports.errors import (
    BufferExists,
    BufferNotFound,
    CorruptBuffer,
    IncompatibleBuffer,
    NameInUse,
    ShmFullError,
)
from transports.fanout import layout as F
from transports.zerobuffer import posix as _shm

_U64 = F.U64
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)

native = _shm.hotpath if hasattr(_shm.hotpath, "fanout_take") else None
"""The compiled per-message paths (_native.c, "fan-out"), or None: the Python code does all."""
if native is not None:
    native.configure_fanout(
        F.OFF_HEAD,
        F.OFF_LAST,
        F.OFF_SEQ,
        F.OFF_CLOSED,
        F.OFF_JOINS,
        F.OFF_PUB_ARMED,
        F.OFF_SKIPS,
        F.S_STATE,
        F.S_READ,
        F.S_ARMED,
        F.S_LAST_SEQ,
        F.SKIP_ENTRIES,
        F.ACTIVE,
    )


def _shm_full(name: str, needed: int) -> ShmFullError:
    available = _shm.shm_available()
    return ShmFullError(
        f"cannot create publisher {name!r}: it needs {needed:,} bytes of shared memory but "
        f"/dev/shm has {available or 0:,} free. Use a smaller capacity, remove stale segments "
        "(`zcser gc`), or give the machine more shared memory (Docker: --shm-size=2g).",
        needed=needed,
        available=available,
    )


def read_header(name: str) -> tuple[bytes, int] | None:
    """(magic, publisher pid) of an existing shm NAME without mapping it, or None if absent.
    NameInUse/ForeignResource as posix.ring_pids for what is not this user's."""
    try:
        mm = _shm.open_shm(name)
    except BufferNotFound:
        return None
    except CorruptBuffer:
        return b"", 0  # cut short while being created
    try:
        return bytes(mm[: len(F.MAGIC)]), _U64.unpack_from(mm, F.OFF_PUB_PID)[0]
    finally:
        mm.close()


def remove_stale(name: str, slots: int = F.MAX_SUBSCRIBERS) -> bool:
    """Remove shm NAME and its bells if it is a fan-out segment of this user whose publisher
    is dead (the caller holds NAME's publisher lock). BufferExists for a live one, NameInUse
    for shared memory that is not a fan-out segment. True if something was removed."""
    head = read_header(name)
    removed = False
    if head is not None:
        magic, pid = head
        if magic not in (F.MAGIC, b"\0" * len(F.MAGIC), b""):
            raise NameInUse(
                f"/dev/shm/{name} exists and is not a zcser fan-out segment: another program "
                "uses this name; pick another publisher name"
            )
        if magic != F.MAGIC and _shm.lock_held(name):
            # Empty or zero-headed is also a ZeroBuffer ring its reader is creating: the reader
            # holds NAME's ZeroBuffer lock (our publisher lock does not keep it away)
            raise BufferExists(
                f"/dev/shm/{name} is being created by a ZeroBuffer reader (a zcser.Receiver): a "
                "publisher cannot share its name; pick another name"
            )
        if pid and pid != os.getpid() and _shm.pid_alive(pid):
            raise BufferExists(
                f"publisher {name!r} already exists (pid {pid}); pick another name or close it"
            )
        removed = _shm.unlink_shm(name)
    remove_bells(name, slots)
    return removed


def remove_bells(name: str, slots: int) -> None:
    """Unlink the bells of NAME that are this user's FIFOs."""
    for fname in [F.pub_bell(name)] + [F.sub_bell(name, i) for i in range(slots)]:
        drop_bell(fname)


def create_shm(name: str, size: int) -> mmap.mmap:
    """Create shm NAME exclusively (0600), reserve its pages (ShmFullError when /dev/shm is
    short, never SIGBUS later) and map it. Nothing is left behind on failure."""
    try:
        shm = posix_ipc.SharedMemory("/" + name, flags=posix_ipc.O_CREX, mode=F.FILE_MODE, size=0)
    except posix_ipc.ExistentialError:
        raise BufferExists(f"shared memory {name!r} keeps being re-created") from None
    try:
        os.fchmod(shm.fd, F.FILE_MODE)
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(shm.fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise _shm_full(name, size) from exc
                raise
        else:  # pragma: no cover - macOS
            os.ftruncate(shm.fd, size)
        return mmap.mmap(shm.fd, size, flags=_MAP_FLAGS)
    except BaseException:
        with contextlib.suppress(posix_ipc.Error):
            shm.unlink()
        raise
    finally:
        with contextlib.suppress(posix_ipc.Error, OSError):
            shm.close_fd()


def open_segment(name: str) -> tuple[mmap.mmap, int, int, int]:
    """Map publisher NAME's segment; check its header against its size. Returns
    (mapping, slots, metadata block size, payload size). BufferNotFound while it is missing
    or being created; IncompatibleBuffer / CorruptBuffer for what is not a valid segment."""
    try:
        mm = _shm.open_shm(name)
    except BufferNotFound:
        raise BufferNotFound(
            f"no publisher named {name!r}: start the Publisher first (it creates the segment)"
        ) from None
    except CorruptBuffer:
        raise BufferNotFound(f"publisher {name!r} is being created; retry") from None
    try:
        if not _U64.unpack_from(mm, F.OFF_READY)[0]:
            raise BufferNotFound(f"publisher {name!r} is being created; retry")
        if bytes(mm[: len(F.MAGIC)]) != F.MAGIC:
            raise IncompatibleBuffer(
                f"/dev/shm/{name} is not a zcser fan-out segment (a channel or another "
                "program's shared memory has this name)"
            )
        version = _U64.unpack_from(mm, F.OFF_VERSION)[0]
        if version != F.VERSION:
            raise IncompatibleBuffer(
                f"publisher {name!r} uses fan-out layout {version}; this zcser reads "
                f"{F.VERSION}: use the same zcser version on both sides"
            )
        slots = _U64.unpack_from(mm, F.OFF_SLOTS)[0]
        meta = _U64.unpack_from(mm, F.OFF_META_SIZE)[0]
        payload = _U64.unpack_from(mm, F.OFF_PAYLOAD_SIZE)[0]
        if (
            not 1 <= slots <= F.MAX_SUBSCRIBERS
            or meta % F.ALIGNMENT
            or meta > 1 << 40
            or payload % F.PAGE
            or not payload
            or payload > 1 << 48
            or F.total_size(slots, meta, payload) > len(mm)
        ):
            raise CorruptBuffer(
                f"publisher {name!r}: {slots} slots, metadata {meta} and payload {payload} "
                f"bytes do not fit its {len(mm)}-byte segment"
            )
        return mm, slots, meta, payload
    except BaseException:
        mm.close()
        raise


# --- bells ---------------------------------------------------------------------------------------

# The bells are the pool's (zerobuffer/posix.py), named by their file: `<stem>.bell`.


def _stem(fname: str) -> str:
    return fname.removesuffix(".bell")


def make_bell(fname: str) -> int:
    """Create (replacing our own leftover) and open the FIFO `fname` in the lock directory for
    reading, without blocking; the returned descriptor is readable when a byte was rung. It is
    open read-write: it never reports a hang-up."""
    return _shm.create_bell(_stem(fname), hang_up=False)


def open_bell(fname: str) -> int:
    """A non-blocking write descriptor of someone's bell, or -1 if it is not there (the
    sleeper's backstop then covers it)."""
    fd = _shm.open_bell(_stem(fname))
    return -1 if fd is None else fd


def drop_bell(fname: str) -> None:
    """Unlink our bell `fname` (the descriptor is closed by its owner)."""
    with contextlib.suppress(OSError, Exception):
        _shm.unlink_bell(_stem(fname))


def ring(fd: int) -> None:
    """One byte into a bell; a full pipe already says "wake up"."""
    if fd >= 0:
        _shm.ring_bell(fd)


def drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass


def remove_stale_quietly(name: str) -> None:
    """After its publisher died: remove NAME's segment and bells if it is still that dead
    publisher's (nobody holds its lock). Never raises."""
    with contextlib.suppress(Exception):
        fd = _shm.acquire_lock(F.lock_stem(name))
        try:
            remove_stale(name)
        finally:
            _shm.release_lock(F.lock_stem(name), fd)


_LOCK_SUFFIX = ".fanout.lock"


def collect(prefix: str = "", also: Iterable[str] = ()) -> list[str]:
    """Remove the fan-out segments (with their bells and lock file) of this user whose publisher
    is dead: nobody holds the publisher lock and the segment's publisher pid is not alive.
    Looks at the publisher lock files, and at the names in `also` (segments found in /dev/shm,
    whose lock file may be gone). Returns the names removed; live ones and what is not ours
    are left alone."""
    removed: list[str] = []
    files: list[str] = []
    try:
        dir_fd = _shm.open_lock_dir(create=False)
    except (OSError, Exception):
        pass  # no lock directory (or not ours): only the segments found elsewhere
    else:
        try:
            files = [f for f in os.listdir(dir_fd) if f.endswith(_LOCK_SUFFIX)]
        finally:
            os.close(dir_fd)
    found = set(also)
    names = {file[: -len(_LOCK_SUFFIX)] for file in files} | found
    for name in sorted(names):
        if (
            not name.startswith(prefix)
            or not name
            or not all(c.isalnum() or c in "_-" for c in name)
        ):
            continue
        try:
            fd = _shm.acquire_lock(F.lock_stem(name))  # BufferExists while a publisher lives
        except Exception:
            continue
        try:
            if remove_stale(name) or name not in found:
                removed.append(name)  # a segment removed, or a dead publisher's lock file
        except Exception:
            pass
        finally:
            _shm.release_lock(F.lock_stem(name), fd)
    return removed
