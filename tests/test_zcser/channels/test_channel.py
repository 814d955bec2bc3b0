"""zcser.Sender / zcser.Receiver: real processes, real shared memory, addresses not just values."""

from __future__ import annotations

import json
import os
import pickle
import signal
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import unique_name
from fixtures.maps import mappings, shm_span
from fixtures.procs import child

import zcser
from transports.zerobuffer import Writer
from zcser import errors
from zcser.channels import stream_schema

WAIT = 30.0  # seconds: a bug fails the test instead of hanging it
MIB = 1 << 20


def inside(array: np.ndarray, span: tuple[int, int]) -> bool:
    start = array.ctypes.data
    return span[0] <= start and start + array.nbytes <= span[1]


# --- child processes -----------------------------------------------------------------------------


def _send_three(queue: Any, make_tx: zcser.SenderFactory) -> None:
    with make_tx() as tx:
        for i in range(3):
            tx.send({"i": i, "a": np.full(100_000, i, np.float64), "s": "x" * i})
        arr = tx.empty((256, 256), np.uint16)
        arr[:] = 7
        tx.send({"e": arr})
    queue.put("done")


def _send_empty_offset(queue: Any, name: str) -> None:
    with zcser.Sender(name) as tx:
        a = tx.empty((512, 512), np.float32)
        b = tx.empty(70_000, np.int64)
        c = tx.empty((3, 5000), np.complex64)
        a[:] = 1.5
        b[:] = np.arange(70_000)
        c[:] = 2 + 3j
        lo, _ = shm_span(name)
        queue.put([x.ctypes.data - lo for x in (a, b, c)])
        tx.send({"a": a, "b": b, "c": c, "t": 0.25})
        queue.put([x.flags.writeable for x in (a, b, c)])
        try:
            tx.send({"again": a})
        except errors.UsageError as exc:
            queue.put(str(exc))


def _send_big_then_wait(queue: Any, name: str, mib: int) -> None:
    with zcser.Sender(name) as tx:
        tx.send({"big": np.ones(mib * MIB // 8, np.float64), "k": "v"})
        queue.put("sent")
        queue.get(timeout=WAIT)  # stay alive (mapped) until the reader has measured


def _send_until_full(queue: Any, name: str) -> None:
    with zcser.Sender(name) as tx:
        payload = {"a": np.ones(40_000)}  # 320 KB: three fit in 1 MiB
        for _ in range(3):
            tx.send(payload, timeout=WAIT)
        try:
            tx.send(payload, timeout=0.3)
        except errors.BufferFull as exc:
            queue.put(type(exc).__name__)
        tx.send(payload, timeout=WAIT)  # blocks until the reader drops a message
        queue.put("sent")


def _reserve_and_hang(queue: Any, name: str) -> None:
    tx = zcser.Sender(name)
    tx.send({"n": 1, "a": np.zeros(50_000)})
    tx.send({"n": 2, "a": np.zeros(50_000)})
    arr = tx.empty(200_000, np.float64)
    arr[:100_000] = 9.0  # half filled: a message under construction
    queue.put("reserved")
    signal.pause()


def _receiver_then_hang(queue: Any, name: str) -> None:
    rx = zcser.Receiver(name, capacity=MIB)
    queue.put("ready")
    signal.pause()
    rx.close()  # pragma: no cover - killed before


def _send_with_codec(queue: Any, name: str, ref: bool) -> None:
    try:
        with zcser.Sender(name, zcser.Codec(ref=ref)) as tx:
            tx.send({"x": 1})
    except Exception as exc:  # pragma: no cover - reported to the test
        queue.put(repr(exc))
    queue.put("sent")


# --- start methods and zero-copy -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_every_start_method_via_channel(method: str) -> None:
    make_tx, rx = zcser.channel(unique_name("m"), capacity=8 * MIB)
    with rx, child(_send_three, make_tx, method=method) as (_, queue):
        got = [rx.recv(timeout=WAIT) for _ in range(4)]
        span = shm_span(rx.name)
        for i, msg in enumerate(got[:3]):
            assert msg["i"] == i and msg["s"] == "x" * i
            np.testing.assert_array_equal(msg["a"], np.full(100_000, i, np.float64))
            assert inside(msg["a"], span) and not msg["a"].flags.writeable
            assert msg["a"].ctypes.data % 64 == 0
        assert inside(got[3]["e"], span) and (got[3]["e"] == 7).all()
        assert rx.stats().frames_pinned == 4
        with pytest.raises(errors.Closed):
            rx.recv(timeout=WAIT)
        assert queue.get(timeout=WAIT) == "done"
        del got, msg
        assert rx.stats().frames_pinned == 0


def test_empty_arrays_are_sent_in_place(shm_name: str) -> None:
    with (
        zcser.Receiver(shm_name, capacity=16 * MIB) as rx,
        child(_send_empty_offset, shm_name) as (_, queue),
    ):
        msg = rx.recv(timeout=WAIT)
        writer_offsets = queue.get(timeout=WAIT)
        lo, _ = shm_span(shm_name)
        arrays = [msg["a"], msg["b"], msg["c"]]
        assert [x.ctypes.data - lo for x in arrays] == writer_offsets
        assert all(x.ctypes.data % 64 == 0 for x in arrays)
        assert (msg["a"] == 1.5).all() and (msg["c"] == 2 + 3j).all()
        np.testing.assert_array_equal(msg["b"], np.arange(70_000))
        assert msg["t"] == 0.25
        assert queue.get(timeout=WAIT) == [False, False, False]
        assert "already sent" in queue.get(timeout=WAIT)


def test_reader_private_memory_holding_100mib(shm_name: str) -> None:
    with (
        zcser.Receiver(shm_name, capacity=256 * MIB) as rx,
        child(_send_big_then_wait, shm_name, 100) as (_, queue),
    ):
        assert queue.get(timeout=WAIT) == "sent"
        me = psutil.Process()
        before = me.memory_full_info().uss
        msg = rx.recv(timeout=WAIT)
        assert float(msg["big"].sum()) == 100 * MIB // 8  # touches every page
        grown = me.memory_full_info().uss - before
        queue.put("measured")
        assert inside(msg["big"], shm_span(shm_name))
        assert grown < MIB, f"reader private memory grew by {grown} bytes"


# --- lifetimes -----------------------------------------------------------------------------------


def test_dropping_views_frees_the_frame(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        tx.send({"a": np.arange(20_000), "b": np.ones(30_000)})
        msg = rx.recv(timeout=WAIT)
        a = msg["a"][::2]  # a view of a view still pins
        del msg
        assert rx.stats().frames_pinned == 1
        del a
        stats = rx.stats()
        assert stats.frames_pinned == 0 and stats.used == 0


def test_held_views_block_the_writer_then_buffer_full(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        held = []
        payload = {"a": np.ones(40_000)}  # 320 KB: three fit in 1 MiB
        for _ in range(3):
            tx.send(payload, timeout=WAIT)
            held.append(rx.recv(timeout=WAIT))
        with pytest.raises(errors.BufferFull, match="has read every message but still holds"):
            tx.send(payload, timeout=0.2)
        with pytest.raises(errors.BufferFull):
            tx.send(payload, timeout=0)  # the non-blocking try: drop it
        assert rx.stats().frames_pinned == 3
        held.pop(0)
        tx.send(payload, timeout=0)
        assert (rx.recv(timeout=WAIT)["a"] == 1).all()


def test_held_views_block_a_writer_process(shm_name: str) -> None:
    with (
        zcser.Receiver(shm_name, capacity=MIB) as rx,
        child(_send_until_full, shm_name) as (
            _,
            queue,
        ),
    ):
        held = [rx.recv(timeout=WAIT) for _ in range(3)]
        assert queue.get(timeout=WAIT) == "BufferFull"
        assert rx.stats().frames_pinned == 3
        del held[0]
        assert queue.get(timeout=WAIT) == "sent"
        assert (rx.recv(timeout=WAIT)["a"] == 1).all()


def test_release_with_live_views_raises_and_keeps_the_frame(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        tx.send({"a": np.arange(50_000)})
        msg = rx.recv_message(timeout=WAIT)
        view = msg.value["a"]
        with pytest.raises(BufferError, match="still in use"):
            msg.release()
        assert rx.stats().frames_pinned == 1 and msg.pinned
        with pytest.raises(errors.UsageError):
            msg.value  # noqa: B018
        tx.send({"a": np.zeros(50_000)})  # the writer never overwrites the held frame
        other = rx.recv(timeout=WAIT)
        np.testing.assert_array_equal(view, np.arange(50_000))
        del view
        assert rx.stats().frames_pinned == 1  # only `other` now
        del other
        assert rx.stats().frames_pinned == 0


def test_with_block_releases_at_once(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        tx.send({"a": np.arange(50_000), "n": 3})
        with rx.recv_message(timeout=WAIT) as msg:
            assert int(msg.value["a"].sum()) == sum(range(50_000)) and msg.value["n"] == 3
            assert rx.stats().frames_pinned == 1
        assert msg.released and rx.stats().frames_pinned == 0
        tx.send({"a": np.arange(50_000)})
        with pytest.raises(BufferError), rx.recv_message(timeout=WAIT) as msg:
            kept = msg.value["a"]
        assert rx.stats().frames_pinned == 1
        del kept
        assert rx.stats().frames_pinned == 0


def test_copy_true_gives_private_writable_arrays(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        tx.send({"a": np.arange(50_000)})
        got = rx.recv(timeout=WAIT, copy=True)
        assert got["a"].flags.writeable and not inside(got["a"], shm_span(shm_name))
        assert rx.stats().frames_pinned == 0


# --- sizes, fallbacks, misuse --------------------------------------------------------------------


def test_message_too_large_at_once(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        with pytest.raises(errors.MessageTooLarge, match="capacity >="):
            tx.send({"a": np.zeros(2 * MIB, np.uint8)}, timeout=None)
        with pytest.raises(errors.MessageTooLarge, match="half the channel"):
            tx.send({"a": np.zeros(MIB // 2, np.uint8)}, timeout=None)
        with pytest.raises(errors.MessageTooLarge):
            tx.empty(2 * MIB, np.uint8)
        tx.send({"ok": 1})
        assert rx.recv(timeout=WAIT) == {"ok": 1}


def test_inband_beyond_headroom_falls_back_to_copy(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name, headroom=64) as tx:
        arr = tx.empty(40_000, np.float32)
        arr[:] = 4.0
        tx.send({"arr": arr, "note": "n" * 5000})
        got = rx.recv(timeout=WAIT)
        assert (got["arr"] == 4.0).all() and got["note"] == "n" * 5000
        assert tx.stats().copy_fallbacks == 1 and tx.stats().zero_copy == 0
        assert not arr.flags.writeable


def test_small_empty_array_copied_in_band_is_not_counted_zero_copy(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        small = tx.empty(100, np.float32)  # 400 bytes: under the codec threshold, sent in band
        small[:] = 1.0
        tx.send({"small": small})
        assert (rx.recv(timeout=WAIT)["small"] == 1.0).all()
        assert tx.stats().zero_copy == 0
        big = tx.empty(40_000, np.float32)
        big[:] = 2.0
        tx.send({"big": big})
        assert (rx.recv(timeout=WAIT)["big"] == 2.0).all()
        assert tx.stats().zero_copy == 1


def test_empty_near_the_ring_end_falls_back_without_corruption(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        for _ in range(2):
            tx.send({"pad": np.zeros(400_000, np.uint8)})
            del rx.recv(timeout=WAIT)["pad"]  # released: the write position moves to ~800 KB
        a = tx.empty(100_000, np.uint8)  # fits before the ring end
        b = tx.empty(300_000, np.uint8)  # would cross it: private memory instead
        a[:] = 1
        b[:] = 2
        tx.send({"a": a, "b": b})
        got = rx.recv(timeout=WAIT)
        assert (got["a"] == 1).all() and (got["b"] == 2).all()
        assert tx.stats().copy_fallbacks >= 1


def test_empty_array_left_out_is_discarded(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        arr = tx.empty(50_000, np.uint8)
        tx.send({"other": np.arange(30_000)})
        np.testing.assert_array_equal(rx.recv(timeout=WAIT)["other"], np.arange(30_000))
        assert not arr.flags.writeable
        with pytest.raises(errors.UsageError, match="sent without it"):  # not "already sent"
            tx.send(arr)


def test_empty_misuse_is_a_usage_error(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        for shape, dtype in (((-1, 3), np.uint8), ((2.5,), np.uint8), (4, object)):
            with pytest.raises(errors.UsageError):
                tx.empty(shape, dtype)
        assert tx.empty((0, 3), np.float32).shape == (0, 3)  # nothing to share: plain memory
        with pytest.raises(TypeError, match="SenderFactory"):
            pickle.dumps(tx)
        tx.send({"ok": True})
        assert rx.recv(timeout=WAIT) == {"ok": True}


def test_closed_objects_and_pickling(shm_name: str) -> None:
    codec = zcser.Codec(threshold=1024, checksum=True)
    make_tx, rx = zcser.channel(shm_name, capacity=MIB, codec=codec)
    with rx:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(rx)
        clone = pickle.loads(pickle.dumps(make_tx))
        assert clone.codec().schema() == codec.schema()
        tx = clone()
        tx.send({"x": np.arange(1000)})
        tx.close()
        with pytest.raises(errors.Closed):
            tx.send(1)
        np.testing.assert_array_equal(rx.recv(timeout=WAIT)["x"], np.arange(1000))
        with pytest.raises(errors.Closed):
            rx.recv(timeout=WAIT)
        with make_tx() as again:  # a new sender may continue the stream (same codec)
            again.send(2)
        assert rx.recv(timeout=WAIT) == 2
    with pytest.raises(errors.Closed):
        rx.recv(timeout=0)


def test_recv_timeout(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx:
        with pytest.raises(errors.Timeout, match="no frame"):
            rx.recv(timeout=0.05)
        with pytest.raises(errors.Timeout):
            rx.recv(timeout=0)


# --- schema --------------------------------------------------------------------------------------


def test_schema_mismatch_names_both_sides(shm_name: str) -> None:
    with (
        zcser.Receiver(shm_name, capacity=MIB) as rx,
        child(_send_with_codec, shm_name, True) as (_, queue),
    ):
        assert queue.get(timeout=WAIT) == "sent"
        with pytest.raises(errors.IncompatibleStream, match="ref: writer True vs reader False"):
            rx.recv(timeout=WAIT)


def test_schema_versions_are_named(shm_name: str) -> None:
    schema = stream_schema(zcser.Codec()) | {
        "pyfory_version": "0.0.1",
        "codec_version": "9.9.9",
    }
    with zcser.Receiver(shm_name, capacity=MIB) as rx, Writer(shm_name) as raw:
        raw.set_metadata(json.dumps(schema).encode())
        raw.write(zcser.dumps({"x": 1}))
        with pytest.raises(errors.IncompatibleStream) as info:
            rx.recv(timeout=WAIT)
    text = str(info.value)
    assert "9.9.9" in text and "0.0.1" in text and zcser.CODEC_VERSION in text


def test_raw_writer_without_schema_is_refused(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, Writer(shm_name) as raw:
        raw.write(zcser.dumps({"x": 1}))
        with pytest.raises(errors.IncompatibleStream, match=r"not a zcser\.Sender"):
            rx.recv(timeout=WAIT)


# --- dead peers ----------------------------------------------------------------------------------


def test_sender_killed_while_reserved_never_delivers_a_partial_message(shm_name: str) -> None:
    with (
        zcser.Receiver(shm_name, capacity=4 * MIB) as rx,
        child(_reserve_and_hang, shm_name) as (
            proc,
            queue,
        ),
    ):
        assert queue.get(timeout=WAIT) == "reserved"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(WAIT)
        assert [rx.recv(timeout=WAIT)["n"] for _ in range(2)] == [1, 2]
        with pytest.raises(errors.WriterDead, match="died") as info:
            rx.recv(timeout=WAIT)
        advice = str(info.value)
        assert "A new Sender may connect" in advice and "new Writer" not in advice


def test_receiver_killed_unblocks_sender_with_reader_dead(shm_name: str) -> None:
    with child(_receiver_then_hang, shm_name) as (proc, queue):
        assert queue.get(timeout=WAIT) == "ready"
        tx = zcser.Sender(shm_name)
        payload = {"a": np.ones(30_000)}
        with pytest.raises(errors.BufferFull):
            for _ in range(10):
                tx.send(payload, timeout=0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(WAIT)
        with pytest.raises(errors.ReaderDead, match="died"):
            tx.send(payload, timeout=WAIT)
        tx.close(timeout=0)
    zcser.Receiver(shm_name, capacity=MIB).close()  # replaces the dead reader's ring, unlinks it


# --- randomized: wraps, growth, fallbacks, held frames never overwritten -------------------------


def _fill(array: np.ndarray, seed: int) -> None:
    flat = array.reshape(-1).view(np.uint8)
    flat[:] = (np.arange(flat.size, dtype=np.uint32) * 7 + seed) % 251


def _expected(nbytes: int, seed: int) -> np.ndarray:
    return ((np.arange(nbytes, dtype=np.uint32) * 7 + seed) % 251).astype(np.uint8)


def _check_arrays(got: dict[str, Any], count: int) -> None:
    for i in range(count):
        raw = got[f"a{i}"].reshape(-1).view(np.uint8)
        np.testing.assert_array_equal(raw, _expected(raw.size, got["step"] + i))


def _random_traffic(name: str, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dtypes = [np.uint8, np.int16, np.float32, np.float64, np.complex64]
    with zcser.Receiver(name, capacity=MIB) as rx, zcser.Sender(name, headroom=256) as tx:
        held: list[tuple[dict[str, Any], list[int]]] = []
        for step in range(steps):
            sizes = [int(rng.integers(1, 15_000)) for _ in range(int(rng.integers(0, 4)))]
            message: dict[str, Any] = {"step": step, "note": "n" * int(rng.choice([1, 400]))}
            use_empty = bool(rng.integers(0, 2))
            for i, count in enumerate(sizes):
                dtype = dtypes[int(rng.integers(0, len(dtypes)))]
                while True:
                    try:
                        arr = (
                            tx.empty(count, dtype, timeout=0)
                            if use_empty
                            else np.empty(count, dtype)
                        )
                        break
                    except errors.BufferFull:
                        held.pop(0)
                _fill(arr, step + i)
                message[f"a{i}"] = arr
            while True:
                try:
                    tx.send(message, timeout=0)
                    break
                except errors.BufferFull:
                    held.pop(0)
            got = rx.recv(timeout=WAIT)
            assert got["step"] == step and got["note"] == message["note"]
            _check_arrays(got, len(sizes))
            if rng.random() < 0.5:
                held.append((got, sizes))
            del got, message
        for got, sizes in held:  # still intact: the writer never wrote over a held frame
            _check_arrays(got, len(sizes))
        stats = tx.stats()
        assert stats.zero_copy > 0 and stats.messages == steps


def test_random_traffic_keeps_every_message_intact(shm_name: str) -> None:
    _random_traffic(shm_name, 400, seed=1)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(5))
def test_random_traffic_soak(shm_name: str, seed: int) -> None:
    _random_traffic(shm_name, 20_000, seed)


# --- small messages ------------------------------------------------------------------------------


def test_messages_without_buffers_free_their_frame_at_once(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        small = {"id": 7, "payload": b"x" * 1024, "tags": [1, 2], "small": np.arange(10)}
        tx.send(small)
        got = rx.recv(timeout=WAIT)
        stats = rx.stats()
        assert stats.frames_pinned == 0 and stats.used == 0  # the value is alive, the frame free
        for i in range(3000):  # ~3.4 MB through a 1 MiB ring: the old frame is overwritten
            tx.send({"id": i, "payload": b"y" * 1024, "tags": [], "small": np.zeros(10, int)})
            assert rx.recv(timeout=WAIT)["id"] == i
        assert got["id"] == 7 and got["payload"] == small["payload"] and got["tags"] == [1, 2]
        np.testing.assert_array_equal(got["small"], small["small"])
        tx.send(small)
        with rx.recv_message(timeout=WAIT) as msg:
            assert not msg.pinned and msg.value["id"] == 7
        tx.send({"a": np.arange(50_000), "n": 1})  # out of band: pinned while the view lives
        big = rx.recv(timeout=WAIT)
        assert rx.stats().frames_pinned == 1
        del big
        assert rx.stats().frames_pinned == 0


def test_channel_function_and_channels_package_have_different_names(shm_name: str) -> None:
    """`zcser.channel` is the helper function and stays one; the classes live in the package
    `zcser.channels` and are re-exported from `zcser`."""
    import zcser.channels

    assert callable(zcser.channel) and zcser.channel is zcser.channels.channel
    assert zcser.DEFAULT_CAPACITY == zcser.channels.DEFAULT_CAPACITY
    assert zcser.DEFAULT_HEADROOM == zcser.channels.DEFAULT_HEADROOM
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        assert isinstance(tx.stats(), zcser.SenderStats)
        assert isinstance(rx.stats(), zcser.ReceiverStats)
    assert callable(zcser.channel)  # importing the package did not replace the function


def test_small_messages_are_copied_out_and_pin_nothing(shm_name: str) -> None:
    make_tx, rx = zcser.channel(shm_name, capacity=MIB)
    with rx, make_tx() as tx:
        received = 0
        for i in range(3000):  # several times around the ring, reading in bursts
            tx.send({"i": i, "a": np.arange(i % 50), "s": "x" * (i % 700)})
            if i % 7 == 6:
                while received <= i:
                    got = rx.recv(timeout=WAIT)
                    assert got["i"] == received
                    assert np.array_equal(got["a"], np.arange(received % 50))
                    assert rx.stats().frames_pinned == 0
                    received += 1
        assert rx.stats().used > 0  # 2996..2999 not read yet
        while received < 3000:
            assert rx.recv(timeout=WAIT)["i"] == received
            received += 1
        stats = rx.stats()
        assert stats.frames_pinned == 0 and stats.used == 0  # the last read gave all back
        assert stats.messages == 3000


def test_small_messages_copy_true_gives_private_writable_arrays(shm_name: str) -> None:
    make_tx, rx = zcser.channel(shm_name, capacity=MIB)
    with rx, make_tx() as tx:
        tx.send({"a": np.arange(10)})
        plain = rx.recv(timeout=WAIT)["a"]
        tx.send({"a": np.arange(10)})
        private = rx.recv(timeout=WAIT, copy=True)["a"]
        assert np.array_equal(plain, private)
        assert private.flags.writeable


def test_low_threshold_small_arrays_stay_views_of_the_frame(shm_name: str) -> None:
    """A codec threshold below the copy-out size sends small arrays out of band: those messages
    still arrive as views pinning their frame, not as copies."""
    rx = zcser.Receiver(shm_name, capacity=MIB, codec=zcser.Codec(threshold=64))
    with rx, zcser.Sender(shm_name, codec=zcser.Codec(threshold=64)) as tx:
        tx.send({"a": np.arange(32, dtype=np.int64), "small": np.arange(4)})
        got = rx.recv(timeout=WAIT)
        spans = mappings(f"/dev/shm/{rx.name}")  # the receiver's and the sender's mappings
        assert any(inside(got["a"], span) for span in spans)
        assert not any(inside(got["small"], span) for span in spans)  # 32 bytes: in band
        assert rx.stats().frames_pinned == 1
        del got
        assert rx.stats().frames_pinned == 0


def test_end_of_stream_after_small_messages(shm_name: str) -> None:
    make_tx, rx = zcser.channel(shm_name, capacity=MIB)
    with rx:
        with make_tx() as tx:
            tx.send("first")
            tx.send(2)
        assert rx.recv(timeout=WAIT) == "first"
        assert rx.recv(timeout=WAIT) == 2
        with pytest.raises(errors.Closed):
            rx.recv(timeout=WAIT)
        with pytest.raises(errors.Closed):
            rx.recv(timeout=WAIT)


def test_small_messages_read_ahead_mix_with_recv_message_and_large_ones(shm_name: str) -> None:
    """The receiver copies out a run of published small messages at once; recv_message() and
    copy=True still get them in order, and a large message behind them still arrives as views
    of its frame."""
    make_tx, rx = zcser.channel(shm_name, capacity=4 * MIB)
    with rx, make_tx() as tx:
        for i in range(5):
            tx.send({"i": i})
        big = np.arange(MIB // 8, dtype=np.float64)
        tx.send({"i": 5, "big": big})
        tx.send({"i": 6})
        assert rx.recv(timeout=WAIT) == {"i": 0}
        assert rx.stats().messages == 1
        assert rx._r.stats().frames == 5  # one run: it stopped at the large frame
        with rx.recv_message(timeout=WAIT) as msg:
            assert msg.value == {"i": 1}
        assert rx.recv(timeout=WAIT, copy=True) == {"i": 2}
        assert [rx.recv(timeout=WAIT)["i"] for _ in range(2)] == [3, 4]
        got = rx.recv(timeout=WAIT)
        assert got["i"] == 5 and np.array_equal(got["big"], big)
        assert any(inside(got["big"], span) for span in mappings(f"/dev/shm/{rx.name}"))
        assert rx.stats().frames_pinned == 1
        assert rx.recv(timeout=WAIT) == {"i": 6}
        del got
        stats = rx.stats()
        assert stats.frames_pinned == 0 and stats.used == 0 and stats.messages == 7
