"""zcser.wait, arecv, `async for` and asend on network channels: real processes, real sockets.

No test measures time: a timeout that must expire is short, one that must not is WAIT (it only
bounds a bug)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.procs import child

import zcser
from zcser import errors

WAIT = 30.0
LOOPBACK = "tcp://127.0.0.1:0"
SHORT = 0.05


def _send_when_told(queue: Any, go: Any, urls: list[str], end: str) -> None:
    """For each `go`: one message to every url in turn; then close ("close") or die ("kill")."""
    txs = [zcser.Sender(url) for url in urls]
    for round_ in range(2):
        if not go.wait(WAIT):
            return
        go.clear()
        for i, tx in enumerate(txs):
            tx.send({"round": round_, "to": i, "a": np.full(1000, i)}, timeout=WAIT)
        queue.put(f"sent {round_}")
    if not go.wait(WAIT):
        return
    if end == "kill":
        queue.put("dying")
        queue.close()
        queue.join_thread()
        os.kill(os.getpid(), signal.SIGKILL)
    for tx in txs:
        tx.close(timeout=WAIT)
    queue.put("closed")


def _collect(rxs: list[Any], ready: list[Any], got: dict[int, list[Any]]) -> None:
    for rx in ready:
        got[rxs.index(rx)].append(rx.recv(timeout=0, copy=True)["round"])


def test_wait_returns_the_net_receivers_with_a_message_and_nothing_on_timeout() -> None:
    rxs = [zcser.Receiver(LOOPBACK) for _ in range(3)]
    go = mp.get_context("fork").Event()
    try:
        assert zcser.wait(rxs, timeout=0) == []
        assert zcser.wait(rxs, timeout=SHORT) == []  # no sender yet: not an end either
        with child(_send_when_told, go, [rxs[0].name, rxs[2].name], "close") as (_, queue):
            got: dict[int, list[Any]] = {0: [], 1: [], 2: []}
            for round_ in range(2):
                go.set()
                while len(got[0]) + len(got[2]) < 2 * (round_ + 1):
                    ready = zcser.wait(rxs, timeout=WAIT)
                    assert ready, "wait timed out with messages on the way"
                    assert rxs[1] not in ready
                    assert ready == [rx for rx in rxs if rx in ready]  # in the order given
                    _collect(rxs, ready, got)
                assert queue.get(timeout=WAIT) == f"sent {round_}"
                # connected senders, nothing queued: nothing is ready
                assert zcser.wait(rxs, timeout=SHORT) == []
            assert got == {0: [0, 1], 1: [], 2: [0, 1]}
            go.set()
            assert queue.get(timeout=WAIT) == "closed"
            ended: set[int] = set()
            while len(ended) < 2:
                for rx in zcser.wait([rxs[0], rxs[2]], timeout=WAIT):
                    with pytest.raises(errors.Closed):
                        rx.recv(timeout=0)
                    ended.add(rxs.index(rx))
    finally:
        for rx in rxs:
            rx.close()


def test_wait_reports_a_receiver_whose_sender_died_and_recv_says_writer_dead() -> None:
    go = mp.get_context("fork").Event()
    with (
        zcser.Receiver(LOOPBACK) as rx,
        child(_send_when_told, go, [rx.name], "kill") as (proc, queue),
    ):
        for round_ in range(2):
            go.set()
            assert zcser.wait([rx], timeout=WAIT) == [rx]
            assert rx.recv(timeout=0)["round"] == round_
            assert queue.get(timeout=WAIT) == f"sent {round_}"
        go.set()
        assert queue.get(timeout=WAIT) == "dying"
        proc.join(WAIT)
        assert zcser.wait([rx], timeout=WAIT) == [rx]
        with pytest.raises(errors.WriterDead):
            rx.recv(timeout=0)
    assert zcser.wait([rx], timeout=0) == [rx]  # closed: recv raises Closed at once


def _send_numbers(queue: Any, go: Any, url: str, count: int) -> None:
    with zcser.Sender(url) as tx:
        for i in range(count):
            if not go.wait(WAIT):
                return
            go.clear()
            tx.send({"i": i, "a": np.full(20_000, i, np.float64)}, timeout=WAIT)
            queue.put(i)
    queue.put("closed")


def test_arecv_times_out_then_gets_a_message() -> None:
    go = mp.get_context("fork").Event()

    async def main(rx: Any) -> None:
        with pytest.raises(errors.Timeout):
            await rx.arecv(timeout=SHORT)
        with pytest.raises(errors.Timeout):
            await rx.arecv(timeout=0)
        go.set()
        got = await rx.arecv(timeout=WAIT)
        assert got["i"] == 0 and (got["a"] == 0).all()
        go.set()
        with await rx.arecv_message(timeout=WAIT) as msg:
            assert msg.value["i"] == 1

    with (
        zcser.Receiver(LOOPBACK) as rx,
        child(_send_numbers, go, rx.name, 2) as (_, queue),
    ):
        asyncio.run(main(rx))
        assert queue.get(timeout=WAIT) == 0 and queue.get(timeout=WAIT) == 1


def test_a_cancelled_arecv_loses_no_message() -> None:
    go = mp.get_context("fork").Event()
    count = 6

    async def main(rx: Any, queue: Any) -> list[int]:
        got = []
        for i in range(count):
            task = asyncio.create_task(rx.arecv(timeout=WAIT))
            if i % 3:
                await asyncio.sleep(0)  # let it start waiting (i % 3 == 0: cancelled before)
            go.set()
            assert queue.get(timeout=WAIT) == i
            if i % 3 == 2:  # the message has arrived (held by the receiver) when it is cancelled
                assert zcser.wait([rx], timeout=WAIT) == [rx]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                got.append((await task)["i"])  # it may have finished before the cancel
        while len(got) < count:
            got.append((await rx.arecv(timeout=WAIT))["i"])
        return got

    with (
        zcser.Receiver(LOOPBACK) as rx,
        child(_send_numbers, go, rx.name, count) as (_, queue),
    ):
        assert asyncio.run(main(rx, queue)) == list(range(count))
        go.set()
        assert queue.get(timeout=WAIT) == "closed"


def _send_then_close(queue: Any, urls: list[str], count: int) -> None:
    txs = [zcser.Sender(url) for url in urls]
    for i in range(count):
        for tx in txs:
            tx.send({"i": i, "a": np.full(20_000, i, np.float64)}, timeout=WAIT)
    for tx in txs:
        tx.close(timeout=WAIT)
    queue.put("closed")


def test_async_for_ends_when_the_sender_closes() -> None:
    async def main(rx: Any) -> list[int]:
        return [obj["i"] async for obj in rx]

    with zcser.Receiver(LOOPBACK) as rx, child(_send_then_close, [rx.name], 5) as (_, queue):
        assert asyncio.run(main(rx)) == [0, 1, 2, 3, 4]
        assert queue.get(timeout=WAIT) == "closed"


def test_async_for_ends_when_the_last_of_two_senders_closes() -> None:
    async def main(rx: Any) -> list[int]:
        with zcser.Sender(rx.name) as tx:
            await tx.asend({"i": -1}, timeout=WAIT)
            assert (await rx.arecv(timeout=WAIT))["i"] == -1  # this sender is heard from

            async def collect() -> list[int]:
                return [obj["i"] async for obj in rx]

            with child(_send_then_close, [rx.name], 3) as (_, queue):
                collecting = asyncio.create_task(collect())
                assert await asyncio.to_thread(queue.get, True, WAIT) == "closed"
                await tx.asend({"i": 3}, timeout=WAIT)  # the other one still sends
        return await collecting

    with zcser.Receiver(LOOPBACK) as rx:
        assert sorted(asyncio.run(main(rx))) == [0, 1, 2, 3]  # two connections: any order


BIG = 1 << 17  # float64s: 1 MiB a message, so the kernel's socket buffers fill in a few


def _receive_when_told(queue: Any, go: Any, url: str, hwm: int) -> None:
    with zcser.Receiver(url, hwm=hwm, capacity=8 << 20) as rx:
        queue.put(rx.name)
        if not go.wait(WAIT):
            return
        got = []
        for obj in rx:
            assert (obj["a"] == obj["i"]).all()
            got.append(obj["i"])
        queue.put(got)


def test_asend_waits_for_room_at_the_high_water_mark_without_blocking_the_loop() -> None:
    go = mp.get_context("fork").Event()

    async def main(tx: Any) -> int:
        def message(i: int) -> dict[str, Any]:
            return {"i": i, "a": np.full(BIG, i, np.float64)}

        sent = 0
        while True:  # fill every queue on the way: a try that does not fit raises at once
            try:
                await tx.asend(message(sent), timeout=0)
            except errors.BufferFull:
                break
            sent += 1
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        while True:  # until an asend has to wait (ZeroMQ may still be moving the last ones)
            pending = asyncio.create_task(tx.asend(message(sent), timeout=WAIT))
            before = ticks
            for _ in range(20):
                await asyncio.sleep(0)
            if not pending.done():
                break
            await pending
            sent += 1
        assert ticks > before  # the loop runs while asend waits for room
        go.set()  # the receiver drains
        await pending
        ticking.cancel()
        sent += 1
        for i in range(sent, sent + 3):
            await tx.asend(message(i), timeout=WAIT)
        return sent + 3

    with child(_receive_when_told, go, LOOPBACK, 1) as (_, queue):
        tx = zcser.Sender(queue.get(timeout=WAIT), hwm=1)
        try:
            total = asyncio.run(main(tx))
        finally:
            tx.close(timeout=WAIT)
        assert queue.get(timeout=WAIT) == list(range(total))


def test_asend_waits_for_a_receiver_that_starts_later(tmp_path: Path) -> None:
    url = f"ipc://{tmp_path}/late.sock"
    go = mp.get_context("fork").Event()
    go.set()

    async def main(tx: Any) -> None:
        with pytest.raises(errors.Timeout):
            await tx.asend({"i": 0, "a": np.zeros(10)}, timeout=0)
        with child(_receive_when_told, go, url, 8) as (_, queue):
            await tx.asend({"i": 0, "a": np.zeros(10)}, timeout=WAIT)
            await tx.asend({"i": 1, "a": np.ones(10)}, timeout=WAIT)
            tx.close(timeout=WAIT)
            assert queue.get(timeout=WAIT) == url
            assert queue.get(timeout=WAIT) == [0, 1]

    with zcser.Sender(url) as tx:
        asyncio.run(main(tx))


def test_closing_a_network_receiver_under_a_sleeping_wait_returns_it() -> None:
    """close() from another thread while zcser.wait sleeps on a network receiver: wait
    returns the receiver (its recv then raises Closed), never a ZeroMQ error."""
    import threading

    rx = zcser.Receiver("tcp://127.0.0.1:0")
    tx = zcser.Sender(rx.name)
    got: list[Any] = []

    def sleeper() -> None:
        try:
            got.append(zcser.wait([rx], timeout=30))
        except BaseException as exc:
            got.append(exc)

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(0.3)  # asleep in the poll (nothing is sent)
    rx.close()
    thread.join(30)
    tx.close()
    assert not thread.is_alive()
    assert got == [[rx]], got
    with pytest.raises(errors.Closed):
        rx.recv(timeout=0)
