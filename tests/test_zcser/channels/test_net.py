"""zcser channels over ZeroMQ (zcser.channels.net) and codec.decode_parts: real processes, real sockets,
zero-copy proven by address."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import pickle
import signal
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
import zmq
from fixtures.procs import child

import zcser
from transports.zeromq import wire
from transports.zeromq.sockets import ZmqReader
from zcser import errors
from zcser.channels import NetReceiver, NetSender, stream_schema
from zcser.codec import layout as _message

WAIT = 30.0
MIB = 1 << 20
LOOPBACK = "tcp://127.0.0.1:0"


def families() -> dict[str, Any]:
    """One object per type family (deterministic, so both processes can rebuild it)."""
    rng = np.random.default_rng(7)
    structured = np.zeros(5000, dtype=[("a", "<i4"), ("b", "<f8")])
    structured["a"] = np.arange(5000)
    structured["b"] = np.arange(5000) / 3
    return {
        "float32": rng.standard_normal((300, 400)).astype(np.float32),
        "int16 F-order": np.asfortranarray(np.arange(60_000, dtype=np.int16).reshape(200, 300)),
        "structured": structured,
        "complex128": np.arange(10_000) * (1 + 2j),
        "small array": np.arange(10),
        "bytes": rng.bytes(MIB),
        "arrow table": pa.table(
            {"x": np.arange(50_000), "s": [str(i) for i in range(50_000)], "f": [1.5] * 50_000}
        ),
        "torch": torch.arange(40_000, dtype=torch.float64).reshape(200, 200),
        "nested": {"a": [1, {"b": np.ones(30_000)}, "c"], "t": (1.5, "x", None), "d": {}},
    }


def assert_same(got: Any, want: Any) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable
    elif isinstance(want, bytes):
        assert bytes(got) == want
    elif isinstance(want, pa.Table):
        assert got.equals(want)
    elif isinstance(want, torch.Tensor):
        assert torch.equal(got, want)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_same(a, b)
    else:
        assert got == want


def aligned_copy(data: Any, shift: int = 0) -> memoryview:
    """`data` copied to memory starting `shift` bytes past a 64-byte boundary."""
    raw = np.empty(memoryview(data).nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + shift
    out = raw[start : start + memoryview(data).nbytes]
    out[:] = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    return out.data


# --- codec.decode_parts ----------------------------------------------------------------------------


def parts(obj: Any, codec: zcser.Codec | None = None, shift: int = 0) -> tuple[Any, list[Any]]:
    plan = (codec or zcser.Codec()).plan(obj)
    head = plan.segments(0)[0][1]
    return bytes(head), [aligned_copy(b, shift) for b in plan.buffers]


def test_decode_parts_every_family_zero_copy_from_aligned_buffers() -> None:
    codec = zcser.Codec()
    obj = families()
    head, buffers = parts(obj)
    got = codec.decode_parts(head, buffers)
    assert_same(got, obj)
    arr = got["float32"]
    assert any(np.shares_memory(arr, np.frombuffer(b, np.uint8)) for b in buffers)
    column = got["arrow table"].column("x").chunks[0].buffers()[1]
    assert any(
        np.frombuffer(b, np.uint8).ctypes.data == column.address for b in buffers
    )  # the Arrow buffer is the received memory itself
    tensor = got["torch"]
    assert any(np.frombuffer(b, np.uint8).ctypes.data == tensor.data_ptr() for b in buffers)


def test_decode_parts_copies_misaligned_buffers_unless_allowed() -> None:
    codec = zcser.Codec()
    obj = {"a": np.arange(100_000, dtype=np.float64)}
    head, buffers = parts(obj, shift=8)
    copied = codec.decode_parts(head, buffers)["a"]
    assert copied.ctypes.data % 64 == 0 and not np.shares_memory(copied, np.asarray(buffers[0]))
    viewed = codec.decode_parts(head, buffers, align=8)["a"]
    assert np.shares_memory(viewed, np.asarray(buffers[0])) and not viewed.flags.writeable
    private = codec.decode_parts(head, buffers, copy=True)["a"]
    assert private.flags.writeable and not np.shares_memory(private, np.asarray(buffers[0]))


def test_decode_parts_keeps_owner_alive_through_views() -> None:
    class Owner:  # like the network receiver's lease: it holds the memory the views see
        def __init__(self, buffers: list[Any]) -> None:
            self.buffers = buffers

    head, buffers = parts({"a": np.ones(50_000)})
    owner = Owner(buffers)
    ref = weakref.ref(owner)
    arr = zcser.Codec().decode_parts(head, buffers, owner=owner)["a"]
    del owner, buffers
    gc.collect()
    assert ref() is not None and arr.sum() == 50_000
    del arr
    gc.collect()
    assert ref() is None


def _bad_parts(case: str) -> tuple[Any, list[Any]]:
    head, buffers = parts({"a": np.ones(10_000), "b": np.zeros(20_000)})
    if case == "missing buffer":
        return head, buffers[:1]
    if case == "extra buffer":
        return head, [*buffers, b"x" * 64]
    if case == "short buffer":
        return head, [buffers[0][:-8], buffers[1]]
    if case == "truncated head":
        return head[:-3], buffers
    if case == "trailing bytes":
        return head + b"\0", buffers
    if case == "bad magic":
        return b"XXXX" + head[4:], buffers
    if case == "huge length":
        table = bytearray(head)
        table[_message.TABLE_START + 8 : _message.TABLE_START + 16] = (2**63).to_bytes(8, "little")
        return bytes(table), buffers
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing buffer", "2 buffers but 1"),
        ("extra buffer", "2 buffers but 3"),
        ("short buffer", "buffer 0 has"),
        ("truncated head", "truncated"),
        ("trailing bytes", "truncated"),
        ("bad magic", "magic"),
        ("huge length", "outside the data area"),
    ],
)
def test_decode_parts_refuses_inconsistent_parts(case: str, words: str) -> None:
    head, buffers = _bad_parts(case)
    with pytest.raises(errors.CorruptMessage, match=words):
        zcser.Codec().decode_parts(head, buffers)


def test_decode_parts_checksums_cover_the_buffers() -> None:
    codec = zcser.Codec(checksum=True)
    head, buffers = parts({"a": np.ones(10_000)}, codec)
    np.asarray(buffers[0])[5] ^= 1
    with pytest.raises(errors.ChecksumMismatch, match="buffer 0"):
        codec.decode_parts(head, buffers)
    plain_head, plain = parts({"a": np.ones(10_000)})
    with pytest.raises(errors.CorruptMessage, match="requires checksums"):
        codec.decode_parts(plain_head, plain)


# --- dispatch --------------------------------------------------------------------------------------


def test_urls_dispatch_to_the_network_and_shm_prefix_to_shared_memory(shm_name: str) -> None:
    with zcser.Receiver(LOOPBACK) as rx:
        assert isinstance(rx, NetReceiver) and rx.name.startswith("tcp://127.0.0.1:")
        assert not rx.name.endswith(":0")
        with zcser.Sender(rx.name) as tx:
            assert isinstance(tx, NetSender)
            tx.send({"n": 1})
            assert rx.recv(timeout=WAIT) == {"n": 1}
    with zcser.Receiver(f"shm://{shm_name}", capacity=MIB) as shm_rx:
        assert type(shm_rx) is zcser.ShmReceiver and shm_rx.name == shm_name
        assert isinstance(shm_rx, zcser.Receiver)
        with zcser.Sender(f"shm://{shm_name}") as shm_tx:
            assert type(shm_tx) is zcser.ShmSender and isinstance(shm_tx, zcser.Sender)
            shm_tx.send([1, 2])
            assert shm_rx.recv(timeout=WAIT) == [1, 2]


def _factory_sender(queue: Any, make_tx: zcser.SenderFactory) -> None:
    with make_tx() as tx:
        tx.send({"a": np.arange(100_000)})
    queue.put("done")


def test_channel_factory_carries_the_bound_port_to_another_process() -> None:
    make_tx, rx = zcser.channel(LOOPBACK)
    with rx, child(_factory_sender, pickle.loads(pickle.dumps(make_tx))) as (_, queue):
        np.testing.assert_array_equal(rx.recv(timeout=WAIT)["a"], np.arange(100_000))
        assert queue.get(timeout=WAIT) == "done"
        with pytest.raises(errors.Closed):
            rx.recv(timeout=WAIT)


def test_receiver_cannot_be_pickled_and_options_are_checked() -> None:
    with zcser.Receiver(LOOPBACK) as rx, pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(rx)
    with zcser.Sender(LOOPBACK) as tx, pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(tx)
    with pytest.raises(errors.UsageError, match="min_align"):
        zcser.Receiver(LOOPBACK, min_align=3)
    with pytest.raises(errors.UsageError, match="pattern"):
        zcser.Receiver(LOOPBACK, pattern="push")
    with pytest.raises(errors.UsageError, match="ZeroMQ endpoint"):
        NetSender("udp://127.0.0.1:9")


def test_empty_is_an_aligned_array_and_refuses_what_shm_channels_refuse() -> None:
    with zcser.Receiver(LOOPBACK) as rx, zcser.Sender(rx.name) as tx:
        arr = tx.empty((3, 5000), np.complex64)
        assert arr.shape == (3, 5000) and arr.dtype == np.complex64
        assert arr.ctypes.data % _message.ALIGN == 0 and arr.flags.writeable
        arr[:] = 2 + 1j
        tx.send({"arr": arr})
        np.testing.assert_array_equal(rx.recv(timeout=WAIT)["arr"], np.full((3, 5000), 2 + 1j))
        for shape, dtype, words in [
            (-1, np.uint8, "sizes >= 0"),
            ((2, "x"), np.uint8, "shape of ints"),
            (4, object, "plain dtype"),
        ]:
            with pytest.raises(errors.UsageError, match=words):
                tx.empty(shape, dtype)


# --- between processes -------------------------------------------------------------------------------


def _send_families(queue: Any, url: str) -> None:
    with zcser.Sender(url) as tx:
        objects = families()
        for obj in objects.values():
            tx.send(obj, timeout=WAIT)
        tx.send(objects, timeout=WAIT)
        queue.put(dataclasses.asdict(tx.stats()))


@pytest.mark.parametrize("scheme", ["tcp", "ipc"])
def test_every_type_family_between_processes(scheme: str, tmp_path: Path) -> None:
    url = LOOPBACK if scheme == "tcp" else f"ipc://{tmp_path}/chan"
    want = families()
    with (
        zcser.Receiver(url, min_align=64) as rx,
        child(_send_families, rx.name, method="spawn") as (_, queue),
    ):
        for obj in want.values():
            got = rx.recv(timeout=WAIT)
            assert_same(got, obj)
        everything = rx.recv(timeout=WAIT)
        assert_same(everything, want)
        assert everything["float32"].ctypes.data % 64 == 0  # aligned copies when asked
        assert everything["torch"].data_ptr() % 64 == 0
        with pytest.raises(errors.Closed):
            rx.recv(timeout=WAIT)
        sent = queue.get(timeout=WAIT)
        stats = rx.stats()
    assert sent["messages"] == len(want) + 1 and sent["zero_copy"] > 0
    assert stats.messages == len(want) + 1 and stats.aligned_copies > 0 and stats.lost == 0


def _send_arrays(queue: Any, url: str, count: int, die: bool) -> None:
    tx = zcser.Sender(url)
    for i in range(count):
        tx.send({"i": i, "a": np.full(200_000, i, np.float64)}, timeout=WAIT)
    queue.put("sent")
    if die:
        queue.close()
        queue.join_thread()  # the word is out before the kill
        os.kill(os.getpid(), signal.SIGKILL)
    tx.close()


def test_receive_is_zero_copy_into_zeromq_frames_with_min_align_8() -> None:
    codec = zcser.Codec()
    with ZmqReader(LOOPBACK) as r, child(_send_arrays, r.url, 1, False) as (_, queue):
        rec = r.recv(WAIT)
        obj = codec.decode_parts(rec.head, rec.buffers, align=8)
        frame = np.frombuffer(rec.buffers[0], np.uint8)
        assert np.shares_memory(obj["a"], frame) and obj["a"].ctypes.data == frame.ctypes.data
        assert queue.get(timeout=WAIT) == "sent"
        assert r.recv(WAIT).end


def test_received_views_pin_their_frames_until_dropped() -> None:
    with (
        zcser.Receiver(LOOPBACK, min_align=8) as rx,
        child(_send_arrays, rx.name, 3, False) as (_, queue),
    ):
        first = rx.recv(timeout=WAIT)["a"]
        assert rx.stats().frames_pinned == 1 and rx.stats().aligned_copies == 0
        with rx.recv_message(timeout=WAIT) as msg:
            np.testing.assert_array_equal(msg.value["a"], np.full(200_000, 1.0))
        assert not msg.pinned
        held = rx.recv_message(timeout=WAIT)
        view = held.value["a"]
        with pytest.raises(BufferError, match="still in use"):
            held.release()
        assert held.pinned and not view.flags.writeable
        del view
        gc.collect()
        assert not held.pinned and rx.stats().frames_pinned == 1
        np.testing.assert_array_equal(first, np.zeros(200_000))
        del first
        gc.collect()
        assert rx.stats().frames_pinned == 0
        assert queue.get(timeout=WAIT) == "sent"


def test_copy_true_gives_private_writable_objects() -> None:
    with zcser.Receiver(LOOPBACK) as rx, child(_send_arrays, rx.name, 1, False) as (_, _q):
        got = rx.recv(timeout=WAIT, copy=True)["a"]
        assert got.flags.writeable and rx.stats().frames_pinned == 0
        got[0] = 5.0


def test_sender_killed_mid_stream_receiver_gets_every_message_then_writer_dead() -> None:
    with zcser.Receiver(LOOPBACK) as rx, child(_send_arrays, rx.name, 4, True) as (proc, q):
        assert q.get(timeout=WAIT) == "sent"
        proc.join(WAIT)
        assert proc.exitcode == -signal.SIGKILL
        assert [rx.recv(timeout=WAIT)["i"] for _ in range(4)] == [0, 1, 2, 3]
        with pytest.raises(errors.WriterDead, match="no writer"):
            rx.recv(timeout=WAIT)


def _receive_one_then_hang(queue: Any, url: str) -> None:
    rx = zcser.Receiver(url)
    queue.put(rx.name)
    rx.recv(timeout=WAIT)
    queue.put("got")
    signal.pause()


def test_receiver_killed_mid_stream_sender_raises_reader_dead() -> None:
    with (
        child(_receive_one_then_hang, LOOPBACK) as (proc, queue),
        zcser.Sender(queue.get(timeout=WAIT)) as tx,
    ):
        tx.send({"a": np.ones(100_000)}, timeout=WAIT)
        assert queue.get(timeout=WAIT) == "got"
        proc.kill()
        with pytest.raises(errors.ReaderDead, match="reader"):
            for _ in range(10_000):
                tx.send({"a": np.ones(100_000)}, timeout=WAIT)


def test_timeouts_without_a_peer() -> None:
    with zcser.Receiver(LOOPBACK) as rx:
        with pytest.raises(errors.Timeout, match="no message"):
            rx.recv(timeout=0.1)
        url = rx.name
    with zcser.Sender(url) as tx, pytest.raises(errors.Timeout, match="no reader connected"):
        tx.send({"x": 1}, timeout=0.1)
    tx.close()
    with pytest.raises(errors.Closed):
        tx.send({"x": 1})


# --- malformed input -------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int


def test_malformed_messages_raise_zcser_errors_and_the_stream_goes_on() -> None:
    good = json.dumps(stream_schema(zcser.Codec()), sort_keys=True).encode()
    other = zcser.Codec()
    other.register(Point)
    foreign = json.dumps(stream_schema(other), sort_keys=True).encode()
    head, buffers = parts({"a": np.ones(100_000)})
    big_head, big = parts({"a": np.ones(MIB // 8), "b": np.ones(MIB // 8)})  # 2 MiB in 2 frames
    with zcser.Receiver(LOOPBACK, capacity=2 * MIB) as rx:
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.connect(rx.name)
        try:

            def send(frames: list[Any]) -> None:
                raw.send_multipart(frames)

            env = wire.pack_envelope
            send([b"not a zcser message"])
            send([env(0, 1, 0, 2, len(good)) + good + head, buffers[0]])  # 1 frame short
            send([env(0, 1, 1, 1, len(good)) + good + head[:-5], buffers[0]])  # truncated
            send([env(0, 1, 2, 2, len(good)) + good + big_head, *big])  # over capacity // 2
            send([env(0, 2, 0, 1, len(foreign)) + foreign + head, buffers[0]])
            send([env(0, 3, 0, 1, 2) + b"{}" + head, buffers[0]])
            send([env(0, 1, 3, 1, len(good)) + good + head, buffers[0]])
            for cls, words in [
                (errors.CorruptStream, "envelope"),
                (errors.CorruptStream, "announces 2"),
                (errors.CorruptMessage, "truncated"),
                (errors.MessageTooLarge, "capacity >="),
                (errors.IncompatibleStream, "has not registered"),
                (errors.IncompatibleStream, "not a zcser stream"),
            ]:
                with pytest.raises(cls, match=words):
                    rx.recv(timeout=WAIT)
            np.testing.assert_array_equal(rx.recv(timeout=WAIT)["a"], np.ones(100_000))
            assert rx.stats().lost == 0
        finally:
            raw.close(linger=0)


def test_a_peer_sending_many_distinct_schemas_cannot_grow_the_receiver() -> None:
    """150 messages, each with its own accepted ~60 KB schema: the receiver keeps a bounded
    number of them (before: every one, without bound); an oversized schema is refused."""
    import tracemalloc

    schema = stream_schema(zcser.Codec())
    head, _ = parts({"n": 1})
    with zcser.Receiver(LOOPBACK, capacity=4 * MIB) as rx:
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.connect(rx.name)
        try:
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(150):
                meta = json.dumps({**schema, "pad": f"{i:08d}" + "x" * 60_000}).encode()
                raw.send_multipart([wire.pack_envelope(0, 1, i, 0, len(meta)) + meta + head])
                assert rx.recv(timeout=WAIT) == {"n": 1}
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            assert grown < 2 * MIB, grown
            huge = json.dumps({**schema, "pad": "x" * (80 << 10)}).encode()
            raw.send_multipart([wire.pack_envelope(0, 1, 150, 0, len(huge)) + huge + head])
            with pytest.raises(errors.IncompatibleStream, match="stream schema"):
                rx.recv(timeout=WAIT)
        finally:
            raw.close(linger=0)


def test_writer_with_a_different_codec_is_refused() -> None:
    codec = zcser.Codec()
    codec.register(Point)
    with zcser.Receiver(LOOPBACK) as rx, zcser.Sender(rx.name, codec) as tx:
        tx.send(Point(3), timeout=WAIT)
        with pytest.raises(errors.IncompatibleStream, match="Point"):
            rx.recv(timeout=WAIT)
    reader_codec = zcser.Codec()
    reader_codec.register(Point)
    with zcser.Receiver(LOOPBACK, codec=reader_codec) as rx, zcser.Sender(rx.name, codec) as tx:
        tx.send(Point(3), timeout=WAIT)
        assert rx.recv(timeout=WAIT) == Point(3)


# --- fan-out -----------------------------------------------------------------------------------------


def _subscribe(queue: Any, url: str) -> None:
    with zcser.Receiver(url, pattern="sub") as rx:
        got = rx.recv(timeout=WAIT)
        queue.put(("ready", got["i"]))
        while True:
            try:
                got = rx.recv(timeout=WAIT)
            except (errors.Closed, errors.WriterDead):
                break
            if got["i"] == -1:
                break
        queue.put(("done", float(got["a"][0]), rx.stats().lost))


def test_pub_sub_late_subscribers_get_the_schema_with_every_message() -> None:
    with (
        zcser.Sender(LOOPBACK, pattern="pub") as tx,
        child(_subscribe, tx.name) as (_, q1),
        child(_subscribe, tx.name) as (_, q2),
    ):
        ready, i = 0, 0
        while ready < 2:
            tx.send({"i": i, "a": np.full(50_000, 1.0)}, timeout=WAIT)
            i += 1
            for q in (q1, q2):
                if not q.empty():
                    assert q.get()[0] == "ready"
                    ready += 1
            time.sleep(0.01)
        done = []
        deadline = time.monotonic() + WAIT
        while len(done) < 2:  # a subscriber may miss some: that is the drop policy
            assert time.monotonic() < deadline, "subscribers did not finish"
            tx.send({"i": -1, "a": np.full(50_000, 2.0)}, timeout=WAIT)
            done += [q.get() for q in (q1, q2) if not q.empty()]
            time.sleep(0.01)
        assert [d[:2] for d in done] == [("done", 2.0)] * 2


# --- load-balanced pipeline ------------------------------------------------------------------------


def _worker(queue: Any, url: str) -> None:
    with zcser.Receiver(url, bind=False) as rx:
        got = []
        try:
            while True:
                got.append(rx.recv(timeout=WAIT)["i"])
        except errors.Closed:
            queue.put(got)


def test_push_to_a_pool_of_workers_each_gets_the_end_mark() -> None:
    with (
        zcser.Sender(LOOPBACK, bind=True) as tx,
        child(_worker, tx.name) as (_, q1),
        child(_worker, tx.name) as (_, q2),
    ):
        deadline = time.monotonic() + WAIT
        while tx.stats().peers < 2:
            assert time.monotonic() < deadline, "workers did not connect"
            time.sleep(0.01)
        for i in range(40):
            tx.send({"i": i, "a": np.full(20_000, float(i))}, timeout=WAIT)
        tx.close()
        first, second = q1.get(timeout=WAIT), q2.get(timeout=WAIT)
    assert sorted(first + second) == list(range(40)) and first and second


def test_a_socket_is_refused_in_a_forked_child_and_its_copies_left_alone() -> None:
    def use(queue: Any, rx: Any, tx: Any) -> None:
        try:
            rx.recv(timeout=0)
        except errors.UsageError as exc:
            queue.put(str(exc))
        tx.close()  # the child's copy: must not end the parent's stream
        del tx
        gc.collect()

    with (
        zcser.Receiver(LOOPBACK) as rx,
        zcser.Sender(rx.name) as tx,
        child(use, rx, tx) as (proc, queue),
    ):
        assert "created in process" in queue.get(timeout=WAIT)
        proc.join(WAIT)
        tx.send({"still": "open"}, timeout=WAIT)
        assert rx.recv(timeout=WAIT) == {"still": "open"}


def test_a_frame_over_the_limit_cuts_its_sender_off_without_allocating_it() -> None:
    with zcser.Receiver(LOOPBACK, capacity=MIB) as rx:
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.connect(rx.name)
        try:
            raw.send(bytes(2 * MIB))
            with pytest.raises(errors.WriterDead):
                rx.recv(timeout=WAIT)
            assert rx.stats().messages == 0
        finally:
            raw.close(linger=0)
        with zcser.Sender(rx.name) as tx:
            tx.send({"ok": True}, timeout=WAIT)
            assert rx.recv(timeout=WAIT) == {"ok": True}


def test_threads_sharing_network_ends_lose_and_duplicate_nothing() -> None:
    import threading

    threads, per_thread = 4, 200
    with zcser.Receiver(LOOPBACK) as rx, zcser.Sender(rx.name) as tx:
        got: list[tuple[int, int]] = []
        lock = threading.Lock()

        def produce(k: int) -> None:
            for i in range(per_thread):
                tx.send({"k": k, "i": i, "a": np.full(5000 + i, k, np.uint8)}, timeout=WAIT)

        def consume() -> None:
            for _ in range(threads * per_thread // 2):
                msg = rx.recv(timeout=WAIT)
                assert (np.asarray(msg["a"]) == msg["k"]).all()
                with lock:
                    got.append((msg["k"], msg["i"]))

        workers = [threading.Thread(target=produce, args=(k,)) for k in range(threads)]
        workers += [threading.Thread(target=consume) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        assert not any(w.is_alive() for w in workers)
    assert sorted(got) == [(k, i) for k in range(threads) for i in range(per_thread)]


# --- senders first, closing while another thread waits ---------------------------------------------


def _free_tcp_url() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def _send_numbered(queue: Any, url: str, k: int, count: int) -> None:
    with zcser.Sender(url) as tx:  # connects before the receiver binds: sends wait for it
        queue.put("started")
        for i in range(count):
            tx.send((k, i), timeout=WAIT)
    queue.put("closed")


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("scheme", ["tcp", "ipc"])
def test_senders_started_before_the_receiver_lose_nothing_and_keep_order(
    scheme: str, method: str, tmp_path: Path
) -> None:
    """20,000 small messages from 4 senders that connected before the receiver bound, each
    closing as soon as its last send returns: every message arrives, in each sender's order
    (a receiving socket with LINGER 0 dropped a closed sender's unread messages, and a sender
    hanging up while the receiver's queue was full lost what the kernel still held)."""
    import contextlib

    senders, per_sender = 4, 5000
    url = _free_tcp_url() if scheme == "tcp" else f"ipc://{tmp_path / 'first.ipc'}"
    with contextlib.ExitStack() as stack:
        kids = [
            stack.enter_context(child(_send_numbered, url, k, per_sender, method=method))
            for k in range(senders)
        ]
        for _, queue in kids:
            assert queue.get(timeout=WAIT) == "started"
        got: dict[int, list[int]] = {k: [] for k in range(senders)}
        with zcser.Receiver(url) as rx:
            received = 0
            deadline = time.monotonic() + 120
            while received < senders * per_sender and time.monotonic() < deadline:
                try:
                    k, i = rx.recv(timeout=WAIT)
                except (errors.Closed, errors.WriterDead):
                    time.sleep(0.01)  # the senders seen so far all closed; others still come
                    continue
                got[k].append(i)
                received += 1
            for _, queue in kids:
                assert queue.get(timeout=WAIT) == "closed"
    assert {k: len(v) for k, v in got.items()} == {k: per_sender for k in range(senders)}
    assert all(got[k] == list(range(per_sender)) for k in range(senders))


def _close_while_blocked(
    end: Any, blocked: Any, outcome: list[BaseException], call: str, **close: Any
) -> None:
    """Run `blocked` (a recv or send on `end` that waits) in a thread; once it holds the
    socket, close `end` from a third thread: both threads end, the blocked call raised Closed."""
    import threading

    worker = threading.Thread(target=blocked, daemon=True)
    worker.start()
    while not end._lock.locked():  # the call holds the socket now
        time.sleep(0.001)
    closer = threading.Thread(target=end.close, kwargs=close, daemon=True)
    closer.start()
    closer.join(WAIT)
    worker.join(WAIT)
    assert not closer.is_alive(), f"close() waited for the blocked {call}() forever"
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], errors.Closed), outcome
    assert end.closed


def test_close_from_another_thread_ends_a_blocked_recv_with_closed() -> None:

    rx = zcser.Receiver(LOOPBACK)
    outcome: list[BaseException] = []

    def receive() -> None:
        try:
            rx.recv()  # no sender yet: waits until one sends, or the receiver closes
        except BaseException as exc:
            outcome.append(exc)

    _close_while_blocked(rx, receive, outcome, "recv")
    with pytest.raises(errors.Closed):
        rx.recv(timeout=0)


def test_close_from_another_thread_ends_a_blocked_send_with_closed() -> None:

    # A short heartbeat: a receiver that reads nothing is never cut off for it.
    with zcser.Receiver(LOOPBACK, hwm=1, heartbeat=0.1) as rx:
        tx = zcser.Sender(rx.name, hwm=1, heartbeat=0.1)
        tx.send(0, timeout=WAIT)  # connected: later sends fill the queues the receiver never reads
        block = np.zeros(60_000, np.uint8)  # under the zero-copy threshold: queued, not tracked
        while True:
            try:
                tx.send(block, timeout=0.2)
            except errors.BufferFull:
                break
        outcome: list[BaseException] = []

        def send() -> None:
            try:
                tx.send(block)  # the receiver lives and reads nothing: waits for room
            except BaseException as exc:
                outcome.append(exc)

        _close_while_blocked(tx, send, outcome, "send", timeout=0.2)


# --- slow readers: pauses never cost messages, whatever the heartbeat -----------------------------

SLOW_COUNT = 120
PAUSE = 2.0
"""How long the slow readers below stop reading: generous against a heartbeat of 0.1 s (ZMTP
heartbeats, which zcser no longer uses, cut such a reader after 0.3 s)."""
PAD = np.zeros(60_000, np.uint8)  # under the zero-copy threshold: a send returns once queued


def _send_until_full_then_rest(queue: Any, url: str, count: int) -> None:
    """Message 0, then messages without waiting until the queues are full (the receiver's
    ZeroMQ has stopped reading the connection), then the rest, each waiting for room."""
    with zcser.Sender(url, hwm=2, heartbeat=0.1) as tx:
        tx.send({"i": 0, "pad": PAD}, timeout=WAIT)
        i = 1
        while True:
            try:
                tx.send({"i": i, "pad": PAD}, timeout=0)
            except errors.BufferFull:
                break
            i += 1
        queue.put("full")
        for j in range(i, count):
            tx.send({"i": j, "pad": PAD}, timeout=WAIT)
        tx.close(timeout=WAIT)
    queue.put("sent")


@pytest.mark.parametrize("scheme", ["tcp", "ipc"])
def test_a_receiver_that_stops_reading_loses_nothing_and_keeps_its_sender(
    scheme: str, tmp_path: Path
) -> None:
    url = LOOPBACK if scheme == "tcp" else f"ipc://{tmp_path}/slow"
    with (
        zcser.Receiver(url, hwm=2, heartbeat=0.1) as rx,
        child(_send_until_full_then_rest, rx.name, SLOW_COUNT) as (proc, queue),
    ):
        got = [rx.recv(timeout=WAIT)["i"]]
        assert queue.get(timeout=WAIT) == "full"  # every queue full: nothing is read any more
        time.sleep(PAUSE)
        while True:
            try:
                got.append(rx.recv(timeout=WAIT)["i"])
            except errors.Closed:  # not WriterDead: the sender closed after its last message
                break
        assert got == list(range(SLOW_COUNT))
        assert queue.get(timeout=WAIT) == "sent"
        proc.join(WAIT)
        assert proc.exitcode == 0  # no ReaderDead while the receiver paused
        assert rx.stats().lost == 0


def _subscribe_pause_and_count(queue: Any, url: str) -> None:
    """A subscriber that stops reading after its first message, then reads to the end."""
    with zcser.Receiver(url, pattern="sub", hwm=2, heartbeat=0.1) as rx:
        got = [rx.recv(timeout=WAIT)["i"]]
        queue.put("paused")
        time.sleep(PAUSE)
        with contextlib.suppress(errors.Timeout):
            while True:  # what the queues kept
                got.append(rx.recv(timeout=0.5)["i"])
        queue.put("reading")
        with contextlib.suppress(errors.Closed):
            while True:
                got.append(rx.recv(timeout=WAIT)["i"])
        queue.put((got, rx.stats().lost))


@pytest.mark.parametrize("scheme", ["tcp", "ipc"])
def test_a_subscriber_that_stops_reading_counts_every_message_it_missed(
    scheme: str, tmp_path: Path
) -> None:
    url = LOOPBACK if scheme == "tcp" else f"ipc://{tmp_path}/fan"
    with zcser.Sender(url, pattern="pub", hwm=2, heartbeat=0.1) as tx:
        with child(_subscribe_pause_and_count, tx.name) as (proc, queue):
            i = 0
            while queue.empty():  # a subscriber gets messages from when it joined
                tx.send({"i": i, "pad": PAD})
                i += 1
                time.sleep(0.01)
            assert queue.get(timeout=WAIT) == "paused"
            for _ in range(50):  # far more than its queues hold: pub drops the rest
                tx.send({"i": i, "pad": PAD})
                i += 1
            assert queue.get(timeout=WAIT + PAUSE) == "reading"
            for _ in range(20):
                tx.send({"i": i, "pad": PAD})
                i += 1
                time.sleep(0.01)
            tx.close(timeout=WAIT)
            got, lost = queue.get(timeout=WAIT)
            proc.join(WAIT)
        assert proc.exitcode == 0  # libzmq 4.3 aborted a subscriber reconnected by heartbeats
    assert got == sorted(got) and got[-1] == i - 1
    assert len(got) + lost == got[-1] - got[0] + 1  # every message missed is counted


def test_a_gap_from_a_sender_is_messages_lost_then_the_next_object() -> None:
    with zcser.Receiver(LOOPBACK) as rx, zcser.Sender(rx.name) as tx:
        tx.send({"i": 0}, timeout=WAIT)
        tx._w._sequence += 3  # three messages lost on a broken connection
        tx.send({"i": 4}, timeout=WAIT)
        assert rx.recv(timeout=WAIT) == {"i": 0}
        with pytest.raises(errors.MessagesLost) as caught:
            rx.recv(timeout=WAIT)
        assert isinstance(caught.value, errors.CorruptStream)
        assert (caught.value.lost, caught.value.first) == (3, 1)
        assert rx.recv(timeout=WAIT) == {"i": 4}
        assert rx.stats().lost == 3
