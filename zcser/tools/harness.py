"""Two-process measurements shared by `python -m zcser demo` and the bench's channel section.

Each measurement forks a writer process; this process reads. Peers are what users write today:
`multiprocessing.Queue`, `multiprocessing.Pipe`, and pickle protocol 5 with `buffer_callback`
whose buffers are copied into one reused `multiprocessing.shared_memory` block (the reader
unpickles over it). One-way latency uses `time.perf_counter` stamps taken in both processes
(CLOCK_MONOTONIC, shared by all processes on Linux).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import multiprocessing as mp
import os
import pickle
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from zcser import Receiver, Sender, SenderFactory, channel

MIB = 1 << 20
WAIT = 60.0
"""Seconds any single wait may take before the measurement is declared broken."""

ONE_WAY = ("zcser copy", "zcser empty()", "pickle5+shm", "mp.Queue")
SMALL = ("zcser", "mp.Pipe", "mp.Queue")
ROUND_TRIP = ("zcser", "iceoryx2", "mp.Pipe", "mp.Queue")
"""Round-trip methods; iceoryx2 only when its Python package is installed (`iceoryx2_missing`)."""
RTT_WARMUP = 200
"""Untimed round trips first, for every method: the echo process is forked, so until the pages
both processes touch have been copied (copy-on-write) a round trip may take page faults in
either process (~100 of them in 3,000 round trips without it, ~15 with it)."""

_ctx = mp.get_context("fork")


@dataclass
class OneWay:
    """One method moving `nbytes` one way `repeat` times; checks the reader made."""

    method: str
    nbytes: int
    latencies: list[float] = field(default_factory=list)
    uss_growth: int | None = None
    failures: list[str] = field(default_factory=list)
    warmup: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def gbps(self) -> float:
        return self.nbytes / self.median / 1e9


def _uss() -> int:
    import psutil

    return int(psutil.Process().memory_full_info().uss)


def shm_span(name: str) -> tuple[int, int] | None:
    """This process's mapping of /dev/shm/NAME, from /proc/self/maps (None if not mapped)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(f"/dev/shm/{name}"):
                lo, hi = line.split()[0].split("-")
                return int(lo, 16), int(hi, 16)
    return None


_PLACES = (Path("/dev/shm"), Path("/tmp/zerobuffer"))


def leftovers(prefix: str) -> list[Path]:
    """Shm segments, semaphores and ZeroBuffer lock files whose names contain `prefix`."""
    found: list[Path] = []
    for place in _PLACES:
        with contextlib.suppress(FileNotFoundError):
            found.extend(place / n for n in os.listdir(place) if prefix in n)
    return sorted(found)


def two_cores() -> tuple[int, int] | None:
    """Two CPUs this process may run on (for pinned round trips), or None if it has one."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


@contextlib.contextmanager
def _pinned(cpu: int | None) -> Iterator[None]:
    """Run the block on `cpu` only (None: wherever), then allow what was allowed before."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _run_on(cpu: int | None, target: Callable[..., None], *args: Any) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    target(*args)


@contextlib.contextmanager
def _writer(
    target: Callable[..., None], *args: Any, cpu: int | None = None
) -> Iterator[Connection]:
    """Fork a writer running target(conn, *args) (on `cpu` only, if given); yields our end of
    its control pipe."""
    mine, theirs = _ctx.Pipe()
    proc = _ctx.Process(target=_run_on, args=(cpu, target, theirs, *args), daemon=True)
    proc.start()
    theirs.close()
    try:
        yield mine
    finally:
        proc.join(WAIT)
        if proc.is_alive():
            proc.kill()
            proc.join(WAIT)
        mine.close()


def _wait(conn: Connection) -> Any:
    if not conn.poll(WAIT):
        raise TimeoutError(f"peer process sent nothing within {WAIT} s")
    return conn.recv()


def _check_array(result: OneWay, data: Any, value: int, span: tuple[int, int] | None) -> None:
    """Values (min and max, no temporaries) and, for shared memory, zero-copy by address."""
    n = result.nbytes // 8
    if not isinstance(data, np.ndarray) or data.shape != (n,) or data.dtype != np.float64:
        result.failures.append(f"{result.method}: wrong array {type(data).__name__}")
        return
    if not data.min() == data.max() == value:
        result.failures.append(f"{result.method}: wrong values (expected all {value})")
    if span is not None:
        address = data.ctypes.data
        if not span[0] <= address < address + data.nbytes <= span[1]:
            result.failures.append(f"{result.method}: array is not a view into shared memory")
        if result.method.startswith("zcser") and data.flags.writeable:
            result.failures.append(f"{result.method}: received view is writable")


# --- one-way transfers of an object holding a big array ------------------------------------------


def _zcser_writer(conn: Connection, make_tx: SenderFactory, nbytes: int, repeat: int) -> None:
    empty = conn.recv()
    n = nbytes // 8
    with make_tx() as tx:
        source = np.empty(n)
        for i in range(repeat):
            _wait(conn)
            if empty:
                data = tx.empty(n, np.float64)
                data.fill(i)
            else:
                source.fill(i)
                data = source
            t0 = time.perf_counter()
            tx.send({"data": data, "i": i, "t": t0, "label": "frame"})
        _wait(conn)


def _pickle5_writer(conn: Connection, name: str, nbytes: int, repeat: int) -> None:
    block = shared_memory.SharedMemory(name=name, create=True, size=nbytes + 4096)
    try:
        conn.send(block.name)
        memory = block.buf
        assert memory is not None
        source = np.empty(nbytes // 8)
        for i in range(repeat):
            _wait(conn)
            source.fill(i)
            t0 = time.perf_counter()
            buffers: list[pickle.PickleBuffer] = []
            head = pickle.dumps(
                {"data": source, "i": i, "t": t0, "label": "frame"},
                protocol=5,
                buffer_callback=buffers.append,
            )
            table = []
            pos = 0
            for buf in buffers:
                raw = buf.raw()
                memory[pos : pos + raw.nbytes] = raw
                table.append((pos, raw.nbytes))
                pos += -(-raw.nbytes // 64) * 64
            conn.send((head, table))
        _wait(conn)
    finally:
        block.close()
        block.unlink()


def _queue_writer(conn: Connection, queue: Any, nbytes: int, repeat: int) -> None:
    source = np.empty(nbytes // 8)
    for i in range(repeat):
        _wait(conn)
        source.fill(i)
        queue.put({"data": source, "i": i, "t": time.perf_counter(), "label": "frame"})
    _wait(conn)
    queue.close()
    queue.join_thread()


def one_way(
    method: str, nbytes: int, repeat: int, prefix: str, uss: bool = False, warmup: int = 2
) -> OneWay:
    """Median one-way latency of `method` for an object holding an `nbytes` float64 array over
    `repeat` messages after `warmup` untimed ones (first touches of fresh memory); with `uss`,
    the reader's private memory growth while it holds the last message."""
    result = OneWay(method, nbytes)
    result.warmup = warmup
    repeat += warmup
    if method.startswith("zcser"):
        _one_way_zcser(result, repeat, prefix, method == "zcser empty()", uss)
    elif method == "pickle5+shm":
        _one_way_pickle5(result, repeat, prefix, uss)
    elif method == "mp.Queue":
        _one_way_queue(result, repeat, uss)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {ONE_WAY}")
    return result


def _receive_loop(
    result: OneWay,
    conn: Connection,
    repeat: int,
    get: Callable[[], dict[str, Any]],
    span: Callable[[], tuple[int, int] | None],
    uss: bool,
) -> None:
    for i in range(repeat):
        before = _uss() if uss and i == repeat - 1 else 0
        conn.send(None)
        msg = get()
        if i >= result.warmup:
            result.latencies.append(time.perf_counter() - msg["t"])
        if msg["i"] != i or msg["label"] != "frame":
            result.failures.append(f"{result.method}: message {i} has wrong small fields")
        _check_array(result, msg["data"], i, span())
        if before:
            result.uss_growth = _uss() - before
        del msg
    conn.send(None)


def _one_way_zcser(result: OneWay, repeat: int, prefix: str, empty: bool, uss: bool) -> None:
    name = f"{prefix}z{int(empty)}"
    make_tx, rx = channel(name, capacity=max(64 * MIB, 2 * result.nbytes + 2 * MIB))
    with rx, _writer(_zcser_writer, make_tx, result.nbytes, repeat) as conn:
        conn.send(empty)
        _receive_loop(
            result,
            conn,
            repeat,
            lambda: rx.recv(timeout=WAIT),
            lambda: shm_span(name),
            uss,
        )
        if rx.stats().frames_pinned:
            result.failures.append(f"{result.method}: frames still pinned after views died")


def _one_way_pickle5(result: OneWay, repeat: int, prefix: str, uss: bool) -> None:
    name = f"{prefix}p5"
    resource_tracker.ensure_running()  # one tracker shared with the forked writer, which unlinks
    with _writer(_pickle5_writer, name, result.nbytes, repeat) as conn:
        block = shared_memory.SharedMemory(name=_wait(conn))

        memory = block.buf
        assert memory is not None

        def get() -> dict[str, Any]:
            head, table = _wait(conn)
            views = [memory[pos : pos + n] for pos, n in table]
            obj: dict[str, Any] = pickle.loads(head, buffers=views)
            return obj

        try:
            _receive_loop(result, conn, repeat, get, lambda: shm_span(name), uss)
        finally:
            gc.collect()
            with contextlib.suppress(BufferError):
                block.close()


def _one_way_queue(result: OneWay, repeat: int, uss: bool) -> None:
    queue = _ctx.Queue()
    with _writer(_queue_writer, queue, result.nbytes, repeat) as conn:
        _receive_loop(result, conn, repeat, lambda: queue.get(timeout=WAIT), lambda: None, uss)
    queue.close()


# --- small messages: round trip and rate ---------------------------------------------------------


def _zcser_echo(conn: Connection, back: SenderFactory, name: str, count: int) -> None:
    with Receiver(name, capacity=4 * MIB) as rx:
        conn.send("ready")
        with back() as tx:
            for _ in range(count):
                tx.send(rx.recv(timeout=WAIT))


def _pipe_echo(conn: Connection, count: int) -> None:
    for _ in range(count):
        conn.send_bytes(conn.recv_bytes())


def _queue_echo(conn: Connection, there: Any, back: Any, count: int) -> None:
    for _ in range(count):
        back.put(there.get(timeout=WAIT))


def _iox2() -> Any:
    """The iceoryx2 module (imported by name: it ships no type information)."""
    return importlib.import_module("iceoryx2")


def iceoryx2_missing() -> str | None:
    """Why the iceoryx2 peer cannot be measured here (None: it can)."""
    try:
        iox2 = _iox2()
    except ImportError as exc:
        return f"iceoryx2 not installed ({exc}); pip install 'zcser[bench]'"
    try:  # a node needs iceoryx2's shared directory, which another user may own already
        iox2.set_log_level_from_env_or(iox2.LogLevel.Fatal)
        iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    except Exception as exc:
        return (
            f"iceoryx2 cannot create a node here ({type(exc).__name__}: {exc}); its shared "
            "directory (/tmp/iceoryx2) may belong to another user"
        )
    return None


def _iox2_ports(prefix: str, nbytes: int, mine: str, theirs: str) -> tuple[Any, Any, Any]:
    """(node, publisher on `mine`, subscriber of `theirs`): iceoryx2 publish-subscribe services of
    fixed-size `nbytes` payloads, the way its Python examples open them."""
    import ctypes

    iox2 = _iox2()
    iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
    payload = ctypes.c_uint8 * nbytes
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)

    def service(name: str) -> Any:
        return (
            node.service_builder(iox2.ServiceName.new(f"{prefix}/{name}"))
            .publish_subscribe(payload)
            .open_or_create()
        )

    publisher = service(mine).publisher_builder().create()
    subscriber = service(theirs).subscriber_builder().create()
    return node, publisher, subscriber


def _iox2_send(publisher: Any, data: bytes) -> None:
    """Copy `data` into a loaned sample and publish it."""
    import ctypes

    sample = publisher.loan_uninit()
    ctypes.memmove(sample.payload_ptr, data, len(data))
    sample.assume_init().send()


def _iox2_recv(subscriber: Any, nbytes: int) -> bytes:
    """The next sample's payload as bytes, polling `receive()` (iceoryx2's publish-subscribe has
    no blocking receive: its own latency benchmark polls too); TimeoutError after WAIT s."""
    import ctypes

    receive = subscriber.receive
    polls = 0
    deadline = 0.0
    while True:
        sample = receive()
        if sample is not None:
            data = ctypes.string_at(sample.payload_ptr, nbytes)
            sample.delete()
            return data
        polls += 1
        if polls % 4096 == 0:
            now = time.monotonic()
            if not deadline:
                deadline = now + WAIT
            elif now > deadline:
                raise TimeoutError(f"iceoryx2: no sample within {WAIT} s")


def _iox2_echo(conn: Connection, prefix: str, nbytes: int, count: int) -> None:
    node, publisher, subscriber = _iox2_ports(prefix, nbytes, "pong", "ping")
    conn.send("ready")
    for _ in range(count):
        _iox2_send(publisher, _iox2_recv(subscriber, nbytes))
    _wait(conn)  # the parent has read the last pong: ports may go
    del publisher, subscriber, node


def round_trips(
    method: str,
    payload: Any,
    count: int,
    prefix: str,
    warmup: int = RTT_WARMUP,
    pin: bool = False,
) -> list[float]:
    """`count` round trips of `payload` (ping-pong with an echoing process), seconds each, after
    `warmup` untimed ones. iceoryx2 carries bytes payloads only (fixed-size samples of their
    length). `pin`: this process runs on one CPU and the echoing one on another for the whole
    measurement (the same for every method; ValueError with fewer than two CPUs)."""
    cores = two_cores() if pin else None
    if pin and cores is None:
        raise ValueError("pinned round trips need two CPUs")
    here, there = cores if cores is not None else (None, None)
    with _pinned(here):
        return _round_trips(method, payload, count, prefix, warmup, there)


def _round_trips(
    method: str, payload: Any, count: int, prefix: str, warmup: int, cpu: int | None
) -> list[float]:
    times: list[float] = []
    clock = time.perf_counter
    total = count + warmup
    if method == "iceoryx2":
        why = iceoryx2_missing()
        if why is not None:
            raise RuntimeError(why)
        data = bytes(payload)
        nbytes = len(data)
        with _writer(_iox2_echo, f"{prefix}iox", nbytes, total, cpu=cpu) as conn:
            _wait(conn)
            node, publisher, subscriber = _iox2_ports(f"{prefix}iox", nbytes, "ping", "pong")
            for _ in range(total):
                t0 = clock()
                _iox2_send(publisher, data)
                _iox2_recv(subscriber, nbytes)
                times.append(clock() - t0)
            conn.send(None)
            del publisher, subscriber, node
    elif method == "zcser":
        back, rx = channel(f"{prefix}rb", capacity=4 * MIB)
        with rx, _writer(_zcser_echo, back, f"{prefix}rf", total, cpu=cpu) as conn:
            _wait(conn)
            with Sender(f"{prefix}rf") as tx:
                for _ in range(total):
                    t0 = clock()
                    tx.send(payload)
                    rx.recv(timeout=WAIT)
                    times.append(clock() - t0)
    elif method == "mp.Pipe":
        data = pickle.dumps(payload, protocol=5)
        with _writer(_pipe_echo, total, cpu=cpu) as conn:
            for _ in range(total):
                t0 = clock()
                conn.send_bytes(data)
                pickle.loads(conn.recv_bytes())
                times.append(clock() - t0)
    elif method == "mp.Queue":
        there, back_q = _ctx.Queue(), _ctx.Queue()
        with _writer(_queue_echo, there, back_q, total, cpu=cpu):
            for _ in range(total):
                t0 = clock()
                there.put(payload)
                back_q.get(timeout=WAIT)
                times.append(clock() - t0)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {ROUND_TRIP}")
    return times[warmup:]


def _zcser_stream(conn: Connection, make_tx: SenderFactory, payload: Any, count: int) -> None:
    with make_tx() as tx:
        _wait(conn)
        for _ in range(count):
            tx.send(payload)


def _pipe_stream(conn: Connection, payload: Any, count: int) -> None:
    _wait(conn)
    for _ in range(count):
        conn.send(payload)


def _queue_stream(conn: Connection, queue: Any, payload: Any, count: int) -> None:
    _wait(conn)
    for _ in range(count):
        queue.put(payload)
    queue.close()
    queue.join_thread()


def messages_per_second(method: str, payload: Any, count: int, prefix: str) -> float:
    """Rate at which `count` small messages stream one way (writer as fast as it can)."""
    clock = time.perf_counter
    if method == "zcser":
        make_tx, rx = channel(f"{prefix}s", capacity=16 * MIB)
        with rx, _writer(_zcser_stream, make_tx, payload, count) as conn:
            t0 = clock()
            conn.send(None)
            for _ in range(count):
                rx.recv(timeout=WAIT)
            return count / (clock() - t0)
    if method == "mp.Pipe":
        with _writer(_pipe_stream, payload, count) as conn:
            t0 = clock()
            conn.send(None)
            for _ in range(count):
                conn.recv()
            return count / (clock() - t0)
    if method == "mp.Queue":
        queue = _ctx.Queue()
        with _writer(_queue_stream, queue, payload, count) as conn:
            t0 = clock()
            conn.send(None)
            for _ in range(count):
                queue.get(timeout=WAIT)
            return count / (clock() - t0)
    raise ValueError(f"unknown method {method!r}; choose from {SMALL}")


def cleanup(prefix: str) -> list[Path]:
    """Remove (and return) whatever `leftovers(prefix)` finds."""
    left = leftovers(prefix)
    for path in left:
        with contextlib.suppress(OSError):
            path.unlink()
    return left
