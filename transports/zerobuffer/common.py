"""What the ZeroBuffer reader and writer share: sizes and defaults, timeout and name checks, the
stats records, and the checks made when a buffer is created or attached (docs/protocol.md)."""

from __future__ import annotations

import contextlib
import enum
import mmap
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from transports.errors import (
    BufferExists,
    BufferNotFound,
    CorruptBuffer,
    IncompatibleBuffer,
    InvalidConfig,
    InvalidName,
    ReaderDead,
    WriterAlreadyConnected,
)
from transports.zerobuffer import layout as L
from transports.zerobuffer import posix as _shm

__all__ = [
    "DEFAULT_SPIN",
    "POLL_INTERVAL",
    "BufferConfig",
    "ReaderStats",
    "WriterStats",
    "interrupts_deferred",
    "is_orphan",
]

DEFAULT_SPIN = 500
"""Non-blocking looks at the semaphore (or the free counter) before a blocking wait. The first
`_SPIN_FAST` looks go back to back, each later one yields the CPU first, so an idle wait spins
briefly: long enough to catch a busy peer's answer without paying a futex wake-up, bounded so an
idle peer costs little CPU (docs/benchmarks.md). `spin=0` disables it."""

_SPIN_FAST = 64
"""Looks taken back to back before each further look first yields the CPU (`sched_yield`): on a
busy or 2-core machine the peer may be waiting for this very core to produce its answer; without
yielding, round trips were several times slower (the peer ran only after the spin ended)."""

_SPIN_BUSY_MIN = 500
_SPIN_BUSY_MAX = 30_000
"""With the compiled module the reader spins in one compiled call (GIL released): it polls for
a while, then yields the CPU and polls again, `spin - _SPIN_FAST` times (transports/_native.c
wait_post). The first poll's length (nanoseconds, within these bounds) adapts: it grows while
answers arrive during it or, later, from another core, and halves when one arrives right after
a yield that ran another task for a short while (the peer sharing this core, which a long poll
only delays). After such a yield the spin polls only a few times before the next one; after a
yield that returned at once, or that let an unrelated task run a whole time slice, it polls
as long as the first time. Measurements: docs/benchmarks.md (channel)."""

_SPIN_LIMIT_NS = 2_000_000
"""The compiled spin stops after this long whatever is left (yields may wait for other
processes): a signal's handler (KeyboardInterrupt) runs at most this late."""

POLL_INTERVAL = 0.05
"""Longest single blocking wait (seconds) before the peer's liveness is checked again."""
_U64 = L.U64


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the block with Ctrl-C held back: SIGINT's Python handler (KeyboardInterrupt) runs
    as the block ends, not inside it, so creating or removing a buffer's names (shm,
    semaphores, lock file) is never cut in half. Python runs signal handlers in the main
    thread only, so elsewhere (and when SIGINT has no Python handler) this changes nothing.
    Never around a wait: Ctrl-C must still interrupt those."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):
        yield
        return
    caught: list[Any] = []

    def hold(signum: int, frame: Any) -> None:
        caught.append(frame)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            previous(signal.SIGINT, caught[0])


class _Unset(enum.Enum):
    token = 0


_UNSET: Final = _Unset.token
TimeoutArg = float | None | _Unset


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not L.NAME_RE.fullmatch(name) or len(name) > L.NAME_MAX:
        raise InvalidName(
            f"invalid buffer name {name!r}: use 1-{L.NAME_MAX} characters from "
            "[A-Za-z0-9_-] (a '/' would break the OS names)"
        )


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise InvalidConfig(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return float(timeout)


@dataclass(frozen=True)
class BufferConfig:
    """Sizes of a new buffer's blocks; each is rounded up to a multiple of 64 bytes.
    `metadata_size` may be 0 (no metadata block)."""

    metadata_size: int = 1024
    payload_size: int = 1 << 20

    def __post_init__(self) -> None:
        for field, low in (("metadata_size", 0), ("payload_size", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidConfig(f"{field} must be an int >= {low}, not {value!r}")
            if value > 1 << 48:
                raise InvalidConfig(f"{field} of {value} bytes is beyond any machine")


@dataclass(frozen=True)
class ReaderStats:
    """A reader's view of its buffer. Bytes count headers and wasted wrap tails too."""

    capacity: int  # payload ring bytes (P)
    used: int  # P - free: unread, held, or waiting behind a held frame
    free: int  # bytes the writer may fill now
    utilisation: float  # used / capacity
    frames: int  # frames read
    bytes: int  # data bytes read
    frames_held: int  # frames read and not yet released (pinning ring space)
    bytes_held: int  # ring bytes (16 + N each) of those frames
    blocked_seconds: float  # time spent blocked waiting for frames


@dataclass(frozen=True)
class WriterStats:
    """A writer's view of its buffer."""

    capacity: int
    used: int
    free: int
    utilisation: float
    frames: int  # frames written
    bytes: int  # data bytes written
    frames_unread: int  # entries (frames and wraps) written that the reader has not read yet
    blocked_seconds: float  # time spent blocked waiting for space


def metadata_span(name: str, mm: mmap.mmap, block: int) -> tuple[int, int] | None:
    """Where the written metadata lies in the mapping, as (start, length); None before any
    writer wrote it. CorruptBuffer when its length does not fit the `block`-byte block."""
    written = _U64.unpack_from(mm, L.OFF_METADATA_WRITTEN)[0]
    if not written:
        return None
    length = _U64.unpack_from(mm, L.OIEB_SIZE)[0]
    if length > block or L.METADATA_PREFIX + length > min(written, block):
        raise CorruptBuffer(
            f"buffer {name!r}: metadata claims {length} bytes ({written} written) in a "
            f"{block}-byte block"
        )
    return L.OIEB_SIZE + L.METADATA_PREFIX, length


def _peek_pids(name: str) -> tuple[int, int] | None:
    """(reader_pid, writer_pid) of an existing buffer, or None if it has no readable OIEB."""
    try:
        return _shm.ring_pids(name)  # None for anything not a ZeroBuffer of this user's alone
    except Exception:
        return None


def is_orphan(name: str) -> bool:
    """For stale cleanup: no live process uses NAME's shm (or there is none)."""
    if not _shm.shm_exists(name):
        return True
    pids = _peek_pids(name)
    if pids is None:
        return False
    return not any(pid and _shm.pid_alive(pid) for pid in pids)


def _create_exclusive(name: str, total: int, reserve: int | None = None) -> mmap.mmap:
    """Create the shm with O_EXCL. We hold NAME's lock, so an existing shm of that name belongs to
    a dead reader (or one that skipped the lock): replace the former, refuse the latter."""
    try:
        return _shm.create_shm(name, total, reserve)
    except FileExistsError:
        pass
    _shm.remove_stale_ring(name)  # only a stale ZeroBuffer of this user; raises otherwise
    try:
        return _shm.create_shm(name, total, reserve)
    except FileExistsError:
        raise BufferExists(f"buffer {name!r} keeps being recreated by another process") from None


def _check_attach(name: str, mm: mmap.mmap) -> tuple[int, int]:
    """docs/protocol.md writer attach checks. Returns (M, P)."""
    # reader_pid first: the reader stores it last, so once it is set the rest is complete;
    # while it is 0 a half-written OIEB means the buffer is still being created.
    reader_pid = _U64.unpack_from(mm, L.OFF_READER_PID)[0]
    oieb_size, major, _minor, _patch, _ = L.HEAD.unpack_from(mm, 0)
    unsigned = (oieb_size, major) != (L.OIEB_SIZE, L.VERSION[0])  # signed first, sized later
    if reader_pid == 0 and (unsigned or not _U64.unpack_from(mm, L.OFF_PAYLOAD_SIZE)[0]):
        raise BufferNotFound(f"buffer {name!r} is still being created; retry in a moment")
    if oieb_size != L.OIEB_SIZE:
        raise IncompatibleBuffer(
            f"buffer {name!r} has an OIEB of {oieb_size} bytes, not 128: another protocol "
            "version or not a ZeroBuffer"
        )
    if major != L.VERSION[0]:
        raise IncompatibleBuffer(
            f"buffer {name!r} speaks ZeroBuffer {major}.x; this writer speaks {L.VERSION[0]}.x"
        )
    M = _U64.unpack_from(mm, L.OFF_METADATA_SIZE)[0]
    P = _U64.unpack_from(mm, L.OFF_PAYLOAD_SIZE)[0]
    size = len(mm)
    if M % L.ALIGNMENT or P % L.ALIGNMENT or P < L.ALIGNMENT or size < L.OIEB_SIZE + M + P:
        raise CorruptBuffer(
            f"buffer {name!r}: metadata_size {M} and payload_size {P} do not fit its {size} "
            "bytes in 64-byte blocks"
        )
    checks = (
        ("payload_write_pos", L.OFF_WRITE_POS, P),
        ("payload_read_pos", L.OFF_READ_POS, P - 1),
        ("payload_free_bytes", L.OFF_PAYLOAD_FREE, P),
        ("metadata_written_bytes", L.OFF_METADATA_WRITTEN, M),
    )
    for field, offset, limit in checks:
        value = _U64.unpack_from(mm, offset)[0]
        if value > limit:
            raise CorruptBuffer(f"buffer {name!r}: {field} is {value}, above its limit {limit}")
    if not reader_pid or not _shm.pid_alive(reader_pid):
        raise ReaderDead(
            f"buffer {name!r} has no live reader (reader_pid {reader_pid}); start the reader first"
        )
    return M, P


def _claim_writer(name: str, mm: mmap.mmap, addr: int, pid: int) -> None:
    """Take the writer role with a compare-and-swap on writer_pid: a live writer refuses us, a
    dead (or zero) one is taken over, and two writers connecting at once cannot both win."""
    address = addr + L.OFF_WRITER_PID
    for _ in range(5):
        current = _U64.unpack_from(mm, L.OFF_WRITER_PID)[0]
        if current and (current == pid or _shm.pid_alive(current)):
            raise WriterAlreadyConnected(
                f"buffer {name!r} already has a live writer (pid {current}); one writer per "
                "buffer: close that writer first"
            )
        swapped, _ = _shm.compare_exchange(address, current, pid)
        if swapped:
            return
    raise WriterAlreadyConnected(f"buffer {name!r}: another writer is connecting at the same time")
