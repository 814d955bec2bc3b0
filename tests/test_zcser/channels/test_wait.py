"""One wait for many channels (`zcser.wait`) and asyncio (`arecv`, `async for`, `asend`) on
shared-memory channels, one sender or many, mixed with a network channel."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

import zcser
from zcser import errors

MIB = 1 << 20
WAIT = 30.0


def test_wait_returns_the_channels_with_a_message_and_nothing_on_timeout(
    shm_name: str,
) -> None:
    with (
        zcser.Receiver(shm_name + "a", capacity=MIB) as one,
        zcser.Receiver(shm_name + "b", capacity=MIB, senders=4) as many,
    ):
        assert zcser.wait([one, many], timeout=0.05) == []
        with zcser.Sender(shm_name + "b") as tx:
            tx.send("to many")
            assert zcser.wait([one, many], timeout=WAIT) == [many]
            assert many.recv(timeout=0) == "to many"
            with zcser.Sender(shm_name + "a") as tx1:
                tx1.send("to one")
                assert zcser.wait([one, many], timeout=WAIT) == [one]
                assert one.recv(timeout=0) == "to one"


def _send_later(name: str, obj: Any, delay: float) -> None:
    time.sleep(delay)
    with zcser.Sender(name) as tx:
        tx.send(obj)


@pytest.mark.parametrize("senders", [1, 4])
def test_wait_sleeps_until_a_message_from_another_process_wakes_it(
    shm_name: str, senders: int
) -> None:
    with zcser.Receiver(shm_name, capacity=MIB, senders=senders) as rx:
        p = mp.get_context("fork").Process(target=_send_later, args=(shm_name, "late", 0.3))
        p.start()
        ready = zcser.wait([rx], timeout=WAIT)
        assert ready == [rx]
        assert rx.recv(timeout=0) == "late"
        p.join(WAIT)


def test_wait_mixes_shared_memory_and_network_channels(shm_name: str) -> None:
    pytest.importorskip("zmq")
    url = f"ipc:///tmp/{shm_name}.sock"
    with (
        zcser.Receiver(shm_name, capacity=MIB, senders=2) as shm,
        zcser.Receiver(url) as net,
        zcser.Sender(url) as tx_net,
    ):
        assert zcser.wait([shm, net], timeout=0.05) == []
        tx_net.send({"over": "zmq"})
        assert zcser.wait([shm, net], timeout=WAIT) == [net]
        assert net.recv(timeout=WAIT) == {"over": "zmq"}
        with zcser.Sender(shm_name) as tx:
            tx.send(np.arange(50_000))
            assert zcser.wait([shm, net], timeout=WAIT) == [shm]
            assert (shm.recv(timeout=0) == np.arange(50_000)).all()


def test_wait_refuses_what_it_cannot_wait_on() -> None:
    with pytest.raises(errors.UsageError, match="receivers"):
        zcser.wait([object()])
    with pytest.raises(errors.UsageError, match="list"):
        zcser.wait("abc")


def test_wait_refuses_one_end_given_without_a_list_and_takes_nothing_from_it(
    shm_name: str,
) -> None:
    # A receiver is iterable, so wait(rx) used to run `for obj in rx` in its check: it took
    # every message (and blocked while a sender lived) before failing on the first message.
    with zcser.Receiver(shm_name, capacity=MIB) as rx:
        with zcser.Sender(shm_name) as tx:  # closed: the old check ended instead of blocking
            tx.send("kept")
        with pytest.raises(errors.UsageError, match=r"zcser.wait\(\[rx\]\)"):
            zcser.wait(rx, timeout=0)
        assert rx.recv(timeout=0) == "kept"


@pytest.mark.parametrize("senders", [1, 3])
def test_arecv_awaits_without_blocking_the_loop(shm_name: str, senders: int) -> None:
    async def main() -> list[Any]:
        with zcser.Receiver(shm_name, capacity=MIB, senders=senders) as rx:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            t = asyncio.create_task(ticker())
            p = mp.get_context("fork").Process(target=_send_later, args=(shm_name, "hi", 0.3))
            p.start()
            got = await rx.arecv(timeout=WAIT)
            t.cancel()
            p.join(WAIT)
            assert ticks > 3  # the loop ran while arecv waited
            return [got]

    assert asyncio.run(main()) == ["hi"]


def test_arecv_times_out_with_the_channel_timeout(shm_name: str) -> None:
    async def main() -> None:
        with zcser.Receiver(shm_name, capacity=MIB, senders=2) as rx, pytest.raises(errors.Timeout):
            await rx.arecv(timeout=0.1)

    asyncio.run(main())


def test_a_cancelled_arecv_loses_no_message(shm_name: str) -> None:
    async def main() -> None:
        with zcser.Receiver(shm_name, capacity=MIB, senders=2) as rx:
            task = asyncio.create_task(rx.arecv())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with zcser.Sender(shm_name) as tx:
                tx.send("kept")
                tx.send("with its sender")
                assert await rx.arecv(timeout=WAIT) == "kept"
                msg = await rx.arecv_message(timeout=WAIT)
                with msg:
                    assert msg.value == "with its sender"
                    assert 0 <= msg.sender < 2

    asyncio.run(main())


def _produce_n(make: Any, n: int) -> None:
    tx = make()
    for i in range(n):
        tx.send(i)
    tx.close()


def test_async_for_ends_after_every_sender_of_a_pool_closed(shm_name: str) -> None:
    make, rx = zcser.channel(shm_name, capacity=MIB, senders=3)

    async def main() -> list[int]:
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_produce_n, args=(make, 50)) for _ in range(3)]
        for p in procs:
            p.start()
        got = [obj async for obj in rx]
        for p in procs:
            p.join(WAIT)
        return got

    with rx:
        got = asyncio.run(main())
    assert sorted(got) == sorted(list(range(50)) * 3)


def test_asend_waits_for_room_without_blocking_the_loop(shm_name: str) -> None:
    chunk = np.ones(200_000, np.uint8)

    async def main() -> int:
        with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
            sent = 0
            while True:  # fill the ring
                try:
                    tx.send(chunk, timeout=0)
                    sent += 1
                except errors.BufferFull:
                    break
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            t = asyncio.create_task(ticker())
            drain = threading.Timer(0.3, lambda: [rx.recv(copy=True) for _ in range(2)])
            drain.start()
            await tx.asend(chunk, timeout=WAIT)  # room comes when the receiver drains
            drain.join()
            t.cancel()
            assert ticks > 3
            return sent

    assert asyncio.run(main()) > 0


def test_a_cancelled_asend_sends_nothing_after_the_cancellation(shm_name: str) -> None:
    chunk = np.ones(200_000, np.uint8)

    async def main() -> None:
        with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
            sent = 0
            while True:
                try:
                    tx.send(chunk, timeout=0)
                    sent += 1
                except errors.BufferFull:
                    break
            task = asyncio.create_task(tx.asend(chunk * 2))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.2)  # past the worker's last try
            got = [rx.recv(timeout=0, copy=True) for _ in range(sent)]
            assert all(int(g.max()) == 1 for g in got)
            with pytest.raises(errors.Timeout):
                rx.recv(timeout=0.1)

    asyncio.run(main())


# --- another thread inside recv ------------------------------------------------------------------


def _in_recv(rx: Any) -> tuple[threading.Thread, list[Any]]:
    """A thread blocked in rx.recv() (nothing sent yet); its outcome lands in the list."""
    outcome: list[Any] = []

    def receive() -> None:
        try:
            outcome.append(rx.recv())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    while not rx._gate.in_use():
        time.sleep(0.001)
    return thread, outcome


def _returns(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """fn(...) in a thread: its result, or AssertionError if it is still running after WAIT s."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(fn(*args, **kwargs)), daemon=True)
    worker.start()
    worker.join(WAIT)
    assert not worker.is_alive(), f"{fn.__name__} ignored its timeout"
    return out[0]


@pytest.mark.parametrize("senders", [1, 4])
def test_wait_keeps_its_timeout_while_another_thread_is_in_recv(
    shm_name: str, senders: int
) -> None:
    """Several waiters are allowed (as with select or multiprocessing.connection.wait): a recv
    in another thread takes what comes, and wait returns [] at its timeout instead of waiting
    for that recv to end; another end's message is reported as usual."""
    with (
        zcser.Receiver(shm_name, capacity=MIB, senders=senders) as rx,
        zcser.Receiver(shm_name + "o", capacity=MIB) as other,
    ):
        thread, outcome = _in_recv(rx)
        assert _returns(zcser.wait, [rx], timeout=0.1) == []
        with zcser.Sender(shm_name + "o") as tx:
            tx.send("other")
            assert _returns(zcser.wait, [rx, other], timeout=WAIT) == [other]
        assert other.recv(timeout=0) == "other"
        with zcser.Sender(shm_name) as tx:
            tx.send("taken by the thread")
            thread.join(WAIT)
            assert outcome == ["taken by the thread"]
            tx.send("then waiting")
            assert _returns(zcser.wait, [rx], timeout=WAIT) == [rx]
            assert rx.recv(timeout=0) == "then waiting"


@pytest.mark.parametrize("senders", [1, 4])
def test_recv_and_arecv_keep_their_timeout_while_another_thread_is_in_recv(
    shm_name: str, senders: int
) -> None:
    with zcser.Receiver(shm_name, capacity=MIB, senders=senders) as rx:
        thread, outcome = _in_recv(rx)

        def recv_timeout() -> BaseException | None:
            try:
                rx.recv(timeout=0.1)
            except BaseException as exc:
                return exc
            return None

        async def arecv_timeout() -> BaseException | None:
            try:
                await rx.arecv(timeout=0.1)
            except BaseException as exc:
                return exc
            return None

        assert isinstance(_returns(recv_timeout), errors.Timeout)
        assert isinstance(_returns(asyncio.run, arecv_timeout()), errors.Timeout)
        rx.close()  # the thread's recv raises Closed
        thread.join(WAIT)
        assert len(outcome) == 1 and isinstance(outcome[0], errors.Closed)


def _close_under_a_waiter(name: str, senders: int, use_async: bool, out: Any) -> None:
    """In a child process (a crash must fail the test, not the test run): a thread sleeps in
    zcser.wait (or arecv) on the receiver while the main thread closes it."""
    rx = zcser.Receiver(name, capacity=MIB, senders=senders)
    tx = zcser.Sender(name)
    got: list[Any] = []

    def sleeper() -> None:
        try:
            if use_async:
                got.append(asyncio.run(rx.arecv(timeout=WAIT)))
            else:
                got.append(zcser.wait([rx], timeout=WAIT))
        except BaseException as exc:
            got.append(exc)

    thread = threading.Thread(target=sleeper)
    thread.start()
    while not rx._waiters:  # armed: asleep on the pool's memory and bells
        time.sleep(0.001)
    rx.close()
    thread.join(WAIT)
    tx.close()
    out.put(("alive" if thread.is_alive() else "done", repr(got)))


@pytest.mark.parametrize("use_async", [False, True], ids=["wait", "arecv"])
@pytest.mark.parametrize("senders", [1, 3])
def test_closing_a_receiver_under_a_sleeping_waiter_neither_crashes_nor_hangs(
    shm_name: str, senders: int, use_async: bool
) -> None:
    """close() from another thread while zcser.wait / arecv sleeps on the receiver: the waiter
    wakes and reports it (wait returns it; arecv raises Closed); nothing is unmapped under it
    (this was a SIGSEGV)."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_close_under_a_waiter, args=(shm_name, senders, use_async, out))
    p.start()
    p.join(WAIT)
    assert p.exitcode == 0, f"the process ended with {p.exitcode}"
    state, got = out.get(timeout=WAIT)
    assert state == "done"
    assert "Closed" in got if use_async else got.startswith("[[<")


def test_every_end_is_an_async_context_manager(shm_name: str) -> None:
    """Regression: `async with rx:` raised TypeError (no __aenter__) in asyncio code."""

    async def main() -> Any:
        async with zcser.Receiver(shm_name, capacity=MIB, senders=2) as rx:
            async with zcser.Sender(shm_name) as tx:
                await tx.asend("async")
            got = await rx.arecv(timeout=WAIT)
        async with (
            zcser.Publisher(shm_name + "p", capacity=MIB) as pub,
            zcser.Subscriber(shm_name + "p") as sub,
        ):
            pass
        return got, rx.closed, tx.closed, pub.closed, sub.closed

    assert asyncio.run(main()) == ("async", True, True, True, True)


def _close_under_a_spinning_waiter(name: str, rounds: int, out: Any) -> None:
    """In a child process (a crash must fail the test, not the test run): a thread calls
    zcser.wait([sub], timeout=0) over and over while the main thread closes the subscriber,
    `rounds` times; the switch interval is tiny so that the thread is often stopped between
    a hook's look at `closed` and its read of the slot's words."""
    sys.setswitchinterval(1e-6)
    pub = zcser.Publisher(name, capacity=MIB)
    outcomes: set[str] = set()
    for i in range(rounds):
        sub = zcser.Subscriber(name)
        stop: list[bool] = []

        def spin(sub: Any = sub, stop: list[bool] = stop) -> None:
            while not stop:
                try:
                    zcser.wait([sub], timeout=0)
                except errors.ZcserError as exc:  # (none expected: wait reports a closed end)
                    outcomes.add(type(exc).__name__)

        thread = threading.Thread(target=spin)
        thread.start()
        for _ in range(i % 50):  # a varying point in the waiter's loop
            pass
        sub.close()
        stop.append(True)
        thread.join(WAIT)
        assert not thread.is_alive()
        assert sub.closed
    pub.close()
    out.put(sorted(outcomes))


def test_closing_a_subscriber_under_a_spinning_waiter_does_not_crash(shm_name: str) -> None:
    """Regression: a fan-out Subscriber's wait hooks read its slot's words after checking
    `closed`, outside the gate; a close() in another thread in between unmapped the segment
    (SIGSEGV). Now the hooks count themselves and close() leaves the mapping to the last."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_close_under_a_spinning_waiter, args=(shm_name, 1200, out))
    p.start()
    p.join(WAIT * 4)
    if p.is_alive():  # never left behind: a stuck child fails the test, not the run
        p.kill()
        p.join(WAIT)
    assert p.exitcode == 0, f"the process ended with {p.exitcode}"
    assert out.get(timeout=WAIT) == []
