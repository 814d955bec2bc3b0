"""ZeroBuffer's cross-implementation acceptance scenarios (its TEST_SCENARIOS.md, numbered
"1.1 Simple Write-Read Cycle" = test 101 and so on), run against our implementation.

Every runner scenario runs in both of ZeroBuffer's modes, in-process (writer on a thread) and
cross-process (writer in a forked process), and in three pairings (writer-reader): ours-ours,
ours-ref and ref-ours, where `ref` is `zerobuffer-ipc` 1.3.0; a pairing is left out only where a
listed reference bug (docs/protocol.md) makes the reference side wrong. Scenarios covered elsewhere are
not repeated: 2.1/2.2/10.4/10.5 (peer death: test_interop.py, test_peer_death.py), 2.3 (kill
loop), 4.2/4.3/11.1 (test_zerobuffer.py, test_reference_bugs.py), 5.4 (test_zerobuffer.py),
10.1-10.3 (test_zerobuffer.py, test_fuzz_live.py), 10.6 (test_shm_full.py), 10.7 and
bug 6 (test_reference_bugs.py), 12.1 (test_soak.py). 5.6 and 9.x/15.x are a C++ helper and
benchmarks (transports/bench.py); 8.2 and 14.x (Windows, duplex channels) do not apply.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import posix_ipc
import pytest
import zerobuffer as ref
from _peers import Side, check_frame, oieb, pattern, unlink_reference_leftovers
from conftest import RUN_TOKEN, unique_name

from transports import errors as E
from transports.zerobuffer import BufferConfig, Reader, Writer
from transports.zerobuffer import layout as L

CTX = multiprocessing.get_context("fork")
WAIT = 30.0
PAIRS = [("ours", "ours"), ("ours", "ref"), ("ref", "ours")]
MODES = ["in-process", "cross-process"]


class Sync:
    """Named one-shot events plus a result queue; work across threads and forked processes."""

    NAMES = ("created", "a", "b", "c", "d")

    def __init__(self) -> None:
        self._events = {n: CTX.Event() for n in self.NAMES}
        self.results = CTX.Queue()

    def set(self, event: str) -> None:
        self._events[event].set()

    def is_set(self, event: str) -> bool:
        return self._events[event].is_set()

    def wait(self, event: str, timeout: float = WAIT) -> None:
        assert self._events[event].wait(timeout), f"event {event!r} not set within {timeout} s"


@dataclass(frozen=True)
class Scenario:
    sid: int
    title: str
    metadata_size: int
    payload_size: int
    writer: Callable[[Side, str, Sync], None]
    reader: Callable[[Side, Any, str, Sync], None]
    pairs: tuple[tuple[str, str], ...] = tuple(PAIRS)


def _write(side: Side, w: Any, data: Any, timeout: float = WAIT) -> None:
    if side.impl == "ours":
        w.write(data, timeout=timeout)
    else:
        w.write_timeout = timedelta(seconds=timeout)
        w.write_frame(bytes(data))


def _expect(side: Side, r: Any, seq: int, size: int, hold: bool = False) -> Any:
    frame = side.read(r, WAIT)
    check_frame(frame.sequence, seq, size, frame.data)
    if hold:
        return frame
    side.release(r, frame)
    return None


def _writer_main(sc: Scenario, impl: str, name: str, sync: Sync) -> None:
    try:
        sync.wait("created")
        sc.writer(Side(impl), name, sync)
    except BaseException:
        sync.results.put(traceback.format_exc())
    else:
        sync.results.put("ok")


def _run(sc: Scenario, writer_impl: str, reader_impl: str, mode: str) -> None:
    name = unique_name(f"c{sc.sid}")
    sync = Sync()
    side = Side(reader_impl)
    r = side.reader(name, sc.metadata_size, sc.payload_size)
    args = (sc, writer_impl, name, sync)
    runner: Any
    if mode == "in-process":
        runner = threading.Thread(target=_writer_main, args=args, daemon=True)
    else:
        runner = CTX.Process(target=_writer_main, args=args, daemon=True)
    runner.start()
    try:
        sync.set("created")
        sc.reader(side, r, name, sync)
        result = sync.results.get(timeout=WAIT)
        assert result == "ok", f"writer failed:\n{result}"
    finally:
        runner.join(WAIT)
        if isinstance(runner, multiprocessing.process.BaseProcess) and runner.is_alive():
            runner.kill()
            runner.join()
        r.close()
        unlink_reference_leftovers(name)  # the reference's Reader.close leaves its semaphores


# --- 1. basic communication ----------------------------------------------------------------------


def w_101(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    w.set_metadata(bytes(pattern(0, 100)))
    _write(side, w, pattern(1, 1024))
    sync.wait("a")
    w.close()


def r_101(side: Side, r: Any, name: str, sync: Sync) -> None:
    _expect(side, r, 1, 1024)
    assert side.metadata(r) == bytes(pattern(0, 100))
    assert oieb(name)["payload_free_bytes"] == 10240  # released: the space is back
    sync.set("a")


def w_102(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    w.set_metadata(bytes(pattern(0, 200)))
    for seq in range(1, 11):
        _write(side, w, pattern(seq, 5120))
    w.close()


def r_102(side: Side, r: Any, name: str, sync: Sync) -> None:
    for seq in range(1, 11):
        _expect(side, r, seq, 5120)
    assert side.metadata(r) == bytes(pattern(0, 200))


def w_103(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    w.set_metadata(b"m")
    _write(side, w, pattern(1, 8192))
    sync.set("a")
    _write(side, w, pattern(2, 5120))  # blocks: 8208 + 5136 > 10240
    sync.set("b")
    w.close()


def r_103(side: Side, r: Any, name: str, sync: Sync) -> None:
    sync.wait("a")
    time.sleep(0.3)
    assert not sync.is_set("b"), "the writer did not block on a full buffer"
    _expect(side, r, 1, 8192)
    sync.wait("b")
    _expect(side, r, 2, 5120)


# --- 5. edge cases -------------------------------------------------------------------------------


def w_501(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    _write(side, w, pattern(1, 10240 - 16))
    sync.set("a")
    sync.wait("b")
    _write(side, w, pattern(2, 10240 - 16))  # the ring is empty again: fits exactly again
    w.close()


def r_501(side: Side, r: Any, name: str, sync: Sync) -> None:
    sync.wait("a")
    assert oieb(name)["payload_free_bytes"] == 0  # completely full
    _expect(side, r, 1, 10240 - 16)
    sync.set("b")
    _expect(side, r, 2, 10240 - 16)


def w_502(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    if side.impl == "ours":
        with pytest.raises(E.InvalidFrameSize):
            w.write(b"")
    else:
        with pytest.raises(ref.InvalidFrameSizeException):
            w.write_frame(b"")
    _write(side, w, pattern(1, 1))
    w.close()


def r_502(side: Side, r: Any, name: str, sync: Sync) -> None:
    _expect(side, r, 1, 1)
    info = oieb(name)
    assert info["payload_read_pos"] == 17 and info["payload_written_count"] == 1


SECOND_503 = 4608
"""ZeroBuffer's 5.3 writes 7 KB after 6 KB in a 10 KB ring. Under docs/protocol.md's accounting a
wrapping frame needs the wasted tail and itself free at once (4080 + 7184 > 10240), so that frame
can never be placed: our writer raises FrameTooLarge (test_zerobuffer.py), the reference 1.3.0
blocks forever. 4.5 KB keeps the point of the scenario: it must wait for the release."""


def w_503(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    _write(side, w, pattern(1, 6144))
    sync.set("a")
    _write(side, w, pattern(2, SECOND_503))  # needs the start of the ring: waits for the release
    sync.set("b")
    w.close()


def r_503(side: Side, r: Any, name: str, sync: Sync) -> None:
    frame = _expect(side, r, 1, 6144, hold=True)
    time.sleep(0.3)
    assert not sync.is_set("b"), "the writer overwrote a held frame"
    side.release(r, frame)
    sync.wait("b")
    assert oieb(name)["payload_write_pos"] == SECOND_503 + 16  # written at the buffer start
    _expect(side, r, 2, SECOND_503)


def w_505(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    _write(side, w, pattern(1, 10240 - 100 - 16))  # leaves 100 bytes at the end
    sync.wait("a")
    _write(side, w, pattern(2, 200))
    sync.set("b")
    sync.wait("c")
    w.close()


def r_505(side: Side, r: Any, name: str, sync: Sync) -> None:
    _expect(side, r, 1, 10240 - 116)
    sync.set("a")
    sync.wait("b")
    info = oieb(name)
    assert info["payload_write_pos"] == 216
    assert info["payload_free_bytes"] == 10240 - 100 - 216  # the wasted tail is used up
    assert info["payload_written_count"] == 3  # frame, wrap marker, frame
    with open(f"/dev/shm/{name}", "rb") as fh:  # the {0, 0} marker at the old position
        fh.seek(L.OIEB_SIZE + 64 + 10240 - 100)
        assert fh.read(16) == bytes(16)
    _expect(side, r, 2, 200)
    assert oieb(name)["payload_free_bytes"] == 10240  # the reader returned the tail too
    sync.set("c")


# --- 6. synchronisation --------------------------------------------------------------------------


def w_601(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    for seq in range(1, 2001):
        _write(side, w, pattern(seq, 1024))
    w.close()


def r_601(side: Side, r: Any, name: str, sync: Sync) -> None:
    for seq in range(1, 2001):
        _expect(side, r, seq, 1024)


def w_602(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    for seq in range(1, 51):
        _write(side, w, pattern(seq, 1024), timeout=0.5)  # never waits: all 50 fit
    sync.set("a")
    w.close()


def r_602(side: Side, r: Any, name: str, sync: Sync) -> None:
    sync.wait("a")
    assert posix_ipc.Semaphore(L.sem_w_name(name)).value == 50  # 11.4: one post per frame
    for seq in range(1, 51):
        _expect(side, r, seq, 1024)


def w_603(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    for seq in range(1, 201):
        _write(side, w, pattern(seq, 1000 + seq))
    w.close()


def r_603(side: Side, r: Any, name: str, sync: Sync) -> None:
    for seq in range(1, 201):
        if seq % 20 == 0:
            time.sleep(0.02)  # the writer fills the ring and blocks meanwhile
        _expect(side, r, seq, 1000 + seq)
    assert oieb(name)["payload_free_bytes"] == 50 * 1024


# --- 7. data integrity ---------------------------------------------------------------------------

SIZES_701 = [1, 1024, 1 << 20, 10 << 20]


def w_701(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    for seq, size in enumerate(SIZES_701, start=1):
        _write(side, w, pattern(seq, size))
    w.close()


def r_701(side: Side, r: Any, name: str, sync: Sync) -> None:
    for seq, size in enumerate(SIZES_701, start=1):
        _expect(side, r, seq, size)


def w_702(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    for seq in range(1, 5):
        _write(side, w, pattern(seq, 100))
    sync.set("a")
    sync.wait("b")
    w.close()


def r_702(side: Side, r: Any, name: str, sync: Sync) -> None:
    for seq in range(1, 4):
        _expect(side, r, seq, 100)
    sync.wait("a")
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    try:  # the next frame's header: its sequence 4 becomes 5
        os.pwrite(fd, (5).to_bytes(8, "little"), L.OIEB_SIZE + 64 + 3 * 116 + 8)
    finally:
        os.close(fd)
    with pytest.raises(E.SequenceError) as info:
        side.read(r, WAIT)
    assert (info.value.expected, info.value.got) == (4, 5)  # type: ignore[attr-defined]
    sync.set("b")


# --- 11. edge cases ------------------------------------------------------------------------------


def w_1102(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    _write(side, w, pattern(1, 48))  # 16 + 48 = the whole 64-byte ring
    if side.impl == "ours":
        with pytest.raises(E.BufferFull):
            w.write(pattern(2, 1), timeout=0.2)
    sync.set("a")
    _write(side, w, pattern(2, 1))  # fits once frame 1 is released
    w.close()


def r_1102(side: Side, r: Any, name: str, sync: Sync) -> None:
    sync.wait("a")
    _expect(side, r, 1, 48)
    _expect(side, r, 2, 1)


BIG_1103 = 10240 * 9 // 10 - 16


def w_1103(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    for i in range(20):
        _write(side, w, pattern(2 * i + 1, BIG_1103))
        _write(side, w, pattern(2 * i + 2, 1))
    w.close()


def r_1103(side: Side, r: Any, name: str, sync: Sync) -> None:
    for i in range(20):
        _expect(side, r, 2 * i + 1, BIG_1103)
        _expect(side, r, 2 * i + 2, 1)


# --- 13. protocol compliance ---------------------------------------------------------------------


def w_1301(side: Side, name: str, sync: Sync) -> None:
    w = side.writer(name)
    sizes = [100, 300, 1000]
    for seq, n in enumerate(sizes, start=1):
        before = oieb(name)
        _write(side, w, pattern(seq, n))
        after = oieb(name)
        assert after["payload_written_count"] == before["payload_written_count"] + 1
        assert after["payload_free_bytes"] == before["payload_free_bytes"] - 16 - n
        assert after["payload_write_pos"] == before["payload_write_pos"] + 16 + n
    sync.set("a")
    sync.wait("b")
    w.close()


def r_1301(side: Side, r: Any, name: str, sync: Sync) -> None:
    sync.wait("a")
    for seq, n in enumerate([100, 300, 1000], start=1):
        before = oieb(name)
        frame = _expect(side, r, seq, n, hold=True)
        read = oieb(name)
        assert read["payload_read_count"] == before["payload_read_count"] + 1
        assert read["payload_read_pos"] == before["payload_read_pos"] + 16 + n
        assert read["payload_free_bytes"] == before["payload_free_bytes"]  # until released
        side.release(r, frame)
        assert oieb(name)["payload_free_bytes"] == before["payload_free_bytes"] + 16 + n
    for field in ("metadata_size", "payload_size"):
        assert oieb(name)[field] % 64 == 0
    sync.set("b")


SCENARIOS = [
    Scenario(101, "Simple Write-Read Cycle", 1024, 10240, w_101, r_101),
    Scenario(102, "Multiple Frames Sequential", 1024, 102400, w_102, r_102),
    Scenario(103, "Buffer Full Handling", 512, 10240, w_103, r_103),
    # bug 1: the reference writer refuses to write after an exact fill
    Scenario(501, "Exact Buffer Fit", 64, 10240, w_501, r_501, (("ours", "ours"), ("ours", "ref"))),
    Scenario(502, "Minimum Frame Size", 64, 10240, w_502, r_502),
    Scenario(503, "Wrap-Around Behavior", 64, 10240, w_503, r_503),
    Scenario(505, "Wrap-Around With Wasted Space", 64, 10240, w_505, r_505),
    Scenario(601, "Rapid Write-Read Cycles", 64, 10240, w_601, r_601),
    Scenario(602, "Burst Write (and 11.4 Signal Coalescing)", 64, 102400, w_602, r_602),
    Scenario(603, "Slow Reader (and 11.5)", 64, 50 * 1024, w_603, r_603),
    Scenario(701, "Pattern Validation", 64, 32 << 20, w_701, r_701),
    # our reader's check; the reference reader's own SequenceError is its business
    Scenario(702, "Sequence Number Gap Detection", 64, 10240, w_702, r_702, (("ours", "ours"), ("ref", "ours"))),
    Scenario(1102, "Minimum Buffer Sizes", 64, 64, w_1102, r_1102, (("ours", "ours"), ("ours", "ref"))),
    Scenario(1103, "Alternating Frame Sizes", 64, 10240, w_1103, r_1103),
    Scenario(1301, "OIEB Consistency", 64, 10240, w_1301, r_1301),
]  # fmt: skip


def _params() -> Iterator[Any]:
    for sc in SCENARIOS:
        for writer_impl, reader_impl in sc.pairs:
            for mode in MODES:
                yield pytest.param(
                    sc,
                    writer_impl,
                    reader_impl,
                    mode,
                    id=f"{sc.sid}-{writer_impl}-{reader_impl}-{mode}",
                )


@pytest.mark.parametrize(("sc", "writer_impl", "reader_impl", "mode"), list(_params()))
def test_scenario(sc: Scenario, writer_impl: str, reader_impl: str, mode: str) -> None:
    _run(sc, writer_impl, reader_impl, mode)


# --- scenarios that are not one writer plus one reader -------------------------------------------


def test_301_stale_resource_cleanup() -> None:
    """A lock file nobody holds, orphaned shm (a ZeroBuffer header, dead PIDs) and semaphores: a
    new reader removes them and creates a fresh buffer."""
    name = unique_name("c301")
    L.LOCK_DIR.mkdir(exist_ok=True)
    L.lock_path(name).touch(mode=0o600)
    shm = posix_ipc.SharedMemory(f"/{name}", posix_ipc.O_CREX, mode=0o600, size=4096)
    dead = (1 << 64) - 1  # not a PID
    header = L.OIEB_STRUCT.pack(128, *L.VERSION, *[0xFFFF] * 9, dead, dead, 0, 0, 0, 0)
    os.pwrite(shm.fd, header, 0)  # garbage fields under a ZeroBuffer header, PIDs not alive
    shm.close_fd()
    for sem in (L.sem_w_name(name), L.sem_r_name(name)):
        posix_ipc.Semaphore(sem, posix_ipc.O_CREX, mode=0o600, initial_value=5).close()
    with Reader(name, BufferConfig(0, 1024)) as r, Writer(name) as w:
        assert os.fstat(r._core.lock_fd).st_ino == os.stat(L.lock_path(name)).st_ino
        assert oieb(name)["payload_size"] == 1024
        with pytest.raises(E.Timeout):
            r.read(timeout=0)  # the old semaphore counts are gone
        w.write(b"fresh")
        with r.read() as frame:
            assert bytes(frame.data) == b"fresh"


def _race_reader(impl: str, name: str, barrier: Any, results: Any) -> None:
    barrier.wait(WAIT)
    r = None
    try:
        r = Side(impl).reader(name, 64, 4096)
    except Exception as exc:
        results.put((impl, type(exc).__name__))
    else:
        results.put((impl, "created"))
    barrier.wait(WAIT)  # the winner holds the buffer until every racer has tried
    if r is not None:
        r.close()


@pytest.mark.parametrize(
    "impls", [("ours",) * 4, ("ours", "ref", "ours", "ref")], ids=["ours", "mixed"]
)
def test_302_concurrent_initialization_race(impls: tuple[str, ...]) -> None:
    name = unique_name("c302")
    barrier = CTX.Barrier(len(impls))
    results = CTX.Queue()
    procs = [CTX.Process(target=_race_reader, args=(i, name, barrier, results)) for i in impls]
    for p in procs:
        p.start()
    try:
        outcomes = sorted(results.get(timeout=WAIT) for _ in procs)
    finally:
        for p in procs:
            p.join(WAIT)
            if p.is_alive():
                p.kill()
        unlink_reference_leftovers(name)
    assert [o for _, o in outcomes].count("created") == 1, outcomes
    assert all(o in ("created", "BufferExists") for impl, o in outcomes if impl == "ours"), outcomes


def test_401_metadata_write_once_across_implementations() -> None:
    """A reference writer wrote the metadata and left; our writer taking over may not rewrite it."""
    name = unique_name("c401")
    with Reader(name, BufferConfig(1024, 10240)) as r:
        w = ref.Writer(name)
        w.set_metadata(b"x" * 500)
        w.write_frame(b"frame")
        w.close()
        with Writer(name) as ours:
            with pytest.raises(E.MetadataAlreadyWritten):
                ours.set_metadata(b"again")
            with pytest.raises(E.MetadataAlreadyWritten):
                ours.set_metadata(b"")
        assert r.metadata is not None and bytes(r.metadata) == b"x" * 500
    unlink_reference_leftovers(name)


def _churn_writer(name: str, stop: Any, results: Any) -> None:
    seen: dict[str, int] = {}
    while not stop.is_set():
        try:
            with Writer(name, timeout=0.05) as w:
                w.write(b"hello")
            key = "ok"
        except (E.BufferNotFound, E.ReaderDead, E.WriterAlreadyConnected, E.BufferFull) as exc:
            key = type(exc).__name__
        except E.CorruptBuffer as exc:  # a segment seen while it is being created
            key = "CorruptBuffer" if "being created" in str(exc) else f"BAD {exc}"
        except Exception as exc:
            key = f"BAD {type(exc).__name__}: {exc}"
        seen[key] = seen.get(key, 0) + 1
    results.put(seen)


@pytest.mark.parametrize("mode", MODES)
def test_1203_rapid_create_destroy_with_a_writer_connecting_meanwhile(mode: str) -> None:
    name = unique_name("c1203")
    stop = CTX.Event()
    results = CTX.Queue()
    args = (name, stop, results)
    runner: Any = (
        threading.Thread(target=_churn_writer, args=args, daemon=True)
        if mode == "in-process"
        else CTX.Process(target=_churn_writer, args=args, daemon=True)
    )
    runner.start()
    try:
        for _ in range(200):
            with (
                Reader(name, BufferConfig(0, 256)) as r,
                contextlib.suppress(E.Timeout, E.WriterDead),
                r.read(timeout=0.001) as frame,
            ):
                assert bytes(frame.data) == b"hello"
    finally:
        stop.set()
        seen = results.get(timeout=WAIT)
        runner.join(WAIT)
    assert not [k for k in seen if k.startswith("BAD")], seen
    assert seen.get("ok", 0) > 0 and sum(seen.values()) > seen["ok"], seen  # saw transitions
    assert not any(RUN_TOKEN in n for n in os.listdir("/dev/shm") if name in n)


def _reader_then_wait(name: str, ready: Any, done: Any) -> None:
    r = Reader(name, BufferConfig(0, 256))
    ready.set()
    done.wait(WAIT)
    r.close()


def test_1303_lock_file_semantics() -> None:
    name = unique_name("c1303")
    ready, done = CTX.Event(), CTX.Event()
    child = CTX.Process(target=_reader_then_wait, args=(name, ready, done))
    child.start()
    try:
        assert ready.wait(WAIT)
        path = L.lock_path(name)
        assert path.exists()
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # really flocked by the live reader
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        with pytest.raises(E.BufferExists):
            Reader(name, BufferConfig(0, 256))
    finally:
        child.kill()
        child.join(WAIT)
    with Reader(name, BufferConfig(0, 256)):  # the stale lock is taken over
        assert L.lock_path(name).exists()
    assert not L.lock_path(name).exists()  # removed on graceful close


@pytest.mark.parametrize("writer_impl", ["ours", "ref"])
@pytest.mark.parametrize("kind", ["uuid", "max-length"])
def test_1304_semaphore_naming_and_long_names(kind: str, writer_impl: str) -> None:
    base = unique_name("c1304")
    name = f"{base}-{uuid.uuid4()}" if kind == "uuid" else base + "x" * (L.NAME_MAX - len(base))
    with Reader(name, BufferConfig(0, 1024)) as r:
        for entry in (name, f"sem.sem-w-{name}", f"sem.sem-r-{name}"):
            assert os.path.exists(f"/dev/shm/{entry}"), entry
        side = Side(writer_impl)
        w = side.writer(name)
        _write(side, w, b"named")
        w.close()
        with r.read() as frame:
            assert bytes(frame.data) == b"named"
    assert not [n for n in os.listdir("/dev/shm") if name in n]
