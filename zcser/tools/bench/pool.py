"""Bench section "pool": 1, 2, 4 and 8 producer processes into one consumer, with ~100-byte
dicts and with 1 MiB arrays: aggregate messages/s (and GB/s) for one zcser Receiver with
`senders=N` next to the peers a pool uses today, in the same run: one `multiprocessing.Queue`
shared by the producers, faster-fifo's Queue, and ZeroMQ PUSH/PULL over ipc://. Rounds
alternate the methods; each figure is the median of its rounds.

Timing starts when every producer is connected and ready, and stops at the consumer's last
message; the consumer touches every array's first byte (a received message is used, not only
counted). Each method's runs carry enough messages to last about SPAN s, set by one untimed
run per method and producer count (at least 20,000 dicts or 200 arrays in all)."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import zcser

Row = dict[str, Any]
MIB = 1 << 20
WAIT = 60.0
SMALL = {"id": 12345, "t": 1.5, "name": "sensor-01", "ok": True, "tags": [1, 2, 3]}
_ctx = mp.get_context("fork")
_RUNS = itertools.count()


def _peers() -> list[str]:
    methods = ["zcser", "mp.Queue"]
    with contextlib.suppress(ImportError):
        import faster_fifo  # noqa: F401

        methods.append("faster-fifo")
    with contextlib.suppress(ImportError):
        import zmq  # noqa: F401

        methods.append("zmq PUSH/PULL")
    return methods


def _payload(kind: str) -> Any:
    return SMALL if kind == "dict" else np.ones(MIB, np.uint8)


# --- producers (forked) --------------------------------------------------------------------------


def _pin_producers(cpus: set[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def _zcser_producer(
    make: Any, kind: str, count: int, ready: Any, go: Any, cpus: set[int] | None = None
) -> None:
    _pin_producers(cpus)
    payload = _payload(kind)
    with make() as tx:
        ready.release()
        go.wait(WAIT)
        for _ in range(count):
            tx.send(payload)


def _queue_producer(queue: Any, kind: str, count: int, ready: Any, go: Any) -> None:
    payload = _payload(kind)
    ready.release()
    go.wait(WAIT)
    for _ in range(count):
        queue.put(payload)
    if hasattr(queue, "join_thread"):
        queue.close()
        queue.join_thread()


def _ff_producer(queue: Any, kind: str, count: int, ready: Any, go: Any) -> None:
    payload = _payload(kind)
    ready.release()
    go.wait(WAIT)
    for _ in range(count):
        queue.put(payload, timeout=WAIT)


def _zmq_producer(url: str, kind: str, count: int, ready: Any, go: Any) -> None:
    import zmq

    payload = _payload(kind)
    context = zmq.Context()  # a fresh one: the parent's does not survive the fork
    sock: Any = context.socket(zmq.PUSH)
    sock.connect(url)
    ready.release()
    go.wait(WAIT)
    if kind == "dict":
        for _ in range(count):
            sock.send(pickle.dumps(payload, protocol=5))
    else:
        for _ in range(count):
            sock.send(payload, copy=False)
    sock.close(linger=-1)
    context.term()


# --- one measurement -----------------------------------------------------------------------------


def _run(
    method: str,
    kind: str,
    producers: int,
    count: int,
    pin: bool = False,
    busy: list[float] | None = None,
) -> float:
    """Seconds for `producers` x `count` messages into one consumer. `pin` (zcser only): the
    consumer on a CPU of its own, every producer on another (PINNED). `busy` gets the share of
    the run the consumer spent on a CPU (its CPU time over the run's time)."""
    ready, go = _ctx.Semaphore(0), _ctx.Event()
    total = producers * count
    touch: Callable[[Any], Any]
    touch = (lambda obj: obj["id"]) if kind == "dict" else (lambda obj: obj[0])
    cleanup: list[Callable[[], Any]] = []
    after_fork: list[Callable[[], Any]] = []
    target: Callable[..., None]
    args: tuple[Any, ...]
    try:
        if method == "zcser":
            make, rx = zcser.channel(capacity=8 * MIB, senders=producers)
            cleanup.append(rx.close)
            target, args = _zcser_producer, (make,)

            def take() -> Any:
                return rx.recv(timeout=WAIT)
        elif method == "mp.Queue":
            queue = _ctx.Queue()
            target, args = _queue_producer, (queue,)

            def take() -> Any:
                return queue.get(timeout=WAIT)
        elif method == "faster-fifo":
            import faster_fifo
            import faster_fifo_reduction  # noqa: F401  (picklable queues for the producers)

            ff = faster_fifo.Queue(max_size_bytes=64 * MIB)
            target, args = _ff_producer, (ff,)

            def take() -> Any:
                return ff.get(timeout=WAIT)
        else:
            import zmq

            path = os.path.join(
                tempfile.gettempdir(), f"zcbench-pool-{os.getpid()}-{next(_RUNS)}.ipc"
            )
            url = f"ipc://{path}"
            target, args = _zmq_producer, (url,)
            holder: dict[str, Any] = {}

            def bind() -> None:  # after the fork: a forked zmq context is not usable
                context = zmq.Context()
                holder["sock"] = context.socket(zmq.PULL)
                # Unbounded receive queue: with the default high-water mark, pushers that
                # connected before the bind lost messages here (pyzmq 27, libzmq 4.3).
                holder["sock"].setsockopt(zmq.RCVHWM, 0)
                holder["sock"].bind(url)
                cleanup.append(context.term)
                cleanup.append(lambda: holder["sock"].close(linger=0))
                cleanup.append(lambda: os.path.exists(path) and os.remove(path))  # type: ignore[func-returns-value]

            def recv(copy: bool = True) -> Any:
                sock = holder["sock"]
                if not sock.poll(WAIT * 1000):
                    raise RuntimeError("zmq PUSH/PULL: messages did not arrive")
                return sock.recv(copy=copy)

            if kind == "dict":

                def take() -> Any:
                    return pickle.loads(recv())
            else:

                def take() -> Any:
                    return np.frombuffer(recv(copy=False).buffer, np.uint8)

            after_fork.append(bind)

        cpus = sorted(os.sched_getaffinity(0))
        mine = set(cpus)
        extra: tuple[Any, ...] = ()
        if pin:
            if method != "zcser" or len(cpus) < 2:
                raise ValueError("pinned runs need zcser and two CPUs")
            extra = ({cpus[0]},)
        procs = [
            _ctx.Process(target=target, args=(*args, kind, count, ready, go, *extra))
            for _ in range(producers)
        ]
        for p in procs:
            p.start()
        for step in after_fork:
            step()
        for _ in range(producers):
            if not ready.acquire(timeout=WAIT):
                raise RuntimeError(f"{method}: a producer never became ready")
        if pin:
            os.sched_setaffinity(0, {cpus[1]})
        try:
            start, cpu = time.perf_counter(), time.process_time()
            go.set()
            for _ in range(total):
                touch(take())
            elapsed = time.perf_counter() - start
            if busy is not None:
                busy.append((time.process_time() - cpu) / elapsed)
        finally:
            if pin:
                os.sched_setaffinity(0, mine)
        for p in procs:
            p.join(WAIT)
        return elapsed
    finally:
        for step in reversed(cleanup):
            with contextlib.suppress(Exception):
                step()


def _echo(name: str, back: Any, senders: int, count: int, ready: Any) -> None:
    with zcser.Receiver(name, capacity=4 * MIB, senders=senders) as rx, back() as tx:
        ready.release()
        for _ in range(count):
            tx.send(rx.recv(timeout=WAIT))


def _round_trips(senders: int, count: int) -> list[float]:
    """`count` round trips of 1 KiB through a receiver made with `senders` places, all of
    them connected (the extra senders idle), the reply on a plain channel."""
    name = f"zcbench-rtt-{os.getpid()}-{senders}"
    back, rx = zcser.channel(capacity=4 * MIB)
    ready = _ctx.Semaphore(0)
    payload = b"x" * 1024
    proc = _ctx.Process(target=_echo, args=(name, back, senders, count, ready))
    proc.start()
    times: list[float] = []
    try:
        if not ready.acquire(timeout=WAIT):
            raise RuntimeError("the echo process never became ready")
        idle = [zcser.Sender(name, timeout=WAIT) for _ in range(senders - 1)]
        with zcser.Sender(name, timeout=WAIT) as tx:
            clock = time.perf_counter
            for _ in range(count):
                t0 = clock()
                tx.send(payload)
                rx.recv(timeout=WAIT)
                times.append(clock() - t0)
        for end in idle:
            end.close()
        proc.join(WAIT)
    finally:
        rx.close()
        if proc.is_alive():
            proc.kill()
    return times


SPAN = 0.3
"""Seconds a timed run should last at least: shorter runs measure the start (processes waking,
first laps through cold memory) more than the rate."""


def _calibrate(method: str, kind: str, producers: int, per_run: int) -> int:
    """Messages per producer for runs of about SPAN s (at least `per_run` in all), from one
    untimed run; the same rule for every method."""
    base = max(1, per_run // producers)
    try:
        seconds = _run(method, kind, producers, base)
    except RuntimeError:
        return base
    wanted = int(base * SPAN / max(seconds, 1e-6))
    return max(base, min(wanted, 20 * base))


def _alone_producer(make: Any, count: int, done: Any, leave: Any, out: Any) -> None:
    with make() as tx:
        start = time.process_time()
        for _ in range(count):
            tx.send(SMALL)
        out.put((time.process_time() - start) / count)
        done.release()
        leave.acquire(timeout=WAIT)  # connected until the consumer has read everything


def _costs_alone(senders: int, total: int) -> tuple[float, float]:
    """CPU seconds per dict of a producer's send and of the consumer's recv, each measured
    with nothing else running: the producers fill their rings one after the other, then the
    consumer reads everything."""
    make, rx = zcser.channel(capacity=64 * MIB, senders=senders)
    done, leave, out = _ctx.Semaphore(0), _ctx.Semaphore(0), _ctx.SimpleQueue()
    count = total // senders
    procs = [
        _ctx.Process(target=_alone_producer, args=(make, count, done, leave, out))
        for _ in range(senders)
    ]
    try:
        for p in procs:
            p.start()
            if not done.acquire(timeout=WAIT):
                raise RuntimeError("a producer never finished")
        start = time.process_time()
        for _ in range(count * senders):
            rx.recv(timeout=WAIT)["id"]
        consumer = (time.process_time() - start) / (count * senders)
        producer = statistics.mean(out.get() for _ in procs)
        for _ in procs:
            leave.release()
        for p in procs:
            p.join(WAIT)
        return producer, consumer
    finally:
        rx.close()
        for p in procs:
            if p.is_alive():
                p.kill()


def _bound_row(quick: bool) -> Row:
    """Why 4 producers cannot beat 1 on a machine with 2 cores: each side's cost alone."""
    total = 8000 if quick else 40000
    p1, c1, p4, c4 = [], [], [], []
    for _ in range(1 if quick else 5):
        a, b = _costs_alone(1, total)
        p1.append(a)
        c1.append(b)
        a, b = _costs_alone(4, total)
        p4.append(a)
        c4.append(b)
    p = statistics.median(p1 + p4)
    one, four = statistics.median(c1), statistics.median(c4)
    cores = len(os.sched_getaffinity(0))
    alone = 1 / max(p, one)
    packed = min(4 / p, 1 / four, cores / (p + four))  # producers, consumer, the CPUs
    return {
        "case": "dicts, CPU per message alone: producer send, consumer recv (1 ring, pool of 4)",
        "producer_us": p * 1e6,
        "consumer_one_us": one * 1e6,
        "consumer_pool_us": four * 1e6,
        "ratio": packed / alone,
        "note": f"ratio: the best 4 producers can do on {cores} CPUs against 1 producer, "
        "with perfect scheduling",
    }


PINNED = "the consumer on a CPU of its own, the producers on another"
"""The pinned rows' condition (os.sched_setaffinity): on a machine with fewer cores than
processes, the scheduler shares the consumer's core with runnable producers, which are then
running ahead of it into their rings; pinned, the consumer keeps its core, as it does on a
machine with a core per process. The unpinned rows are what users get without pinning."""


def _pinned_rows(quick: bool, per_run: int, rounds: int) -> list[Row]:
    """zcser's dict aggregate with N producers against 1 when the consumer has its own CPU:
    whether reading from many rings costs the consumer more than reading from one."""
    if len(os.sched_getaffinity(0)) < 2:
        return [{"case": f"zcser aggregate, dict, {PINNED}", "note": "not measured: one CPU"}]
    counts = {n: max(1, per_run // n) for n in (1, 2, 4, 8)}
    if not quick:
        counts = {n: _calibrate("zcser", "dict", n, per_run) for n in counts}
    times: dict[int, list[float]] = {n: [] for n in counts}
    busy: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(rounds):  # alternating, so a slow spell hits every count
        for n, count in counts.items():
            times[n].append(_run("zcser", "dict", n, count, pin=True, busy=busy[n]))
    rate = {n: counts[n] * n / statistics.median(t) for n, t in times.items()}
    return [
        {
            "case": f"zcser aggregate, dict, {PINNED}: {n} producers vs 1",
            "many_msg_s": rate[n],
            "one_msg_s": rate[1],
            "ratio": rate[n] / rate[1],
            "note": f"consumer on its CPU {statistics.median(busy[n]):.0%} of the run",
        }
        for n in (2, 4, 8)
    ]


def bench_pool(quick: bool) -> list[Row]:
    """Aggregate rate of N producers into one consumer, zcser against each peer (ratio > 1:
    zcser is faster)."""
    rows: list[Row] = []
    rounds = 1 if quick else 3
    trips = 2000 if quick else 10000
    medians: dict[int, list[float]] = {1: [], 8: []}
    p99: dict[int, list[float]] = {1: [], 8: []}
    for _ in range(rounds):
        for senders in (1, 8):
            trip = sorted(_round_trips(senders, trips))
            medians[senders].append(statistics.median(trip) * 1e6)
            p99[senders].append(trip[int(len(trip) * 0.99)] * 1e6)
    one, eight = statistics.median(medians[1]), statistics.median(medians[8])
    rows.append(
        {
            "case": "1 KiB round trip: receiver with 8 senders connected vs 1 (median us)",
            "eight_us": eight,
            "one_us": one,
            "ratio": eight / one,
            "note": f"p99 {statistics.median(p99[8]):.1f} vs {statistics.median(p99[1]):.1f} us",
        }
    )
    rows.append(_bound_row(quick))
    methods = _peers()
    scaling: dict[str, dict[int, float]] = {}
    shares: dict[str, dict[int, float]] = {}  # the consumer's time on a CPU over the run's
    for kind, per_run in (
        ("dict", 4000 if quick else 20000),
        ("1 MiB array", 40 if quick else 200),
    ):
        for producers in (1, 2, 4, 8):
            counts = {m: max(1, per_run // producers) for m in methods}
            if not quick:  # each method's run long enough to be measured (_calibrate)
                counts = {m: _calibrate(m, kind, producers, per_run) for m in methods}
            times: dict[str, list[float]] = {m: [] for m in methods}
            failed: dict[str, int] = {}
            busy: list[float] = []  # zcser's consumer
            for _ in range(rounds):
                for method in methods:
                    try:
                        times[method].append(
                            _run(
                                method,
                                kind,
                                producers,
                                counts[method],
                                busy=busy if method == "zcser" else None,
                            )
                        )
                    except RuntimeError:  # a peer that lost messages: say so, go on
                        failed[method] = failed.get(method, 0) + 1
            rate = {m: counts[m] * producers / statistics.median(t) for m, t in times.items() if t}
            nbytes = 100 if kind == "dict" else MIB
            if "zcser" in rate:
                scaling.setdefault(kind, {})[producers] = rate["zcser"]
                shares.setdefault(kind, {})[producers] = statistics.median(busy)
            for peer in methods[1:]:
                if peer not in rate or "zcser" not in rate:
                    rows.append(
                        {
                            "case": f"{producers} producers -> 1 consumer, {kind}: zcser vs {peer}",
                            "note": f"not measured: lost messages in {failed} rounds",
                        }
                    )
                    continue
                rows.append(
                    {
                        "case": f"{producers} producers -> 1 consumer, {kind}: zcser vs {peer}",
                        "zcser_msg_s": rate["zcser"],
                        "peer_msg_s": rate[peer],
                        "ratio": rate["zcser"] / rate[peer],
                        "note": f"zcser {rate['zcser'] * nbytes / 1e9:.2f} GB/s"
                        if kind != "dict"
                        else "",
                    }
                )
    for kind, by_count in scaling.items():
        one = by_count.get(1, 0.0)
        for producers, rate_n in by_count.items():
            if producers == 1 or not one:
                continue
            rows.append(
                {
                    "case": f"zcser aggregate, {kind}: {producers} producers vs 1",
                    "many_msg_s": rate_n,
                    "one_msg_s": one,
                    "ratio": rate_n / one,
                    "note": f"consumer on a CPU {shares[kind][producers]:.0%} of the run "
                    f"({shares[kind][1]:.0%} with 1 producer)",
                }
            )
    rows.extend(_pinned_rows(quick, 4000 if quick else 20000, rounds))
    return rows
