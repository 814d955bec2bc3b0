"""Bench section "net": zcser channels over loopback TCP (ZeroMQ) against pickle protocol 5
over a plain socket (`sendall` of the pickle and its buffers, `recv_into` preallocated memory),
both between two real processes in the same run (medians; ratio = zcser / peer, below 1 is
better for times, above 1 for rates). Ray's object transfer is measured only if ray is installed.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import pickle
import socket
import statistics
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from zcser.tools.bench.channel import Row, _row

MB = 10**6
WAIT = 120.0
SMALL = {"id": 12345, "t": 1.5, "name": "sensor-01", "ok": True, "tags": [1, 2, 3]}
_LENGTHS = struct.Struct("<QI")  # pickle length, buffer count; then u64 per buffer


def _big(nbytes: int) -> dict[str, Any]:
    return {"array": np.ones(nbytes // 4, np.float32), "step": 7, "name": "weights"}


@contextmanager
def _child(target: Callable[..., None], *args: Any) -> Iterator[tuple[Any, Any]]:
    """target(up, down, *args) in a spawned process; yields the two queues; always reaped."""
    ctx = mp.get_context("spawn")
    up, down = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=target, args=(up, down, *args), daemon=True)
    proc.start()
    try:
        yield up, down
    finally:
        proc.join(WAIT)
        if proc.is_alive():
            proc.kill()
            proc.join(WAIT)


# --- zcser ---------------------------------------------------------------------------------------


def _zcser_reader(up: Any, down: Any, count: int, min_align: int, capacity: int) -> None:
    from zcser import NetReceiver

    with NetReceiver("tcp://127.0.0.1:0", capacity, min_align=min_align) as rx:
        up.put(rx.name)
        for _ in range(count):
            obj = rx.recv(timeout=WAIT)
            up.put(time.perf_counter())
            del obj
        up.put(rx.stats().aligned_copies)


def _zcser_big(nbytes: int, repeat: int, min_align: int) -> tuple[list[float], int]:
    """One-way times (s) of a big object, sender start to receiver decoded; copies made."""
    import zcser

    obj = _big(nbytes)
    with _child(_zcser_reader, repeat, min_align, 4 * nbytes) as (up, _down):
        with zcser.Sender(up.get(timeout=WAIT)) as tx:
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                tx.send(obj, timeout=WAIT)
                times.append(up.get(timeout=WAIT) - start)
        copies = up.get(timeout=WAIT)
    return times, copies


def _zcser_small_reader(up: Any, down: Any, count: int) -> None:
    import zcser

    with zcser.Receiver("tcp://127.0.0.1:0") as rx:
        up.put(rx.name)
        rx.recv(timeout=WAIT)
        up.put("warm")
        for _ in range(count):
            rx.recv(timeout=WAIT)
        up.put(time.perf_counter())


def _zcser_rate(count: int) -> float:
    import zcser

    with (
        _child(_zcser_small_reader, count) as (up, _down),
        zcser.Sender(up.get(timeout=WAIT)) as tx,
    ):
        tx.send(SMALL, timeout=WAIT)
        up.get(timeout=WAIT)
        start = time.perf_counter()
        for _ in range(count):
            tx.send(SMALL, timeout=WAIT)
        end = up.get(timeout=WAIT)
    return count / (end - start)


# --- pickle 5 over a plain socket --------------------------------------------------------------------


def _recv_into(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        n = conn.recv_into(view[got:])
        if not n:
            raise EOFError("the sender closed the socket")
        got += n


def _pickle_reader(up: Any, down: Any, count: int, small: bool) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        up.put(server.getsockname()[1])
        conn, _ = server.accept()
    with conn:
        pool: dict[int, bytearray] = {}  # preallocated once per size, reused
        head = bytearray(_LENGTHS.size)
        for i in range(count + small):
            _recv_into(conn, memoryview(head))
            size, nbuf = _LENGTHS.unpack(head)
            lengths = bytearray(8 * nbuf)
            _recv_into(conn, memoryview(lengths))
            data = bytearray(size)
            _recv_into(conn, memoryview(data))
            buffers = []
            for n in struct.unpack(f"<{nbuf}Q", lengths):
                target = pool.setdefault(n, bytearray(n))
                _recv_into(conn, memoryview(target))
                buffers.append(memoryview(target))
            obj = pickle.loads(data, buffers=buffers)
            del obj
            if not small:
                up.put(time.perf_counter())
            elif i == 0:
                up.put("warm")
        if small:
            up.put(time.perf_counter())


def _pickle_send(conn: socket.socket, obj: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    lengths = struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
    conn.sendall(_LENGTHS.pack(len(data), len(raws)) + lengths + data)
    for raw in raws:
        conn.sendall(raw)


def _pickle_big(nbytes: int, repeat: int) -> list[float]:
    obj = _big(nbytes)
    with (
        _child(_pickle_reader, repeat, False) as (up, _down),
        socket.create_connection(("127.0.0.1", up.get(timeout=WAIT))) as conn,
    ):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            _pickle_send(conn, obj)
            times.append(up.get(timeout=WAIT) - start)
    return times


def _pickle_rate(count: int) -> float:
    with (
        _child(_pickle_reader, count, True) as (up, _down),
        socket.create_connection(("127.0.0.1", up.get(timeout=WAIT))) as conn,
    ):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pickle_send(conn, SMALL)
        up.get(timeout=WAIT)
        start = time.perf_counter()
        for _ in range(count):
            _pickle_send(conn, SMALL)
        end = up.get(timeout=WAIT)
    return count / (end - start)


# --- the section ---------------------------------------------------------------------------------


def bench_net(quick: bool) -> list[Row]:
    """100 MB object one way over loopback TCP, and small-object messages per second."""
    nbytes = 16 * MB if quick else 100 * MB
    rounds, repeat = (1, 3) if quick else (3, 3)  # rounds interleave the cases: load drifts
    count = 2000 if quick else 20_000
    size = f"{nbytes // MB} MB object over loopback TCP, one way"
    p5_times: list[float] = []
    zc_times: dict[int, list[float]] = {64: [], 8: []}
    copies = dict.fromkeys(zc_times, 0)
    zc_rates, p5_rates = [], []
    for _ in range(rounds):
        p5_times += _pickle_big(nbytes, repeat)
        for min_align in zc_times:
            times, made = _zcser_big(nbytes, repeat, min_align)
            zc_times[min_align] += times
            copies[min_align] += made
        zc_rates.append(_zcser_rate(count))
        p5_rates.append(_pickle_rate(count))
    p5 = statistics.median(p5_times) * 1e6
    rows = []
    for min_align, what in ((64, "aligned copy on receive"), (8, "zero-copy receive")):
        us = statistics.median(zc_times[min_align]) * 1e6
        rows.append(
            _row(
                f"{size}, min_align={min_align} ({what})",
                us,
                "pickle5+socket",
                p5,
                f"zcser {nbytes / us / 1e3:.2f} GB/s, peer {nbytes / p5 / 1e3:.2f} GB/s, "
                f"{copies[min_align]} receive-side copies in {rounds * repeat} messages",
            )
        )
    if importlib.util.find_spec("ray") is None:
        rows.append({"case": f"{size} vs Ray", "note": "ray is not installed: not measured"})
    zc_rate, p5_rate = statistics.median(zc_rates), statistics.median(p5_rates)
    rows.append(
        {
            "case": f"small dict, {count} messages, loopback TCP",
            "zcser_msgs_per_s": zc_rate,
            "peer": "pickle5+socket",
            "peer_msgs_per_s": p5_rate,
            "ratio": zc_rate / p5_rate,
        }
    )
    return rows
