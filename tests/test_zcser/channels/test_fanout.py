"""zcser.Publisher / zcser.Subscriber over shared memory, with real subscriber processes:
content and zero-copy in every subscriber, the three policies under a slow subscriber, pins
beyond a subscriber's share, late join, and the end of the stream."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import threading
import time
import zlib
from typing import Any

import numpy as np
import pytest
from conftest import unique_name
from fixtures.foreign import LOCK_DIR, decoy, survived

import zcser
from zcser import errors

CTX = mp.get_context("fork")
SIZES = [0, 100, 40_000, 1 << 20, 3 << 20]  # float32 elements: in band, small, large


def make(i: int) -> dict[str, Any]:
    n = SIZES[i % len(SIZES)]
    arr = (np.arange(n, dtype=np.float32) + i) if n else np.zeros(0, np.float32)
    return {"i": i, "tag": f"m{i}", "arr": arr}


def check(obj: dict[str, Any], sub: Any) -> tuple[int, int, bool]:
    """(index, crc of the array, zero-copy inside this subscriber's mapping)."""
    i = obj["i"]
    arr = obj["arr"]
    assert obj["tag"] == f"m{i}"
    n = SIZES[i % len(SIZES)]
    assert arr.shape == (n,)
    if n:
        assert arr[0] == i and arr[-1] == n - 1 + i
    lo = sub._r._addr
    inside = n * 4 >= sub.codec.threshold and lo <= arr.ctypes.data < lo + len(sub._r._mm)
    if n * 4 >= sub.codec.threshold:
        assert not arr.flags.writeable
    return i, zlib.crc32(arr.tobytes()), inside


def subscriber(q: Any, index: int, name: str, policy: str, delay: float, keep: bool) -> None:
    sub = zcser.Subscriber(name, policy=policy, timeout=10)
    q.put(("ready", None))
    seen: list[tuple[int, int, bool]] = []
    missed = 0
    kept = []
    try:
        while True:
            try:
                msg = sub.recv_message(timeout=20)
            except errors.Closed:
                break
            missed += msg.missed
            seen.append(check(msg.value, sub))
            if keep:
                kept.append(msg.value)
            if delay:
                time.sleep(delay)
        for obj in kept:  # nothing a live view can see was overwritten
            check(obj, sub)
        q.put(("done", (index, seen, missed, sub.stats())))
    except BaseException as exc:
        q.put(("error", repr(exc)))
        raise


def start_subs(name: str, specs: list[tuple[str, float, bool]]) -> tuple[list[Any], Any]:
    q = CTX.Queue()
    procs = [
        CTX.Process(target=subscriber, args=(q, k, name, policy, delay, keep), daemon=True)
        for k, (policy, delay, keep) in enumerate(specs)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        kind, _ = q.get(timeout=30)
        assert kind == "ready"
    return procs, q


def results(procs: list[Any], q: Any) -> list[Any]:
    out = []
    for _ in procs:
        kind, value = q.get(timeout=60)
        assert kind == "done", value
        out.append(value)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return [value[1:] for value in sorted(out, key=lambda v: v[0])]  # in the order started


@pytest.mark.parametrize("count", [1, 2, 4])
def test_every_subscriber_gets_every_message_zero_copy(count: int) -> None:
    name = unique_name("fo")
    n = 40
    # 128 MiB: the largest message (12 MiB) stays under an eighth of the ring, so the previous
    # message held while the next is received never puts a subscriber over its pin limit
    with zcser.Publisher(name, capacity=128 << 20, subscribers=4) as pub:
        procs, q = start_subs(name, [("block", 0.0, False)] * count)
        for i in range(n):
            pub.send(make(i), timeout=30)
        stats = pub.stats()
        assert stats.messages == n and stats.connected == count
    expected = [(i, zlib.crc32(make(i)["arr"].tobytes())) for i in range(n)]
    for seen, missed, st in results(procs, q):
        assert [(i, crc) for i, crc, _ in seen] == expected
        assert missed == 0 and st.missed == 0
        big = [inside for i, _, inside in seen if SIZES[i % len(SIZES)] * 4 >= 16384]
        assert big and all(big)  # zero-copy: every large array lies in the shared segment


def recv_worker(q: Any, name: str) -> None:
    """recv() (the small-message path: runs of small messages taken together) to the end."""
    sub = zcser.Subscriber(name, timeout=10)
    q.put(("ready", None))
    seen = []
    try:
        for obj in sub:
            seen.append(check(obj, sub)[:2] if "arr" in obj else (obj["i"], obj["tag"]))
        q.put(("done", (0, seen, sub.stats().missed, sub.stats())))
    except BaseException as exc:
        q.put(("error", repr(exc)))
        raise


@pytest.mark.parametrize("count", [1, 2, 4])
def test_small_messages_reach_every_subscriber_in_order_with_recv(count: int) -> None:
    name = unique_name("fo")
    n = 3000
    small = [{"i": i, "tag": f"s{i}", "x": 1.5 * i} for i in range(n)]
    with zcser.Publisher(name, capacity=4 << 20, subscribers=4) as pub:  # 160 KB arrays too
        q = CTX.Queue()
        procs = [CTX.Process(target=recv_worker, args=(q, name), daemon=True) for _ in range(count)]
        for p in procs:
            p.start()
        for _ in procs:
            assert q.get(timeout=30)[0] == "ready"
        for i in range(n):
            pub.send(make(i) if i % 500 == 252 else small[i], timeout=30)
    expected = [
        (i, zlib.crc32(make(i)["arr"].tobytes())) if i % 500 == 252 else (i, f"s{i}")
        for i in range(n)
    ]
    for seen, missed, _ in results(procs, q):
        assert seen == expected and missed == 0


def test_empty_is_written_in_place_and_read_in_place() -> None:
    name = unique_name("fo")
    with zcser.Publisher(name, capacity=64 << 20, subscribers=2) as pub:
        procs, q = start_subs(name, [("block", 0.0, False)] * 2)
        for i in range(10):
            pub.send(_big(i))
        assert pub.stats().zero_copy == 0  # ordinary arrays: copied once
        a = pub.empty((1 << 20,), np.float32)
        a[:] = np.arange(1 << 20, dtype=np.float32) + 53
        pub.send({"i": 53, "tag": "m53", "arr": a})
        assert pub.stats().zero_copy == 1
        assert not a.flags.writeable
    for seen, _, st in results(procs, q):
        assert [i for i, _, _ in seen][-1] == 53
        assert all(inside for _, _, inside in seen), (seen, st)


def test_block_policy_is_lossless_with_a_slow_subscriber() -> None:
    name = unique_name("fo")
    n = 60
    with zcser.Publisher(name, capacity=4 << 20, subscribers=2) as pub:
        procs, q = start_subs(name, [("block", 0.01, False), ("block", 0.0, False)])
        for i in range(n):
            pub.send(_mid(i), timeout=30)
    for seen, missed, _ in results(procs, q):
        assert [i for i, _, _ in seen] == [i * len(SIZES) + 2 for i in range(n)]
        assert missed == 0


def _big(i: int) -> dict[str, Any]:
    """Message i of a stream of 4 MiB arrays (checked by check())."""
    j = i * len(SIZES) + 3
    return {"i": j, "tag": f"m{j}", "arr": np.arange(1 << 20, dtype=np.float32) + j}


def _mid(i: int) -> dict[str, Any]:
    """Message i of a stream of 160 KB arrays (checked by check())."""
    j = i * len(SIZES) + 2
    return {"i": j, "tag": f"m{j}", "arr": np.arange(40_000, dtype=np.float32) + j}


def test_drop_policy_misses_messages_and_nobody_waits_for_it() -> None:
    name = unique_name("fo")
    n = 80
    with zcser.Publisher(name, capacity=4 << 20, subscribers=2) as pub:
        procs, q = start_subs(name, [("drop", 0.02, False), ("block", 0.0, False)])
        for i in range(n):
            pub.send(_mid(i), timeout=30)
    (slow, slow_missed, slow_stats), (fast, fast_missed, _) = results(procs, q)
    assert [i for i, _, _ in fast] == [i * len(SIZES) + 2 for i in range(n)] and not fast_missed
    assert slow_missed > 0 and slow_stats.missed == slow_missed
    assert len(slow) + slow_missed == n  # every message either received or counted missed
    got = [i for i, _, _ in slow]
    assert got == sorted(got) and got[-1] == (n - 1) * len(SIZES) + 2


def latest_worker(q: Any, go: Any, name: str) -> None:
    sub = zcser.Subscriber(name, policy="latest", timeout=10)
    q.put(("ready", None))
    go.wait(30)
    msg = sub.recv_message(timeout=10)
    q.put(("first", (msg.value["i"], msg.missed)))
    del msg
    rest = [obj["i"] for obj in sub]
    q.put(("done", (rest, sub.stats().missed)))


def test_latest_policy_hands_the_newest_message() -> None:
    name = unique_name("fo")
    q = CTX.Queue()
    go = CTX.Event()
    with zcser.Publisher(name, capacity=4 << 20, subscribers=2) as pub:
        p = CTX.Process(target=latest_worker, args=(q, go, name), daemon=True)
        p.start()
        assert q.get(timeout=30)[0] == "ready"
        for i in range(30):
            pub.send({"i": i, "pad": bytes(1000)})
        go.set()
        assert q.get(timeout=30) == ("first", (29, 29))
        pub.send({"i": 30})
    assert q.get(timeout=30) == ("done", ([30], 29))
    p.join(30)


def test_pins_beyond_the_share_become_copies_and_take_nothing_from_others() -> None:
    name = unique_name("fo")
    n = 60  # 60 x 160 KB through a 4 MiB ring; the hoarder keeps every message
    with zcser.Publisher(name, capacity=4 << 20, subscribers=2) as pub:
        procs, q = start_subs(name, [("block", 0.0, True), ("block", 0.0, False)])
        for i in range(n):
            pub.send(_mid(i), timeout=30)
    (hoard, _, hoard_stats), (other, _, other_stats) = results(procs, q)
    assert len(hoard) == len(other) == n
    assert hoard_stats.copied > 0 and other_stats.copied == 0
    assert sum(inside for _, _, inside in hoard) == n - hoard_stats.copied


def late_worker(q: Any, name: str) -> None:
    sub = zcser.Subscriber(name, timeout=10)
    q.put(("ready", None))
    q.put(("done", [obj["i"] for obj in sub]))


def test_late_join_starts_at_the_next_message() -> None:
    name = unique_name("fo")
    q = CTX.Queue()
    with zcser.Publisher(name, capacity=1 << 20) as pub:
        for i in range(5):
            pub.send({"i": i})
        p = CTX.Process(target=late_worker, args=(q, name), daemon=True)
        p.start()
        assert q.get(timeout=30)[0] == "ready"
        for i in range(5, 10):
            pub.send({"i": i})
    assert q.get(timeout=30) == ("done", list(range(5, 10)))
    p.join(30)


def test_close_ends_iteration_and_late_subscribers_find_nothing() -> None:
    name = unique_name("fo")
    pub = zcser.Publisher(name, capacity=1 << 20)
    sub = zcser.Subscriber(name)
    pub.send({"i": 0})  # the subscriber starts at this one
    pub.send({"i": 1})
    pub.close()
    assert [o["i"] for o in sub] == [0, 1]
    with pytest.raises(errors.Closed):
        sub.recv(timeout=0)
    sub.close()
    with pytest.raises(errors.ChannelError):
        zcser.Subscriber(name, timeout=0)


def test_wait_and_arecv_wake_on_publish() -> None:
    name = unique_name("fo")
    with zcser.Publisher(name, capacity=1 << 20) as pub, zcser.Subscriber(name) as sub:
        pub.send({"i": -1})  # starts the subscriber
        assert sub.recv()["i"] == -1
        assert zcser.wait([sub], timeout=0) == []
        timer = threading.Timer(0.2, pub.send, args=({"i": 1},))
        timer.start()
        assert zcser.wait([sub], timeout=10) == [sub]
        assert sub.recv()["i"] == 1
        timer.join()

        async def main() -> Any:
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, pub.send, {"i": 2})
            return await sub.arecv(timeout=10)

        assert asyncio.run(main())["i"] == 2


def test_views_keep_their_memory_and_release_frees_the_slot() -> None:
    name = unique_name("fo")
    with zcser.Publisher(name, capacity=1 << 20) as pub, zcser.Subscriber(name) as sub:
        pub.send({"a": np.full(50_000, 7, np.float32)})
        msg = sub.recv_message()
        view = msg.value["a"]
        assert sub.stats().frames_pinned == 1
        with pytest.raises(BufferError):
            msg.release()
        for i in range(100):  # laps of the ring around the pinned message
            pub.send({"a": np.full(50_000, i, np.float32)}, timeout=10)
            assert sub.recv()["a"][0] == i
        assert (view == 7).all()
        assert pub.stats().subscribers[0].pinned_bytes > 0
        del view, msg
        assert sub.stats().frames_pinned == 0


def test_mismatched_codec_is_refused() -> None:
    name = unique_name("fo")

    class Point:
        def __init__(self) -> None:
            self.x = 1

    codec = zcser.Codec()
    codec.register(Point)
    with zcser.Publisher(name, capacity=1 << 20, codec=codec) as pub, zcser.Subscriber(name) as sub:
        pub.send({"i": 1})
        with pytest.raises(errors.IncompatibleStream):
            sub.recv(timeout=5)


def test_checksums_and_copy_work_as_on_channels() -> None:
    name = unique_name("fo")
    codec = zcser.Codec(checksum=True)
    with (
        zcser.Publisher(name, capacity=1 << 20, codec=codec) as pub,
        zcser.Subscriber(name, codec=codec) as sub,
    ):
        pub.send({"a": np.arange(10_000)})
        got = sub.recv(copy=True)
        assert got["a"].flags.writeable and got["a"].sum() == np.arange(10_000).sum()
        assert sub.stats().frames_pinned == 0


def test_arguments_are_checked() -> None:
    with pytest.raises(errors.UsageError):
        zcser.Publisher(unique_name("fo"), subscribers=0)
    with pytest.raises(errors.UsageError):
        zcser.Subscriber(unique_name("fo"), policy="sometimes")
    with pytest.raises(errors.UsageError):
        zcser.Publisher(unique_name("fo"), capacity=1 << 20, nonsense=1)
    name = unique_name("fo")
    with zcser.Publisher(name, capacity=1 << 16, subscribers=1) as pub:
        assert isinstance(pub, zcser.Publisher) and type(pub).__name__ == "ShmPublisher"
        with pytest.raises(errors.MessageTooLarge):
            pub.send(np.zeros(1 << 16, np.uint8))
        with zcser.Subscriber(name), pytest.raises(errors.ChannelError):
            zcser.Subscriber(name, timeout=0)  # one slot only


def slot_holder(q: Any, name: str, leave: Any) -> None:
    """Take the publisher's only slot, say so, and leave when told (or be killed)."""
    sub = zcser.Subscriber(name, timeout=10)
    q.put("holding")
    leave.poll(60)
    sub.close()


@pytest.mark.parametrize("how", ["close", "kill"])
def test_a_subscriber_waits_up_to_its_timeout_for_a_free_slot(how: str) -> None:
    name = unique_name("fo")
    with zcser.Publisher(name, capacity=1 << 20, subscribers=1) as pub:
        q = CTX.Queue()
        leave, tell = CTX.Pipe(duplex=False)
        holder = CTX.Process(target=slot_holder, args=(q, name, leave), daemon=True)
        holder.start()
        try:
            assert q.get(timeout=30) == "holding"
            with pytest.raises(errors.ChannelError, match=r"subscribers=1\b.*waited 0.2 s"):
                zcser.Subscriber(name, timeout=0.2)
            free = (lambda: tell.send("go")) if how == "close" else holder.kill
            timer = threading.Timer(0.3, free)
            timer.start()
            try:
                with zcser.Subscriber(name, timeout=30) as sub:  # waits for the slot
                    pub.send({"i": 1})
                    assert sub.recv(timeout=10) == {"i": 1}
                    assert pub.stats().connected == 1
            finally:
                timer.cancel()
        finally:
            if holder.is_alive():
                tell.send("go")
            holder.join(30)
        assert holder.exitcode == (0 if how == "close" else -9)


def test_close_from_another_thread_ends_a_waiting_recv_with_closed() -> None:
    """The recv waits in compiled code on the segment's words: close() must not unmap them
    under it (that was a SIGSEGV)."""
    name = unique_name("fo")
    with zcser.Publisher(name, capacity=1 << 20) as pub:
        sub = zcser.Subscriber(name)
        pub.send({"i": 0})
        assert sub.recv(timeout=10) == {"i": 0}
        got: list[BaseException] = []

        def waiter() -> None:
            try:
                sub.recv(timeout=None)
            except BaseException as exc:
                got.append(exc)

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)  # it sleeps on its bell by now
        sub.close()
        thread.join(10)
        assert not thread.is_alive()
        assert len(got) == 1 and isinstance(got[0], errors.Closed), got
        assert "subscriber" in str(got[0])
        assert pub.stats().connected == 0


def _use_in_child(q: Any, end: Any) -> None:
    try:
        if isinstance(end, zcser.Publisher):
            end.send({"i": 1})
        else:
            end.recv(timeout=0)
        q.put("no error")
    except errors.UsageError as exc:
        q.put(f"UsageError: {exc}")


def test_a_forked_child_cannot_use_its_parents_ends() -> None:
    name = unique_name("fo")
    with zcser.Publisher(name, capacity=1 << 20) as pub, zcser.Subscriber(name) as sub:
        for i in range(4):
            pub.send({"i": i})
        assert [sub.recv(timeout=5)["i"] for _ in range(2)] == [0, 1]
        assert len(sub._r.pending) == 2  # a run took the others: they wait in this process
        for end in (pub, sub):
            q = CTX.Queue()
            p = CTX.Process(target=_use_in_child, args=(q, end))
            p.start()
            said = q.get(timeout=30)
            p.join(30)
            assert said.startswith("UsageError") and "child" in said
        pub.send({"i": 4})  # the parent's ends still work
        assert [sub.recv(timeout=5)["i"] for _ in range(3)] == [2, 3, 4]


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_publisher_bell_that_is_a_symlink_is_refused_and_its_target_left_alone(
    kind: str,
) -> None:
    import os

    name = unique_name("f")
    os.makedirs(LOCK_DIR, exist_ok=True)
    target = decoy(kind, name)
    link = os.path.join(LOCK_DIR, f"{name}.fanout.pub.bell")
    os.symlink(target, link)
    try:
        with pytest.raises(errors.ChannelError, match="not a bell"):
            zcser.Publisher(name)
        assert os.path.islink(link) and survived(target, kind)
    finally:
        os.unlink(link)
        os.unlink(target)


def test_a_subscriber_closed_while_it_holds_a_view_leaves_no_bell_behind() -> None:
    """close() with a received message still alive defers freeing the slot to the view's
    release, but removes the subscriber's bell at once: a process that exits with the view
    alive leaves no FIFO in the lock directory."""
    import os

    name = unique_name("f")
    pub = zcser.Publisher(name, capacity=8 << 20, subscribers=2)
    sub = zcser.Subscriber(name, policy="drop")
    pub.send(np.zeros(50_000, np.uint8))
    msg = sub.recv_message(timeout=5)
    with pytest.raises(errors.Timeout):
        sub.recv_message(timeout=0.1)
    pub.close()
    sub.close()
    left = [f for f in os.listdir(LOCK_DIR) if f.startswith(name)]
    assert left == [], left
    assert msg.value[0] == 0
    msg.release()


def test_a_second_publisher_of_a_live_name_is_told_the_first_ones_pid() -> None:
    name = unique_name("fo")
    with (
        zcser.Publisher(name, capacity=1 << 20),
        pytest.raises(
            errors.ChannelError, match=rf"close that publisher first \(pid {os.getpid()}\)"
        ),
    ):
        zcser.Publisher(name, capacity=1 << 20)
