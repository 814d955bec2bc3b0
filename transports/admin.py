"""List, inspect and garbage-collect ZeroBuffer buffers on this machine (`python -m zcser ls`).

Looking never changes anything: OIEBs are read with `pread` (no mapping, so a truncated segment
cannot SIGBUS us), every file is opened without following links or blocking and skipped unless
it is a regular file (a FIFO in /dev/shm cannot hang `ls`), and lock ownership comes from
/proc/locks (no flock attempt that could make a starting reader fail). Only `collect_garbage`
removes things, through the transport's own stale-resource cleanup, and only this user's files
of buffers whose owners are provably dead.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from transports.errors import CorruptBuffer, TransportEnvironmentError
from transports.fanout import layout as F
from transports.fanout import segment as _fanout_segment
from transports.zerobuffer import is_orphan
from transports.zerobuffer import layout as L
from transports.zerobuffer import pool as _pool
from transports.zerobuffer import posix as _shm
from transports.zerobuffer.pool import MAX_PLACES, control_name

__all__ = [
    "CRITICAL",
    "DEGRADED",
    "BufferInfo",
    "FanoutInfo",
    "Oieb",
    "PoolInfo",
    "collect_garbage",
    "fanout_names",
    "health",
    "inspect_buffer",
    "inspect_fanout",
    "inspect_pool",
    "list_buffers",
    "list_fanouts",
    "parse_oieb",
    "unread_bytes",
]

DEGRADED = 0.80
"""ZeroBuffer's guidance: utilisation from 80% is degraded (the writer will soon block)."""
CRITICAL = 0.95
"""Above 95% the buffer is critical (the writer is blocked or about to be)."""

_SEM_PREFIXES = ("sem.sem-w-", "sem.sem-r-")
_POOL_SUFFIX = "--pool"
_LOCK_SUFFIX = ".lock"
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
"""Never follow a link, never block on a FIFO or a device."""


# --- pure parts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Oieb:
    """The 128-byte Operation Info Exchange Block, field by field (docs/protocol.md)."""

    oieb_size: int
    version: tuple[int, int, int, int]
    metadata_size: int
    metadata_free_bytes: int
    metadata_written_bytes: int
    payload_size: int
    payload_free_bytes: int
    payload_write_pos: int
    payload_read_pos: int
    payload_written_count: int
    payload_read_count: int
    writer_pid: int
    reader_pid: int


def parse_oieb(raw: bytes, size: int | None = None) -> Oieb:
    """Decode an OIEB; CorruptBuffer if it is not a ZeroBuffer 1.x header consistent with a
    segment of `size` bytes (when given)."""
    if len(raw) < L.OIEB_SIZE:
        raise CorruptBuffer(f"{len(raw)} bytes is shorter than the 128-byte OIEB")
    values = L.OIEB_STRUCT.unpack_from(raw, 0)
    oieb = Oieb(values[0], tuple(values[1:5]), *values[5:16])
    if oieb.oieb_size != L.OIEB_SIZE or oieb.version[0] != L.VERSION[0]:
        raise CorruptBuffer(
            f"not a ZeroBuffer 1.x header (oieb_size {oieb.oieb_size}, version {oieb.version})"
        )
    P, M = oieb.payload_size, oieb.metadata_size
    if size is not None and L.total_size(M, P) > size:
        raise CorruptBuffer(f"blocks of {M} + {P} bytes do not fit the {size}-byte segment")
    if P <= 0 or oieb.payload_free_bytes > P or oieb.payload_write_pos > P:
        raise CorruptBuffer(f"payload fields out of range for a {P}-byte ring")
    return oieb


def parse_header(raw: bytes, size: int, name: str) -> Oieb:
    """`parse_oieb`, except that a pool's control segment (NAME--pool: an OIEB without payload,
    the pool table in its metadata block) is checked as one: its table must be valid."""
    if not name.endswith(_POOL_SUFFIX):
        return parse_oieb(raw, size)
    if len(raw) < L.OIEB_SIZE:
        raise CorruptBuffer(f"{len(raw)} bytes is shorter than the 128-byte OIEB")
    values = L.OIEB_STRUCT.unpack_from(raw, 0)
    oieb = Oieb(values[0], tuple(values[1:5]), *values[5:16])
    if oieb.oieb_size != L.OIEB_SIZE or oieb.version[0] != L.VERSION[0] or oieb.payload_size:
        raise CorruptBuffer("not a zcser pool control segment (no ZeroBuffer 1.x header)")
    if L.OIEB_SIZE + oieb.metadata_size > size:
        raise CorruptBuffer(f"a {oieb.metadata_size}-byte table does not fit {size} bytes")
    _pool.parse_control(raw[: L.OIEB_SIZE + oieb.metadata_size])
    return oieb


def health(utilisation: float) -> str:
    """'healthy' below 80% used, 'degraded' up to 95%, 'critical' above (ZeroBuffer's bands)."""
    if utilisation > CRITICAL:
        return "critical"
    if utilisation >= DEGRADED:
        return "degraded"
    return "healthy"


def unread_bytes(header_at: Callable[[int], tuple[int, int]], oieb: Oieb) -> int | None:
    """Ring bytes of the entries written but not yet read, found by walking the headers from
    `payload_read_pos`; None if the walk meets something no correct writer writes (or races
    with a live writer). `header_at(offset)` returns the (length, sequence) header there."""
    P = oieb.payload_size
    pos = oieb.payload_read_pos
    pending = oieb.payload_written_count - oieb.payload_read_count
    if pending < 0 or pending > P or pos >= P:
        return None
    total = 0
    for _ in range(pending):
        if P - pos < L.HEADER_SIZE:
            total += P - pos
            pos = 0
            continue
        n, seq = header_at(pos)
        if n == 0:
            if seq != 0 or pos == 0:
                return None
            total += P - pos
            pos = 0
            continue
        if n > P - pos - L.HEADER_SIZE:
            return None
        total += L.HEADER_SIZE + n
        pos = (pos + L.HEADER_SIZE + n) % P
    return total


# --- reading the machine -------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferInfo:
    """What `ls` and `inspect` report about one buffer name."""

    name: str
    shm: bool  # /dev/shm/NAME exists
    shm_bytes: int  # its size (0 if absent)
    semaphores: int  # how many of sem-w / sem-r exist
    lock: str  # "held" (by lock_pid), "free" (owner dead: stale), or "missing"
    lock_pid: int  # holder of the flock, from /proc/locks (0 if unknown or free)
    reader_pid: int
    reader_alive: bool
    writer_pid: int
    writer_alive: bool
    state: str  # "live", "stale" (gc removes it), "orphan-in-use", "partial" or "corrupt"
    capacity: int  # payload ring bytes
    used: int
    utilisation: float
    health: str
    frames_unread: int  # entries written and not read (frames, plus wrap markers)
    bytes_unread: int | None  # their ring bytes (None: unknown)
    bytes_held: int | None  # ring bytes read and not yet released: frames pinned by the reader
    metadata_bytes: int  # length of the writer's metadata (0 if none)
    oieb: dict[str, Any] | None
    problem: str  # why the OIEB could not be read, or ""

    def as_json(self) -> dict[str, Any]:
        """A JSON-able dict (the `--json` output)."""
        return asdict(self)


def _lock_holders() -> dict[tuple[int, int, int], int]:
    """(major, minor, inode) -> PID for every FLOCK in /proc/locks (empty where unavailable)."""
    holders: dict[tuple[int, int, int], int] = {}
    try:
        with open("/proc/locks") as fh:
            lines = fh.readlines()
    except OSError:
        return holders
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[2] == "->":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            holders[(int(major, 16), int(minor, 16), int(inode))] = int(parts[4])
        except ValueError:
            continue
    return holders


def _lock_state(name: str, holders: dict[tuple[int, int, int], int] | None) -> tuple[str, int]:
    """("held", pid) / ("free", 0) / ("missing", 0) for NAME's lock file, without locking it
    when /proc/locks is readable (a flock test otherwise)."""
    try:
        dir_fd = _shm.open_lock_dir(create=False)
    except (OSError, TransportEnvironmentError):
        return "missing", 0
    file = name + _LOCK_SUFFIX
    try:
        try:
            st = os.stat(file, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return "missing", 0
        if not stat.S_ISREG(st.st_mode):
            return "missing", 0
        if holders is not None and os.path.exists("/proc/locks"):
            pid = holders.get((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino), 0)
            return ("held", pid) if pid else ("free", 0)
        import fcntl

        try:
            fd = os.open(file, _READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            return "missing", 0
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return "held", 0
        finally:
            os.close(fd)
        return "free", 0
    finally:
        os.close(dir_fd)


def _read_segment(name: str) -> tuple[int, Oieb | None, str, int, int | None]:
    """(size, OIEB or None, problem, metadata length, unread bytes) of /dev/shm/NAME."""
    try:
        fd = os.open(L.SHM_DIR / name, _READ_FLAGS)
    except OSError as exc:
        return 0, None, f"cannot open: {exc.strerror}", 0, None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return 0, None, f"not a ZeroBuffer: {_shm.file_kind(st.st_mode)}", 0, None
        size = st.st_size
        try:
            oieb = parse_header(os.pread(fd, _pool.CONTROL_MAX, 0), size, name)
        except CorruptBuffer as exc:
            return size, None, str(exc), 0, None
        if not oieb.payload_size:  # a pool's control segment: no ring to walk
            return size, oieb, "", 0, None
        metadata = 0
        if oieb.metadata_written_bytes and oieb.metadata_size >= L.METADATA_PREFIX:
            raw = os.pread(fd, L.METADATA_PREFIX, L.OIEB_SIZE)
            if len(raw) == L.METADATA_PREFIX:
                metadata = L.U64.unpack(raw)[0]
        base = L.OIEB_SIZE + oieb.metadata_size

        def header_at(pos: int) -> tuple[int, int]:
            raw = os.pread(fd, L.HEADER_SIZE, base + pos)
            return L.HEADER.unpack(raw) if len(raw) == L.HEADER_SIZE else (0, 1)

        return size, oieb, "", metadata, unread_bytes(header_at, oieb)
    finally:
        os.close(fd)


def _is_regular(path: os.PathLike[str]) -> bool:
    try:
        return stat.S_ISREG(os.stat(path, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _state(
    lock: str,
    shm: bool,
    oieb: Oieb | None,
    reader_alive: bool,
    writer_alive: bool,
    pool: bool = False,
) -> str:
    if lock == "held":
        return "live"
    if shm and oieb is None:
        if pool and lock == "free":
            return "stale"  # a pool's control segment (no payload): gc removes it
        return "corrupt" if lock == "free" else "partial"
    if reader_alive or writer_alive:
        return "orphan-in-use"  # its lock is gone but a process still maps it
    return "stale"


def inspect_buffer(
    name: str, _holders: dict[tuple[int, int, int], int] | None = None
) -> BufferInfo:
    """Everything knowable about buffer NAME from outside its processes (read-only)."""
    holders = _lock_holders() if _holders is None else _holders
    lock, lock_pid = _lock_state(name, holders)
    shm = _is_regular(L.SHM_DIR / name)
    sems = sum((L.SHM_DIR / f"{prefix}{name}").exists() for prefix in _SEM_PREFIXES)
    size, oieb, problem, metadata, unread = (
        _read_segment(name) if shm else (0, None, "no shared memory", 0, None)
    )
    reader_pid = oieb.reader_pid if oieb else 0
    writer_pid = oieb.writer_pid if oieb else 0
    reader_alive = _shm.pid_alive(reader_pid)
    writer_alive = _shm.pid_alive(writer_pid)
    capacity = used = 0
    held = None
    pending = 0
    if oieb is not None:
        capacity = oieb.payload_size
        used = capacity - min(oieb.payload_free_bytes, capacity)
        pending = max(0, oieb.payload_written_count - oieb.payload_read_count)
        if unread is not None and unread <= used:
            held = used - unread
    utilisation = used / capacity if capacity else 0.0
    state_now = _state(
        lock, shm, oieb, reader_alive, writer_alive, pool=name.endswith(_POOL_SUFFIX)
    )
    return BufferInfo(
        name=name,
        shm=shm,
        shm_bytes=size,
        semaphores=sems,
        lock=lock,
        lock_pid=lock_pid,
        reader_pid=reader_pid,
        reader_alive=reader_alive,
        writer_pid=writer_pid,
        writer_alive=writer_alive,
        state=state_now,
        capacity=capacity,
        used=used,
        utilisation=utilisation,
        health=health(utilisation) if state_now == "live" else state_now,
        frames_unread=pending,
        bytes_unread=unread,
        bytes_held=held,
        metadata_bytes=metadata,
        oieb=None if oieb is None else asdict(oieb),
        problem=problem,
    )


def _looks_like_zerobuffer(name: str) -> bool:
    """A /dev/shm entry without lock or semaphores counts only if it is a regular file holding a
    valid OIEB."""
    try:
        fd = os.open(L.SHM_DIR / name, _READ_FLAGS)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        parse_header(os.pread(fd, _pool.CONTROL_MAX, 0), st.st_size, name)
    except (CorruptBuffer, OSError):
        return False
    finally:
        os.close(fd)
    return True


def _lock_dir_names(suffix: str) -> set[str]:
    """Names of the lock directory's files ending in `suffix`, without it (none when the
    directory is missing or not ours)."""
    names: set[str] = set()
    with contextlib.suppress(OSError, TransportEnvironmentError):
        dir_fd = _shm.open_lock_dir(create=False)
        try:
            names.update(
                entry[: -len(suffix)] for entry in os.listdir(dir_fd) if entry.endswith(suffix)
            )
        finally:
            os.close(dir_fd)
    return names


def buffer_names(prefix: str = "") -> list[str]:
    """Names of ZeroBuffer buffers (whole or in part) found in the lock directory and /dev/shm."""
    names = _lock_dir_names(_LOCK_SUFFIX)
    shm_entries: list[str] = []
    with contextlib.suppress(OSError):
        shm_entries = os.listdir(L.SHM_DIR)
    for entry in shm_entries:
        for sem_prefix in _SEM_PREFIXES:
            if entry.startswith(sem_prefix):
                names.add(entry[len(sem_prefix) :])
    plain = set(shm_entries) - names
    names.update(n for n in plain if n.startswith(prefix) and _looks_like_zerobuffer(n))
    return sorted(n for n in names if n.startswith(prefix) and L.NAME_RE.fullmatch(n))


def list_buffers(prefix: str = "") -> list[BufferInfo]:
    """`inspect_buffer` for every buffer whose name starts with `prefix`."""
    holders = _lock_holders()
    return [inspect_buffer(name, holders) for name in buffer_names(prefix)]


# --- pools (zcser.Receiver: NAME--pool and a ring per place) -------------------------------------


@dataclass(frozen=True)
class PoolInfo:
    """What `inspect NAME` reports about pool NAME (a zcser.Receiver's channel): its control
    segment, each place with its sender, and each ring."""

    name: str
    control: str  # the control segment's name (NAME--pool)
    state: str  # the control segment's: "live", "stale", "partial" or "corrupt"
    lock: str
    lock_pid: int
    reader_pid: int  # the Receiver
    reader_alive: bool
    places: int  # senders=... (0 when the table cannot be read)
    connected: int  # places held by a live sender
    joins: int  # places taken since the pool was created
    sleepers: int  # the Receiver is asleep on the bells while non-zero
    senders: tuple[dict[str, Any], ...]  # per place: place, ring, pid, alive, generation, state
    rings: tuple[BufferInfo, ...]  # per place, as `inspect RING` shows it
    problem: str  # why the table could not be read, or ""
    kind: str = "pool"

    def as_json(self) -> dict[str, Any]:
        """A JSON-able dict (the `--json` output)."""
        out = asdict(self)
        out["senders"] = list(self.senders)
        out["rings"] = [ring.as_json() for ring in self.rings]
        return out


def _read_control(name: str) -> tuple[_pool.ControlTable | None, str]:
    try:
        fd = os.open(L.SHM_DIR / name, _READ_FLAGS)
    except OSError as exc:
        return None, f"cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, f"not a pool control segment: {_shm.file_kind(st.st_mode)}"
        raw = os.pread(fd, min(st.st_size, _pool.CONTROL_MAX), 0)
        parse_header(raw, st.st_size, name)
        return _pool.parse_control(raw), ""
    except CorruptBuffer as exc:
        return None, str(exc)
    finally:
        os.close(fd)


def inspect_pool(name: str) -> PoolInfo | None:
    """Pool NAME in detail (read-only), or None when NAME has no control segment (NAME--pool)."""
    control = control_name(name)
    if not _is_regular(L.SHM_DIR / control):
        return None
    holders = _lock_holders()
    head = inspect_buffer(control, holders)
    table, problem = _read_control(control)
    senders: list[dict[str, Any]] = []
    rings: list[BufferInfo] = []
    if table is not None:
        for i in range(table.places):
            owner, ring = table.owners[i], _pool.ring_name(name, table.places, i)
            reclaiming = bool(owner & _pool.RECLAIMING)
            alive = not reclaiming and _shm.pid_alive(owner)
            senders.append(
                {
                    "place": i,
                    "ring": ring,
                    "pid": 0 if reclaiming else owner,
                    "alive": alive,
                    "generation": table.generations[i],
                    "state": (
                        "reclaiming"
                        if reclaiming
                        else "free"
                        if not owner
                        else "taken"
                        if alive
                        else "dead"
                    ),
                }
            )
            rings.append(inspect_buffer(ring, holders))
    return PoolInfo(
        name=name,
        control=control,
        state=head.state,
        lock=head.lock,
        lock_pid=head.lock_pid,
        reader_pid=head.reader_pid,
        reader_alive=head.reader_alive,
        places=table.places if table else 0,
        connected=sum(1 for s in senders if s["state"] == "taken"),
        joins=table.joins if table else 0,
        sleepers=table.sleepers if table else 0,
        senders=tuple(senders),
        rings=tuple(rings),
        problem=problem,
    )


# --- fan-out segments (zcser.Publisher) ----------------------------------------------------------

_FANOUT_LOCK_SUFFIX = ".fanout" + _LOCK_SUFFIX
_POLICY_NAMES = {v: k for k, v in F.POLICIES.items()}
_SLOT_STATES = {F.FREE: "free", F.JOINING: "joining", F.ACTIVE: "active", F.CLOSING: "closing"}


@dataclass(frozen=True)
class FanoutInfo:
    """What `ls` reports about one fan-out segment (a zcser.Publisher's shared memory)."""

    name: str
    shm_bytes: int  # size of /dev/shm/NAME (0 if absent)
    lock: str  # the publisher's lock file (NAME.fanout.lock): "held", "free" or "missing"
    lock_pid: int
    publisher_pid: int  # 0 once it closed (or unknown)
    publisher_alive: bool
    closed: bool  # the publisher ended the stream
    state: str  # "live", "stale" (gc removes it), "orphan-in-use", "partial" or "corrupt"
    capacity: int  # payload ring bytes
    slots: int  # subscribers it admits
    connected: int  # subscribers in a slot whose process lives
    messages: int  # published so far (the newest sequence number)
    subscribers: tuple[dict[str, Any], ...]  # per taken slot: slot, pid, alive, state, policy,
    # lag (messages published it has not taken), pinned_bytes
    problem: str  # why the header could not be read, or ""
    kind: str = "fanout"

    def as_json(self) -> dict[str, Any]:
        """A JSON-able dict (the `--json` output)."""
        out = asdict(self)
        out["subscribers"] = list(self.subscribers)
        return out


def _fanout_magic(name: str) -> bool:
    """Whether /dev/shm/NAME is a regular file starting with the fan-out magic (read-only)."""
    try:
        fd = os.open(L.SHM_DIR / name, _READ_FLAGS)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, len(F.MAGIC), 0) == F.MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def fanout_names(prefix: str = "") -> list[str]:
    """Names of fan-out segments: publisher lock files, and /dev/shm entries with the magic."""
    names = _lock_dir_names(_FANOUT_LOCK_SUFFIX)
    with contextlib.suppress(OSError):
        names.update(
            entry
            for entry in os.listdir(L.SHM_DIR)
            if entry.startswith(prefix)
            and entry not in names
            and L.NAME_RE.fullmatch(entry)
            and _fanout_magic(entry)
        )
    return sorted(n for n in names if n.startswith(prefix) and L.NAME_RE.fullmatch(n))


def _u64s(raw: bytes, offsets: Iterable[int]) -> list[int]:
    return [F.U64.unpack_from(raw, off)[0] for off in offsets]


def _read_fanout(name: str) -> tuple[int, dict[str, Any] | None, str]:
    """(size, header fields and slots or None, problem) of /dev/shm/NAME, read with pread."""
    try:
        fd = os.open(L.SHM_DIR / name, _READ_FLAGS)
    except OSError as exc:
        return 0, None, f"cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return 0, None, f"not a fan-out segment: {_shm.file_kind(st.st_mode)}"
        size = st.st_size
        raw = os.pread(fd, F.HEADER_SIZE, 0)
        if len(raw) < F.HEADER_SIZE or raw[: len(F.MAGIC)] != F.MAGIC:
            return size, None, "not a fan-out segment (no magic): being created, or not zcser's"
        version, slots, meta, payload, pub_pid, seq, closed, ready = _u64s(
            raw,
            (
                F.OFF_VERSION,
                F.OFF_SLOTS,
                F.OFF_META_SIZE,
                F.OFF_PAYLOAD_SIZE,
                F.OFF_PUB_PID,
                F.OFF_SEQ,
                F.OFF_CLOSED,
                F.OFF_READY,
            ),
        )
        if version != F.VERSION:
            return size, None, f"fan-out layout {version}; this zcser reads {F.VERSION}"
        if not ready:
            return size, None, "being created"
        if (
            not 1 <= slots <= F.MAX_SUBSCRIBERS
            or meta > 1 << 40
            or not 0 < payload <= 1 << 48
            or F.total_size(slots, meta, payload) > size
        ):
            return size, None, f"{slots} slots and {payload} payload bytes do not fit {size}"
        table = os.pread(fd, slots * F.SLOT_SIZE, F.HEADER_SIZE)
        if len(table) < slots * F.SLOT_SIZE:
            return size, None, "slot table cut short"
        subs = []
        for i in range(slots):
            at = i * F.SLOT_SIZE
            pid, state, policy, pin, end, last = _u64s(
                table,
                (
                    at + F.S_PID,
                    at + F.S_STATE,
                    at + F.S_POLICY,
                    at + F.S_PIN,
                    at + F.S_HOLD_END,
                    at + F.S_LAST_SEQ,
                ),
            )
            if pid == 0 or pid & (1 << 63):
                continue
            subs.append(
                {
                    "slot": i,
                    "pid": pid,
                    "alive": _shm.pid_alive(pid),
                    "state": _SLOT_STATES.get(state, "?"),
                    "policy": _POLICY_NAMES.get(policy, "?"),
                    "lag": max(0, seq - last) if state == F.ACTIVE else 0,
                    "pinned_bytes": 0 if pin == F.NONE else max(0, min(end - pin, payload)),
                }
            )
        fields = {
            "slots": slots,
            "capacity": payload,
            "publisher_pid": pub_pid,
            "messages": seq,
            "closed": bool(closed),
            "subscribers": tuple(subs),
        }
        return size, fields, ""
    finally:
        os.close(fd)


def inspect_fanout(
    name: str, _holders: dict[tuple[int, int, int], int] | None = None
) -> FanoutInfo:
    """Everything knowable about fan-out segment NAME from outside its processes (read-only)."""
    holders = _lock_holders() if _holders is None else _holders
    lock, lock_pid = _lock_state(F.lock_stem(name), holders)
    shm = _is_regular(L.SHM_DIR / name)
    size, fields, problem = _read_fanout(name) if shm else (0, None, "no shared memory")
    pub_pid = fields["publisher_pid"] if fields else 0
    alive = _shm.pid_alive(pub_pid)
    if lock == "held":
        state_now = "live"
    elif shm and fields is None:
        state_now = "corrupt" if lock == "free" else "partial"
    elif alive:
        state_now = "orphan-in-use"
    else:
        state_now = "stale"
    subs: tuple[dict[str, Any], ...] = fields["subscribers"] if fields else ()
    return FanoutInfo(
        name=name,
        shm_bytes=size,
        lock=lock,
        lock_pid=lock_pid,
        publisher_pid=pub_pid,
        publisher_alive=alive,
        closed=bool(fields and fields["closed"]),
        state=state_now,
        capacity=fields["capacity"] if fields else 0,
        slots=fields["slots"] if fields else 0,
        connected=sum(
            1 for s in subs if s["alive"] and s["state"] in ("joining", "active", "closing")
        ),
        messages=fields["messages"] if fields else 0,
        subscribers=subs,
        problem=problem,
    )


def list_fanouts(prefix: str = "") -> list[FanoutInfo]:
    """`inspect_fanout` for every fan-out segment whose name starts with `prefix`."""
    holders = _lock_holders()
    return [inspect_fanout(name, holders) for name in fanout_names(prefix)]


# --- removing ------------------------------------------------------------------------------------


def _remove_unlocked(names: Iterable[str]) -> list[str]:
    """Buffers with shm or semaphores but no lock file (a reader that died between steps, or the
    reference's leftover semaphores): take NAME's lock as a new reader would, so no reader can
    start meanwhile, and remove them if no live process uses them."""
    removed = []
    for name in names:
        if _shm.lock_exists(name):
            continue
        try:
            fd = _shm.acquire_lock(name)
        except (TransportEnvironmentError, OSError):  # held, not ours, or no lock directory
            continue
        try:
            present = [L.SHM_DIR / f"{p}{name}" for p in ("", *_SEM_PREFIXES)]
            if any(os.path.lexists(path) for path in present) and is_orphan(name):
                found = [
                    _shm.unlink_shm(name),
                    _shm.unlink_semaphore(L.sem_w_name(name)),
                    _shm.unlink_semaphore(L.sem_r_name(name)),
                ]
                if any(found):  # only this user's regular files are removed
                    removed.append(name)
        finally:
            _shm.release_lock(name, fd)
    return removed


# Bells are FIFOs in the lock directory (docs/protocol.md "Pools", transports/fanout):
#   RING.bell                 a pool's ring RING (the pool NAME itself, or NAME--i)
#   NAME.fanout.pub.bell      publisher NAME's bell
#   NAME.fanout.<slot>.bell   the bell of NAME's subscriber in <slot>
_FANOUT_BELL = re.compile(r"([A-Za-z0-9_-]+)\.fanout\.(?:pub|[0-9]+)\.bell")
_POOL_BELL = re.compile(r"([A-Za-z0-9_-]+)\.bell")
_POOL_RING = re.compile(r"(.+)--([0-9]+)")


def _open_files() -> set[tuple[int, int]] | None:
    """(device, inode) of every file some process has open, from /proc/PID/fd (the processes
    whose descriptors this user may read: its own, every one for root); None without /proc,
    where nothing can be proved unused."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    held: set[tuple[int, int]] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or another user's (who cannot open our 0600 FIFOs anyway)
        for fd in fds:
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{pid}/fd/{fd}")  # the open file itself, not a path
                if stat.S_ISFIFO(st.st_mode):
                    held.add((st.st_dev, st.st_ino))
    return held


def _bell_owners(file: str) -> tuple[str, list[str], list[str]] | None:
    """(name gc reports, lock stems to hold, /dev/shm names any of which keeps the bell) of the
    bell `file`, or None for a file that is no bell of ours to judge."""
    fanout = _FANOUT_BELL.fullmatch(file)
    if fanout:
        name = fanout.group(1)
        return name, [F.lock_stem(name)], [name]
    pool = _POOL_BELL.fullmatch(file)
    if not pool:
        return None
    ring = pool.group(1)
    # The pool is RING itself (one place) or, for RING = NAME--i, NAME: hold the lock of each
    # candidate's control segment (a PoolReader takes it before it makes its bells) and of the
    # ring (its Reader's), and keep the bell while any of their segments exists.
    controls = [control_name(ring)]
    numbered = _POOL_RING.fullmatch(ring)
    if numbered and int(numbered.group(2)) < MAX_PLACES:
        controls.append(control_name(numbered.group(1)))
    return ring, [ring, *controls], [ring, *controls]


def _remove_orphan_bells(prefix: str) -> list[str]:
    """Remove the bells (FIFOs in the lock directory) of this user whose segment is gone from
    /dev/shm and that no process has open: left by a subscriber killed after its publisher
    closed, or by a pool whose segments and lock files were removed without them. Each is
    judged while holding the locks under which such a bell is made (so no new pool or
    publisher of that name can start meanwhile), and removed only if it is still the FIFO
    judged. Returns the names whose bells were removed."""
    try:
        dir_fd = _shm.open_lock_dir(create=False)
    except (OSError, TransportEnvironmentError):
        return []
    removed: set[str] = set()
    held: set[tuple[int, int]] | None = None
    try:
        for file in sorted(os.listdir(dir_fd)):
            owners = _bell_owners(file)
            if owners is None or not owners[0].startswith(prefix):
                continue
            name, stems, segments = owners
            if not L.NAME_RE.fullmatch(name) or len(name) > L.NAME_MAX:
                continue
            try:
                st = os.stat(file, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
                continue  # not a bell, or another user's: never ours to remove
            if held is None:
                held = _open_files()
                if held is None:
                    return []
            if (st.st_dev, st.st_ino) in held or any(map(_shm.shm_exists, segments)):
                continue
            locks: list[tuple[str, int]] = []
            try:
                for stem in stems:
                    locks.append((stem, _shm.acquire_lock(stem)))
            except (TransportEnvironmentError, OSError):
                pass  # held by a live pool or publisher (BufferExists), or not ours
            else:
                if _still_orphan(file, dir_fd, st, segments):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(file, dir_fd=dir_fd)
                    removed.add(name)
            finally:
                for stem, fd in reversed(locks):
                    _shm.release_lock(stem, fd)
    finally:
        os.close(dir_fd)
    return sorted(removed)


def _still_orphan(file: str, dir_fd: int, seen: os.stat_result, segments: list[str]) -> bool:
    """Under the locks: the same FIFO is at `file`, no segment came back, nobody opened it."""
    try:
        st = os.stat(file, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino) or any(map(_shm.shm_exists, segments)):
        return False
    held = _open_files()
    return held is not None and (st.st_dev, st.st_ino) not in held


def collect_garbage(prefix: str = "") -> list[str]:
    """Remove buffers whose owners are provably dead: nobody holds the lock (flock test) AND the
    OIEB's reader and writer PIDs are both 0 or dead. Returns the names removed. Safe to run
    from several processes at once and next to live readers and writers.

    The transport's stale cleanup (the one every new Reader runs) does the work; like it, this
    removes only this user's files, and keeps the lock file of a buffer still mapped by a live
    process (or whose shared memory is not a ZeroBuffer). Fan-out segments (zcser.Publisher)
    whose publisher is dead go too, with their bells, and so do bells (FIFOs) of this user
    whose segment is gone from /dev/shm and that no process has open. Raises ForeignResource
    if the lock directory is a symlink or another user's."""
    removed = _shm.cleanup_stale(lambda name: name.startswith(prefix) and is_orphan(name))
    leftovers = [n for n in buffer_names(prefix) if n not in removed]
    # fan-out segments of dead publishers, also those whose lock file is gone
    fanout = _fanout_segment.collect(prefix, also=fanout_names(prefix))
    unlocked = _remove_unlocked(leftovers)
    bells = _remove_orphan_bells(prefix)  # last: the sweeps above remove most bells with theirs
    return sorted(set(removed) | set(unlocked) | set(fanout) | set(bells))
