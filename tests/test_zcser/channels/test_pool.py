"""Many senders into one receiver (`Receiver(name, senders=N)`): every message of every sender
arrives, in order per sender, zero-copy; stalled, closed and killed senders; places reused;
shared memory only for senders in use; the end of the stream."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest
from fixtures.foreign import LOCK_DIR, decoy, survived

import zcser
from zcser import errors

MIB = 1 << 20
WAIT = 30.0
SIZES = (0, 10, 3_000, 70_000, 300_000)  # in band, out of band, small and large frames


def _payload(sender: int, i: int) -> np.ndarray:
    n = SIZES[(sender + i) % len(SIZES)]
    return np.full(n, (sender * 31 + i) % 251, np.uint8)


def _produce(make: Any, sender: int, count: int) -> None:
    tx = make()
    for i in range(count):
        tx.send({"sender": sender, "i": i, "a": _payload(sender, i)})
    tx.close()


def _ring_ranges(rx: Any) -> list[tuple[int, int]]:
    """Where each place's ring is mapped in this process: (start, end) addresses."""
    out = []
    for ring in rx._pool.rings:
        core = ring._core
        out.append((core.addr, core.addr + len(core.mm)))
    return out


def _shm_bytes(name: str) -> int:
    """Bytes of shared memory really allocated to the channel's segments now."""
    total = 0
    for entry in os.scandir("/dev/shm"):
        if entry.name.startswith(name):
            total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_eight_senders_deliver_every_message_in_order_and_zero_copy(
    shm_name: str, method: str
) -> None:
    count = 400 if method == "fork" else 250
    make, rx = zcser.channel(shm_name, capacity=4 * MIB, senders=8)
    ctx = mp.get_context(method)
    with rx:
        procs = [ctx.Process(target=_produce, args=(make, k, count)) for k in range(8)]
        for p in procs:
            p.start()
        ranges = _ring_ranges(rx)
        expected = dict.fromkeys(range(8), 0)
        zero_copy = 0
        while True:
            try:
                msg = rx.recv_message(timeout=WAIT)
            except errors.Closed:
                break
            with msg:
                obj = msg.value
                k, i = obj["sender"], obj["i"]
                assert i == expected[k], f"sender {k}: message {i} after {expected[k] - 1}"
                expected[k] += 1
                want = _payload(k, i)
                assert obj["a"].shape == want.shape and (obj["a"] == want).all()
                if want.nbytes >= zcser.DEFAULT_THRESHOLD:
                    address = obj["a"].__array_interface__["data"][0]
                    start, end = ranges[msg.sender]
                    assert start <= address < end, "a large array was copied, not mapped"
                    assert not obj["a"].flags.writeable
                    zero_copy += 1
                del obj
        for p in procs:
            p.join(WAIT)
            assert p.exitcode == 0
        assert expected == dict.fromkeys(range(8), count)
        assert zero_copy > 0
        st = rx.stats()
        assert (st.senders, st.senders_closed, st.senders_lost) == (8, 8, 0)


def _fill_then_wait(make: Any, sender: int, count: int, filled: Any, go: Any) -> None:
    tx = make()
    for i in range(count):
        tx.send((sender, i))
    filled.put(sender)
    go.wait(WAIT)
    tx.close()


def test_busy_senders_take_turns(shm_name: str) -> None:
    """With every sender's ring holding messages, recv takes one from each in turn."""
    make, rx = zcser.channel(shm_name, capacity=MIB, senders=4)
    ctx = mp.get_context("fork")
    filled, go = ctx.Queue(), ctx.Event()
    with rx:
        procs = [
            ctx.Process(target=_fill_then_wait, args=(make, k, 300, filled, go)) for k in range(4)
        ]
        for p in procs:
            p.start()
        for _ in range(4):
            filled.get(timeout=WAIT)
        counts = dict.fromkeys(range(4), 0)
        for _ in range(800):
            sender, _i = rx.recv(timeout=WAIT)
            counts[sender] += 1
        assert all(abs(c - 200) <= 1 for c in counts.values()), counts
        go.set()
        rest = list(rx)
        assert len(rest) == 4 * 300 - 800
        for p in procs:
            p.join(WAIT)


def test_a_sender_joining_a_busy_receiver_gets_its_turn_within_look_every_reads(
    shm_name: str,
) -> None:
    """While another sender keeps the receiver busy (a frame always waiting, so the reader's
    usual case never looks for new senders), a sender that joins is still found within
    LOOK_EVERY reads, and the busy sender's messages stay in order."""
    from transports.zerobuffer.pool import LOOK_EVERY

    with zcser.Receiver(shm_name, capacity=4 * MIB, senders=2) as rx:
        busy = zcser.Sender(shm_name, timeout=WAIT)
        backlog = 4 * LOOK_EVERY
        for i in range(backlog):
            busy.send(("busy", i))
        for i in range(10):  # the reader is under way: runs taken, the turn moving
            assert rx.recv(timeout=WAIT) == ("busy", i)
        late = zcser.Sender(shm_name, timeout=WAIT)
        late.send(("late", 0))
        reads, expected = 0, 10
        while True:
            who, i = rx.recv(timeout=WAIT)
            reads += 1
            if who == "late":
                break
            assert i == expected
            expected += 1
        assert reads <= LOOK_EVERY + 2, reads  # not after the whole backlog
        assert expected < backlog
        busy.close()
        late.close()
        assert [i for _who, i in rx] == list(range(expected, backlog))


def _stall(make: Any, started: Any, go: Any) -> None:
    tx = make()
    tx.send(("stalled", 0))
    started.set()
    go.wait(WAIT)  # connected, sends nothing more until told
    tx.send(("stalled", 1))
    tx.close()


def test_a_stalled_sender_never_delays_the_others(shm_name: str) -> None:
    make, rx = zcser.channel(shm_name, capacity=MIB, senders=3)
    ctx = mp.get_context("fork")
    started, go = ctx.Event(), ctx.Event()
    with rx:
        stalled = ctx.Process(target=_stall, args=(make, started, go))
        stalled.start()
        assert started.wait(WAIT)
        busy = [ctx.Process(target=_produce, args=(make, k, 200)) for k in (1, 2)]
        for p in busy:
            p.start()
        seen = {1: 0, 2: 0}
        got_stalled = []
        while seen != {1: 200, 2: 200}:
            obj = rx.recv(timeout=WAIT)  # the stalled sender's silence blocks nothing
            if isinstance(obj, tuple):
                got_stalled.append(obj)
            else:
                seen[obj["sender"]] += 1
        go.set()
        got_stalled += list(rx)
        assert got_stalled == [("stalled", 0), ("stalled", 1)]
        for p in [stalled, *busy]:
            p.join(WAIT)


def _send_then_die(make: Any, count: int) -> None:
    tx = make()
    for i in range(count):
        tx.send({"sender": 9, "i": i, "a": np.full(50_000, i % 251, np.uint8)})
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_sender_is_delivered_counted_and_the_stream_goes_on(shm_name: str) -> None:
    make, rx = zcser.channel(shm_name, capacity=4 * MIB, senders=3)
    ctx = mp.get_context("fork")
    with rx:
        doomed = ctx.Process(target=_send_then_die, args=(make, 30))
        doomed.start()
        busy = [ctx.Process(target=_produce, args=(make, k, 150)) for k in (0, 1)]
        for p in busy:
            p.start()
        got: dict[int, list[int]] = {0: [], 1: [], 9: []}
        for obj in rx:  # ends after two closes and one death, with no error
            got[obj["sender"]].append(obj["i"])
        assert got == {0: list(range(150)), 1: list(range(150)), 9: list(range(30))}
        doomed.join(WAIT)
        assert doomed.exitcode == -signal.SIGKILL
        st = rx.stats()
        assert (st.senders_closed, st.senders_lost) == (2, 1)
        for p in busy:
            p.join(WAIT)


def _hold(make: Any, ready: Any, go: Any) -> None:
    tx = make()
    ready.set()
    go.wait(WAIT)
    tx.close()


def _one_message_then(make: Any, tag: str, die: bool) -> None:
    tx = make()
    tx.send(tag)
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    tx.close()


def test_a_place_is_reused_after_close_and_after_kill(shm_name: str) -> None:
    rx = zcser.Receiver(shm_name, capacity=MIB, senders=2)
    make = zcser.SenderFactory(shm_name)
    ctx = mp.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()
    with rx:
        holder = ctx.Process(target=_hold, args=(make, ready, go))
        holder.start()
        assert ready.wait(WAIT)  # one place held all along: the others must reuse the second
        places = []
        for tag, die in (("first", False), ("second", True), ("third", False)):
            p = ctx.Process(target=_one_message_then, args=(make, tag, die))
            p.start()
            msg = rx.recv_message(timeout=WAIT)
            assert msg.value == tag
            places.append(msg.sender)
            msg.release()
            p.join(WAIT)
        assert len(set(places)) == 1
        go.set()
        holder.join(WAIT)
        with pytest.raises(errors.Closed):
            while True:
                rx.recv(timeout=WAIT)
        st = rx.stats()
        assert st.senders_lost == 1 and st.senders_closed == 3


def test_shared_memory_is_taken_only_for_connected_senders(shm_name: str) -> None:
    capacity = 16 * MIB
    with zcser.Receiver(shm_name, capacity=capacity, senders=64) as rx:
        assert _shm_bytes(shm_name) < 2 * MIB  # 64 rings of 16 MiB, none reserved yet
        with zcser.Sender(shm_name) as tx:
            assert _shm_bytes(shm_name) >= capacity  # its ring, reserved when it connected
            tx.send(np.ones(MIB, np.uint8))
        assert (rx.recv(timeout=WAIT) == 1).all()
        with pytest.raises(errors.Timeout):
            rx.recv(timeout=0.2)  # reads the sender's leaving; its pages go back
        assert _shm_bytes(shm_name) < 2 * MIB


def test_every_place_taken_waits_then_names_the_limit(shm_name: str) -> None:
    with (
        zcser.Receiver(shm_name, capacity=MIB, senders=2),
        zcser.Sender(shm_name),
        zcser.Sender(shm_name),
        pytest.raises(errors.ChannelError, match="senders=2"),
    ):
        zcser.Sender(shm_name, timeout=0.2)


def test_a_waiting_sender_connects_once_a_place_is_freed(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB, senders=2) as rx:
        first, other = zcser.Sender(shm_name), zcser.Sender(shm_name)
        first.send("a")
        closer = threading.Timer(0.3, first.close)
        closer.start()
        with zcser.Sender(shm_name, timeout=WAIT) as late:  # waits for first's place
            late.send("b")
        closer.join()
        other.close()
        assert sorted(rx) == ["a", "b"]


def _late(make: Any, tag: int, delay_event: Any) -> None:
    if delay_event is not None:
        delay_event.wait(WAIT)
    tx = make()
    tx.send(tag)
    tx.close()


def test_the_stream_ends_after_n_closes_even_if_one_finished_before_another_connected(
    shm_name: str,
) -> None:
    make, rx = zcser.channel(shm_name, capacity=MIB, senders=3)
    ctx = mp.get_context("fork")
    with rx:
        first = ctx.Process(target=_late, args=(make, 0, None))
        first.start()
        first.join(WAIT)  # sent and closed before anyone else connected
        gate = ctx.Event()
        later = [ctx.Process(target=_late, args=(make, k, gate)) for k in (1, 2)]
        for p in later:
            p.start()
        gate.set()
        assert sorted(rx) == [0, 1, 2]
        for p in later:
            p.join(WAIT)


def test_a_wrong_senders_value_is_refused(shm_name: str) -> None:
    for bad in (0, 65, "8", True):
        with pytest.raises(errors.UsageError, match="senders"):
            zcser.Receiver(shm_name, senders=bad)


def _idle_cpu(name: str, out: Any) -> None:
    rx = zcser.Receiver(name, capacity=MIB, senders=4)
    out.put("ready")
    start = time.process_time()
    with pytest.raises(errors.Timeout):
        rx.recv(timeout=1.5)
    out.put(time.process_time() - start)
    rx.close()


def test_an_idle_receiver_uses_no_cpu(shm_name: str) -> None:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_idle_cpu, args=(shm_name, out))
    p.start()
    assert out.get(timeout=WAIT) == "ready"
    cpu = out.get(timeout=WAIT)
    p.join(WAIT)
    assert cpu < 0.05, f"a receiver waiting 1.5 s used {cpu:.3f} s of CPU"


_SHORT_SHM = """
import zcser
rx = zcser.Receiver("zcpoolfull", capacity=24 << 20, senders=8)   # 8 x 24 MiB on 64 MiB
a, b = zcser.Sender("zcpoolfull"), zcser.Sender("zcpoolfull")     # 48 MiB reserved now
try:
    zcser.Sender("zcpoolfull")                                    # a third does not fit
except zcser.errors.ShmFull as exc:
    print("ShmFull:", exc)
a.close(); b.close(); rx.close()
"""


def test_a_sender_whose_ring_does_not_fit_gets_shm_full(tmp_path: Any) -> None:
    """Shared memory is reserved when a sender connects: on a 64 MiB /dev/shm (Docker's
    default), senders=8 rings of 24 MiB cost nothing until senders come; the third that does
    not fit gets ShmFull with the numbers and the fixes."""
    from fixtures.procs import namespaces_work

    if not namespaces_work():
        pytest.skip("needs root and unshare -m for a 64 MiB /dev/shm")
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" -c "$1"',
         sys.executable, _SHORT_SHM],
        capture_output=True, text=True, timeout=120, cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo), "ZEROBUFFER_LOCK_DIR": str(locks)},
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ShmFull:" in done.stdout, done.stdout
    assert "capacity" in done.stdout and "shm-size" in done.stdout


def _produce_slowly(make: Any, sender: int, count: int) -> None:
    tx = make()
    for i in range(count):
        tx.send({"sender": sender, "i": i, "a": _payload(sender, i)})
        time.sleep(0.01)
    tx.close()


def test_a_sender_leaving_keeps_no_received_message_pinned(shm_name: str) -> None:
    """A departure noticed inside recv_message must not leave a reference cycle that keeps the
    message's frame pinned until a garbage collection (msg.release() would then refuse)."""
    import gc

    make, rx = zcser.channel(shm_name, capacity=4 * MIB, senders=2)
    ctx = mp.get_context("fork")
    gc_was = gc.isenabled()
    gc.disable()
    try:
        with rx:
            procs = [
                ctx.Process(target=_produce, args=(make, 0, 2)),  # leaves early
                ctx.Process(target=_produce_slowly, args=(make, 1, 40)),  # goes on after
            ]
            for p in procs:
                p.start()
            while True:
                try:
                    msg = rx.recv_message(timeout=WAIT)
                except errors.Closed:
                    break
                with msg:  # raises BufferError if anything still pins the frame
                    value = msg.value
                    assert value["a"].shape == _payload(value["sender"], value["i"]).shape
                    del value
            for p in procs:
                p.join(WAIT)
    finally:
        if gc_was:
            gc.enable()


def test_a_sender_waiting_for_a_place_says_when_the_receiver_closed(shm_name: str) -> None:
    rx = zcser.Receiver(shm_name, capacity=MIB, senders=1)
    holder = zcser.Sender(shm_name)
    closer = threading.Timer(0.3, rx.close)
    closer.start()
    try:
        with pytest.raises(errors.ChannelError, match="Receiver closed while this Sender waited"):
            zcser.Sender(shm_name, timeout=1.0)
    finally:
        closer.join()
        holder.close()


def _own_a_pool(name: str, ready: Any) -> None:
    zcser.Receiver(name, capacity=MIB, senders=2)
    ready.set()
    signal.pause()


def test_a_killed_receivers_pool_is_listed_stale_and_collected(shm_name: str) -> None:
    from transports import admin

    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_own_a_pool, args=(shm_name, ready))
    p.start()
    assert ready.wait(WAIT)
    os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
    p.join(WAIT)
    states = {n: admin.inspect_buffer(n).state for n in (f"{shm_name}--pool", f"{shm_name}--0")}
    assert states == {f"{shm_name}--pool": "stale", f"{shm_name}--0": "stale"}
    with zcser.Receiver(shm_name, capacity=MIB, senders=2):  # replaces the dead one's names
        pass


def test_closing_a_shared_sender_fails_every_waiting_send(shm_name: str) -> None:
    """Several threads blocked sending into a full ring: close() makes each raise Closed."""
    with zcser.Receiver(shm_name, capacity=MIB, senders=4):
        tx = zcser.Sender(shm_name)
        chunk = np.ones(200_000, np.uint8)
        with pytest.raises(errors.BufferFull):
            while True:
                tx.send(chunk, timeout=0)
        errors_seen: list[str] = []

        def blocked() -> None:
            try:
                tx.send(chunk)
            except errors.ZcserError as exc:
                errors_seen.append(type(exc).__name__)

        threads = [threading.Thread(target=blocked) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.2)  # let them block (not a bound on anything)
        tx.close(timeout=0)
        for t in threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in threads)
        assert errors_seen == ["Closed"] * 3


def test_ctrl_c_while_connecting_never_keeps_a_place(shm_name: str) -> None:
    """A KeyboardInterrupt landing anywhere in Sender(name) gives the place back."""
    import random

    interrupts = 0
    with zcser.Receiver(shm_name, capacity=MIB, senders=2) as rx:
        rng = random.Random(7)
        for _ in range(60):
            timer = threading.Timer(rng.uniform(0, 0.003), signal.raise_signal, (signal.SIGINT,))
            tx = None
            try:
                timer.start()  # may fire before start() returns
                tx = zcser.Sender(shm_name, timeout=WAIT)
                timer.join()  # a signal after Sender() returned lands here, not past the try
                time.sleep(0)
            except KeyboardInterrupt:
                interrupts += 1
                timer.join()
            if tx is not None:
                tx.close()
        assert [rx._pool.owner(i) for i in range(2)] == [0, 0]
        with zcser.Sender(shm_name, timeout=WAIT) as a, zcser.Sender(shm_name, timeout=WAIT) as b:
            a.send(1)
            b.send(2)
    assert interrupts > 0


# --- control words no writer writes ----------------------------------------------------------------


def _poke_control(name: str, offset: int, value: int) -> None:
    """Write a u64 into pool NAME's control segment, as a hostile or broken process would."""
    import mmap
    import struct

    fd = os.open(f"/dev/shm/{name}--pool", os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as mm:
            struct.pack_into("<Q", mm, offset, value)
    finally:
        os.close(fd)


def _send_tagged(make: Any, tag: str, count: int) -> None:
    with make() as tx:
        for i in range(count):
            tx.send((tag, i))


def test_a_joins_word_no_writer_writes_hides_no_sender_and_miscounts_no_end(
    shm_name: str,
) -> None:
    """joins set to 2**64-1: the first sender's join wraps it to the value the receiver saw
    last. The receiver still finds that sender (it looks after every sleep whatever joins
    says), counts the word as an anomaly, and ends the stream after both senders closed."""
    from transports.zerobuffer import pool as tpool

    make, rx = zcser.channel(shm_name, capacity=MIB, senders=2)
    ctx = mp.get_context("fork")
    with rx:
        _poke_control(shm_name, tpool._OFF_JOINS, (1 << 64) - 1)
        first = ctx.Process(target=_send_tagged, args=(make, "a", 3))
        first.start()
        first.join(WAIT)
        assert rx.recv(timeout=WAIT) == ("a", 0)
        second = ctx.Process(target=_send_tagged, args=(make, "b", 3))
        second.start()
        rest = list(rx)  # until both senders closed
        second.join(WAIT)
        assert sorted([("a", 0), *rest]) == [(t, i) for t in "ab" for i in range(3)]
        _poke_control(shm_name, tpool._OFF_JOINS, 1 << 40)  # more joins than places taken
        zcser.wait([rx], timeout=0)
        assert rx._pool.anomalies == 1


def test_a_generation_no_writer_writes_is_a_corrupt_stream_not_a_hang(shm_name: str) -> None:
    from transports.zerobuffer import pool as tpool

    with zcser.Receiver(shm_name, capacity=MIB, senders=2) as rx:
        _poke_control(shm_name, tpool._owner_at(1) + 8, (1 << 64) - 1)
        with pytest.raises(errors.CorruptData, match="generation of place 1"):
            rx.recv(timeout=WAIT)
        with pytest.raises(errors.CorruptData, match="generation of place 1"):
            zcser.wait([rx], timeout=WAIT)


# --- bells replaced by symlinks ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_bell_that_is_a_symlink_is_refused_and_its_target_left_alone(
    shm_name: str, kind: str
) -> None:
    """At creation: a symlink where place 1's bell goes is a ChannelError naming it; nothing of
    the channel is left, and what the link points at is untouched."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    target = decoy(kind, shm_name)
    link = os.path.join(LOCK_DIR, f"{shm_name}--1.bell")
    os.symlink(target, link)
    try:
        with pytest.raises(errors.ChannelError, match="not a bell"):
            zcser.Receiver(shm_name, capacity=MIB, senders=2)
        assert os.path.islink(link) and survived(target, kind)
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(shm_name)]
    finally:
        os.unlink(link)
        os.unlink(target)


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_bell_replaced_by_a_symlink_while_in_use_is_a_channel_error(
    shm_name: str, kind: str
) -> None:
    """During the stream: the bells swapped for symlinks, the sender leaves (its bell hangs
    up): the receiver's recv raises a ChannelError saying the bell was replaced (it never
    follows the link), and the target survives."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    target = decoy(kind, shm_name)
    links = [os.path.join(LOCK_DIR, f"{shm_name}--{i}.bell") for i in range(2)]
    try:
        with zcser.Receiver(shm_name, capacity=MIB, senders=2) as rx:
            tx = zcser.Sender(shm_name)
            tx.send("before")
            assert rx.recv(timeout=WAIT) == "before"
            for link in links:
                os.unlink(link)
                os.symlink(target, link)
            tx.close()
            with pytest.raises(errors.ChannelError, match="replaced"):
                rx.recv(timeout=WAIT)
        assert all(os.path.islink(link) for link in links) and survived(target, kind)
    finally:
        for link in links:
            if os.path.lexists(link):
                os.unlink(link)
        os.unlink(target)
