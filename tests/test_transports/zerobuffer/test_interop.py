"""Wire compatibility with the reference `zerobuffer-ipc` 1.3.0, in separate real processes.

Our writer feeds its reader and its writer feeds ours (pattern-checked bytes, sequence numbers,
metadata, thousands of wrap-arounds, multi-MiB frames); both give byte-identical OIEB images
for the same scripted run; each side sees the other die; stale leftovers are cleaned across
implementations while a live buffer is never taken for stale.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import zerobuffer as ref
from _peers import (
    OIEB_FIELDS,
    OIEB_FORMAT,
    Side,
    frame_sizes,
    oieb,
    oieb_bytes,
    pattern,
    peer,
    resources_of,
    unlink_reference_leftovers,
    without_pids,
    wrap_tails,
)
from conftest import unique_name

from transports import errors
from transports.zerobuffer import BufferConfig, Reader, Writer

SMALL_RING = 64 << 10
METADATA = b"zcser interop metadata \x00\x01\xff"
DIRECTIONS = [("ours", "ref"), ("ref", "ours")]
DEADLINE = 60.0


@contextlib.contextmanager
def cleaned(name: str) -> Iterator[str]:
    """Remove whatever a killed or reference peer left for NAME when the test ends."""
    try:
        yield name
    finally:
        unlink_reference_leftovers(name)


def _stream(
    writer_impl: str,
    reader_impl: str,
    name: str,
    *,
    payload_size: int,
    max_total: int,
    count: int,
    seed: int,
    ring_safe: bool = True,
    small: int = 0,
) -> dict[str, Any]:
    """Run a reader and a writer process over NAME; return the reader's report after checks.
    `small`: our reader uses read_small(small) (runs of copied-out frames) instead of read()."""
    ring = payload_size if ring_safe else None
    common = dict(name=name, seed=seed, count=count, max_total=max_total, ring=ring)
    with (
        cleaned(name),
        peer(
            role="reader",
            impl=reader_impl,
            metadata_size=4096,
            payload_size=payload_size,
            small=small,
            **common,
        ) as reader,
    ):
        reader.expect("ready")
        with peer(role="writer", impl=writer_impl, metadata=METADATA.hex(), **common) as writer:
            writer.expect("ready")
            wrote = writer.expect("done", DEADLINE)
            got = reader.expect("done", DEADLINE)
            writer.finish()
        reader.finish()
    assert got["count"] == wrote["count"] == count
    assert got["digest"] == wrote["digest"]
    assert got["metadata"] == METADATA.hex()
    return got


@pytest.mark.parametrize(("writer_impl", "reader_impl"), DIRECTIONS)
def test_stream_with_thousands_of_wraps(writer_impl: str, reader_impl: str) -> None:
    count, max_total, seed = 12_000, SMALL_RING // 2, 20251121
    sizes = frame_sizes(seed, count, max_total, SMALL_RING)
    assert min(sizes) == 1
    assert len(wrap_tails(sizes, SMALL_RING)) > 1000
    _stream(
        writer_impl,
        reader_impl,
        unique_name(),
        payload_size=SMALL_RING,
        max_total=max_total,
        count=count,
        seed=seed,
    )


@pytest.mark.parametrize("limit", [64, 4096, SMALL_RING])
def test_reference_writer_to_our_small_reads_in_runs(limit: int) -> None:
    """read_small copies out runs of frames and stores payload_read_pos once per run, before
    the bytes go back: the reference writer, which wraps by payload_read_pos, must still place
    every frame right (a mix of copied-out frames and Frames, thousands of wraps)."""
    count, max_total, seed = 12_000, SMALL_RING // 2, 20251122
    assert len(wrap_tails(frame_sizes(seed, count, max_total, SMALL_RING), SMALL_RING)) > 1000
    _stream(
        "ref",
        "ours",
        unique_name(),
        payload_size=SMALL_RING,
        max_total=max_total,
        count=count,
        seed=seed,
        small=limit,
    )


def test_ours_to_ours_stream_with_short_and_zero_tails() -> None:
    """The same harness without the reference's limits: tails under 16 bytes and exact fills."""
    count, max_total, seed = 12_000, SMALL_RING // 2, 11
    tails = wrap_tails(frame_sizes(seed, count, max_total), SMALL_RING)
    assert len(tails) > 1000
    assert any(0 < t < 16 for t in tails)
    assert 0 in tails
    _stream(
        "ours",
        "ours",
        unique_name(),
        payload_size=SMALL_RING,
        max_total=max_total,
        count=count,
        seed=seed,
        ring_safe=False,
    )


@pytest.mark.parametrize(("writer_impl", "reader_impl"), DIRECTIONS)
def test_stream_of_multi_mib_frames(writer_impl: str, reader_impl: str) -> None:
    payload, count, seed = 16 << 20, 40, 7
    sizes = frame_sizes(seed, count, payload // 2, payload)
    assert max(sizes) > 4 << 20
    assert min(sizes) < 64
    _stream(
        writer_impl,
        reader_impl,
        unique_name(),
        payload_size=payload,
        max_total=payload // 2,
        count=count,
        seed=seed,
    )


@pytest.mark.parametrize("reader_impl", ["ref", "ours"])
def test_large_frames_rewind_to_offset_zero_when_the_ring_is_empty(reader_impl: str) -> None:
    """Our writer sends a large frame back to offset 0 when every frame was released (its memory
    is still in cache): a normal wrap marker to any reader. Not when a frame is still held."""
    rs, ws = Side(reader_impl), Side("ours")
    ring, n = 1 << 20, 100_000
    name = unique_name()
    with cleaned(name):
        reader = rs.reader(name, 256, ring)
        try:
            writer = ws.writer(name)
            for seq in range(1, 21):
                ws.write(writer, pattern(seq, n), zero_copy=seq % 2 == 0)
                frame = rs.read(reader, 2.0)
                assert bytes(frame.data) == pattern(seq, n).tobytes()
                rs.release(reader, frame)
            fields = oieb(name)
            # frame 1 at 0, every later one after a rewind marker: 20 frames + 19 wraps
            assert fields["payload_written_count"] == fields["payload_read_count"] == 39
            assert fields["payload_free_bytes"] == ring
            assert fields["payload_write_pos"] == n + 16
            ws.write(writer, pattern(21, n), zero_copy=False)
            held = rs.read(reader, 2.0)  # held: the next frame must not rewind over it
            ws.write(writer, pattern(22, n), zero_copy=False)
            assert oieb(name)["payload_write_pos"] == 2 * (n + 16)  # 21 rewound to 0, 22 after
            assert bytes(held.data) == pattern(21, n).tobytes()
            rs.release(reader, held)
            frame = rs.read(reader, 2.0)
            assert bytes(frame.data) == pattern(22, n).tobytes()
            rs.release(reader, frame)
            writer.close()
        finally:
            reader.close()


# ---------------------------------------------------------------- OIEB image


def _scripted_images(writer_impl: str, reader_impl: str, name: str) -> list[bytes]:
    """One fixed run (metadata, frames, reads, releases, a wrap marker) with OIEB snapshots."""
    ws, rs = Side(writer_impl), Side(reader_impl)
    images: list[bytes] = []
    with cleaned(name):
        reader = rs.reader(name, 256, 4096)
        try:
            images.append(oieb_bytes(name))
            writer = ws.writer(name)
            images.append(oieb_bytes(name))
            writer.set_metadata(b"zcser-schema-v1")
            images.append(oieb_bytes(name))
            for seq, n in enumerate([100, 1000, 1, 2000], start=1):
                ws.write(writer, pattern(seq, n), zero_copy=seq % 2 == 0)
            images.append(oieb_bytes(name))
            for _ in range(2):
                rs.release(reader, rs.read(reader, 2.0))
            images.append(oieb_bytes(name))
            held = rs.read(reader, 2.0)
            images.append(oieb_bytes(name))
            rs.release(reader, held)
            rs.release(reader, rs.read(reader, 2.0))
            images.append(oieb_bytes(name))
            ws.write(writer, pattern(5, 1500), zero_copy=False)  # goes through a wrap marker
            images.append(oieb_bytes(name))
            held = rs.read(reader, 2.0)
            assert held.sequence == 5
            images.append(oieb_bytes(name))
            rs.release(reader, held)
            images.append(oieb_bytes(name))
            writer.close()
            images.append(oieb_bytes(name))
        finally:
            reader.close()
    return images


def _differences(a: bytes, b: bytes) -> dict[str, tuple[int, int]]:
    fa, fb = struct.unpack(OIEB_FORMAT, a), struct.unpack(OIEB_FORMAT, b)
    named = dict(zip(OIEB_FIELDS, zip(fa, fb, strict=False), strict=False))
    diff = {k: v for k, v in named.items() if v[0] != v[1]}
    if not diff and a != b:
        diff["reserved"] = (0, 1)
    return diff


@pytest.mark.parametrize(
    ("writer_impl", "reader_impl"), [("ours", "ours"), ("ours", "ref"), ("ref", "ours")]
)
def test_oieb_image_matches_reference(writer_impl: str, reader_impl: str) -> None:
    expected = _scripted_images("ref", "ref", unique_name())
    got = _scripted_images(writer_impl, reader_impl, unique_name())
    assert len(got) == len(expected)
    # every step but writer attach and detach (PID fields only) changes the image
    assert len({without_pids(image) for image in expected}) == len(expected) - 2
    for step, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert without_pids(a) == without_pids(b), f"step {step}: {_differences(a, b)}"
    assert struct.unpack_from("<Q", got[1], 0x50)[0] == os.getpid()  # writer attached
    assert struct.unpack_from("<Q", got[-1], 0x50)[0] == 0  # writer detached


# ---------------------------------------------------------------- liveness across implementations


def _fill(w: Writer, timeout: float) -> None:
    """Write 1 KiB frames until a write cannot get space within `timeout`."""
    for seq in range(1, 10_000):
        w.write(pattern(seq, 1024), timeout=timeout)


def test_ours_sees_killed_reference_writer() -> None:
    name = unique_name()
    with (
        cleaned(name),
        Reader(name, BufferConfig(metadata_size=64, payload_size=SMALL_RING)) as r,
        peer(role="writer", impl="ref", name=name, idle=True) as w,
    ):
        w.expect("ready")
        assert oieb(name)["writer_pid"] == w.pid
        w.kill()
        with pytest.raises(errors.WriterDead):
            r.read(timeout=1.0)


def test_ours_sees_killed_reference_reader() -> None:
    name = unique_name()
    with cleaned(name), peer(role="reader", impl="ref", name=name, idle=True, **_cfg()) as r:
        r.expect("ready")
        with Writer(name) as w:
            r.kill()
            with pytest.raises(errors.ReaderDead):
                _fill(w, timeout=0.5)


def test_reference_sees_our_killed_writer() -> None:
    name = unique_name()
    with (
        cleaned(name),
        ref.Reader(name, ref.BufferConfig(64, SMALL_RING)) as r,
        peer(role="writer", impl="ours", name=name, idle=True) as w,
    ):
        w.expect("ready")
        assert oieb(name)["writer_pid"] == w.pid
        w.kill()
        with pytest.raises(ref.WriterDeadException):
            r.read_frame(1.0)


def test_reference_sees_our_killed_reader() -> None:
    name = unique_name()
    with cleaned(name), peer(role="reader", impl="ours", name=name, idle=True, **_cfg()) as r:
        r.expect("ready")
        with ref.Writer(name) as w:
            w.write_timeout = timedelta(seconds=0.5)
            r.kill()
            with pytest.raises(ref.ReaderDeadException):
                for seq in range(1, 10_000):
                    w.write_frame(pattern(seq, 1024))


def test_ours_does_not_call_a_live_reference_writer_dead() -> None:
    """The control for the kill tests: same setup, peer alive, so no WriterDead."""
    name = unique_name()
    with (
        cleaned(name),
        Reader(name, BufferConfig(metadata_size=64, payload_size=SMALL_RING)) as r,
        peer(role="writer", impl="ref", name=name, idle=True) as w,
    ):
        w.expect("ready")
        with pytest.raises(errors.Timeout):
            r.read(timeout=0.3)


def test_ours_does_not_call_a_live_reference_reader_dead() -> None:
    """The control for the reader-kill tests: a full ring with a live reader is BufferFull."""
    name = unique_name()
    with cleaned(name), peer(role="reader", impl="ref", name=name, idle=True, **_cfg()) as r:
        r.expect("ready")
        with Writer(name) as w, pytest.raises(errors.BufferFull):
            _fill(w, timeout=0.3)


# ---------------------------------------------------------------- one writer at a time, takeover


def test_one_live_writer_across_implementations() -> None:
    """A live writer of either implementation makes the other refuse to attach."""
    name = unique_name()
    with (
        cleaned(name),
        Reader(name, BufferConfig(metadata_size=64, payload_size=SMALL_RING)),
    ):
        with Writer(name), pytest.raises(ref.WriterAlreadyConnectedException):
            ref.Writer(name)
        with peer(role="writer", impl="ref", name=name, idle=True) as w:
            w.expect("ready")
            with pytest.raises(errors.WriterAlreadyConnected):
                Writer(name)


@pytest.mark.parametrize("new_writer", ["ours", "ref"])
def test_writer_takes_over_from_killed_reference_writer(new_writer: str) -> None:
    """After the reference writer is SIGKILLed mid-stream, a new writer (sequence restarting
    at 1) is taken into our reader without losing or repeating a byte."""
    name = unique_name()
    args = dict(name=name, seed=5, count=20, max_total=4096, ring=SMALL_RING)
    with (
        cleaned(name),
        Reader(name, BufferConfig(metadata_size=64, payload_size=SMALL_RING)) as r,
    ):
        with peer(role="writer", impl="ref", linger=True, **args) as w:
            w.expect("ready")
            w.expect("done")
            assert oieb(name)["writer_pid"] == w.pid
            w.kill()
        sizes = frame_sizes(5, 20, 4096, SMALL_RING)
        for seq, n in enumerate(sizes, start=1):
            with r.read(timeout=2.0) as f:
                assert f.sequence == seq
                assert np.array_equal(np.frombuffer(f.data, np.uint8), pattern(seq, n))
        side = Side(new_writer)
        w2 = side.writer(name)
        try:
            for seq in (1, 2, 3):
                side.write(w2, pattern(seq, 1000 + seq), zero_copy=seq == 2)
            for seq in (1, 2, 3):
                with r.read(timeout=2.0) as f:
                    assert f.sequence == seq
                    assert bytes(f.data) == pattern(seq, 1000 + seq).tobytes()
        finally:
            w2.close()


# ---------------------------------------------------------------- stale cleanup across implementations


def _cfg() -> dict[str, int]:
    return {"metadata_size": 64, "payload_size": SMALL_RING}


def _killed_reader_leftovers(impl: str, name: str) -> int:
    """Leave NAME's shm, semaphores and lock file behind a SIGKILLed reader; return the shm's
    inode. Retried if a reader started elsewhere meanwhile (its stale scan) removed them."""
    for _ in range(3):
        with peer(role="reader", impl=impl, name=name, idle=True, **_cfg()) as p:
            p.expect("ready")
            p.kill()
        with contextlib.suppress(FileNotFoundError):
            inode = os.stat(f"/dev/shm/{name}").st_ino
            if all(resources_of(name).values()):
                return inode
        unlink_reference_leftovers(name)
    raise AssertionError(f"{name}: leftovers of a killed reader vanished three times")


@pytest.mark.parametrize("new_name", ["same-name", "other-name"])
def test_ours_cleans_up_after_killed_reference_reader(new_name: str) -> None:
    name = unique_name()
    other = name if new_name == "same-name" else unique_name()
    with cleaned(name), cleaned(other):
        old_inode = _killed_reader_leftovers("ref", name)
        with Reader(other, BufferConfig(metadata_size=64, payload_size=SMALL_RING)):
            if other == name:
                assert os.stat(f"/dev/shm/{name}").st_ino != old_inode
                state = oieb(name)
                assert state["reader_pid"] == os.getpid()
                assert state["payload_written_count"] == 0
            else:
                assert not any(resources_of(name).values()), resources_of(name)
        assert not any(resources_of(name).values()), resources_of(name)


@pytest.mark.parametrize("new_name", ["same-name", "other-name"])
def test_reference_cleans_up_after_our_killed_reader(new_name: str) -> None:
    name = unique_name()
    other = name if new_name == "same-name" else unique_name()
    with cleaned(name), cleaned(other):
        old_inode = _killed_reader_leftovers("ours", name)
        with ref.Reader(other, ref.BufferConfig(64, SMALL_RING)):
            if other == name:
                assert os.stat(f"/dev/shm/{name}").st_ino != old_inode
                assert oieb(name)["reader_pid"] == os.getpid()
            else:  # its bug 5 again: its stale cleanup leaves the semaphores too
                left = {"shm": False, "sem-w": True, "sem-r": True, "lock": False}
                assert resources_of(name) == left
                unlink_reference_leftovers(name)
        unlink_reference_leftovers(other)  # its bug 5: the semaphores stay behind
        assert not any(resources_of(name).values()), resources_of(name)


def test_reference_does_not_take_our_live_buffer_for_stale() -> None:
    name = unique_name()
    args = dict(name=name, seed=3, count=3, max_total=4096, ring=SMALL_RING)
    with cleaned(name), peer(role="reader", impl="ours", **_cfg(), **args) as reader:
        reader.expect("ready")
        inode = os.stat(f"/dev/shm/{name}").st_ino
        with pytest.raises(ref.ZeroBufferException):
            ref.Reader(name, ref.BufferConfig(64, SMALL_RING))
        assert all(resources_of(name).values())
        assert os.stat(f"/dev/shm/{name}").st_ino == inode
        assert oieb(name)["reader_pid"] == reader.pid
        with peer(role="writer", impl="ours", metadata=METADATA.hex(), **args) as writer:
            writer.expect("ready")
            wrote = writer.expect("done")
            writer.finish()
        assert reader.expect("done")["digest"] == wrote["digest"]
        reader.finish()


def test_ours_does_not_take_a_live_reference_buffer_for_stale() -> None:
    name = unique_name()
    args = dict(name=name, seed=4, count=3, max_total=4096, ring=SMALL_RING)
    with cleaned(name), peer(role="reader", impl="ref", **_cfg(), **args) as reader:
        reader.expect("ready")
        inode = os.stat(f"/dev/shm/{name}").st_ino
        with pytest.raises(errors.TransportError):
            Reader(name, BufferConfig(metadata_size=64, payload_size=SMALL_RING))
        assert all(resources_of(name).values())
        assert os.stat(f"/dev/shm/{name}").st_ino == inode
        assert oieb(name)["reader_pid"] == reader.pid
        with peer(role="writer", impl="ours", metadata=METADATA.hex(), **args) as writer:
            writer.expect("ready")
            wrote = writer.expect("done")
            writer.finish()
        assert reader.expect("done")["digest"] == wrote["digest"]
        reader.finish()


def test_pattern_detects_a_single_wrong_byte() -> None:
    """The check the peers run on every frame does catch corruption (so the tests can fail)."""
    from _peers import check_frame

    data = pattern(9, 1000).copy()
    check_frame(9, 9, 1000, data)
    data[500] ^= 1
    with pytest.raises(AssertionError, match="byte 500"):
        check_frame(9, 9, 1000, data)
    with pytest.raises(AssertionError, match="sequence"):
        check_frame(8, 9, 1000, np.asarray(pattern(8, 1000)))
