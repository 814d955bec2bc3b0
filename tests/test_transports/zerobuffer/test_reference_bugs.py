"""The six known bugs of the reference `zerobuffer-ipc` 1.3.0 (docs/protocol.md, end).

For each: a test that our implementation behaves correctly, and a test marked `REFERENCE BUG`
asserting that the reference really misbehaves, so the divergence is documented and a fixed
reference release shows up as a failing test here (then drop the workaround it needs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zerobuffer as ref
from _peers import (
    HEADER,
    Side,
    oieb,
    pattern,
    peer,
    resources_of,
    unlink_reference_leftovers,
    why_nobody_cannot_run,
)
from conftest import unique_name

from transports import errors
from transports.zerobuffer import BufferConfig, Reader, Writer

RING = 1024
NOBODY = 65534


@contextlib.contextmanager
def ref_pair(name: str, metadata_size: int = 64, payload_size: int = RING) -> Iterator[Any]:
    """A reference Reader and Writer in this process; its leftovers are removed afterwards."""
    try:
        with (
            ref.Reader(name, ref.BufferConfig(metadata_size, payload_size)) as r,
            ref.Writer(name) as w,
        ):
            yield r, w
    finally:
        unlink_reference_leftovers(name)


@contextlib.contextmanager
def our_pair(name: str, metadata_size: int = 64, payload_size: int = RING) -> Iterator[Any]:
    """Our Reader and Writer on one buffer in this process."""
    config = BufferConfig(metadata_size=metadata_size, payload_size=payload_size)
    with Reader(name, config) as r, Writer(name) as w:
        yield r, w


def _read_check(r: Reader, sequence: int, size: int) -> None:
    with r.read(timeout=2.0) as f:
        assert f.sequence == sequence
        assert np.array_equal(np.frombuffer(f.data, np.uint8), pattern(sequence, size))


def _ref_read_release(r: Any, sequence: int, size: int) -> None:
    f = r.read_frame(2.0)
    assert f is not None
    assert f.sequence == sequence
    assert np.array_equal(np.frombuffer(f.data, np.uint8), pattern(sequence, size))
    r.release_frame(f)


# ---------------------------------------------------------------- 1. ring exactly filled, reader caught up

FILL = RING // 4 - HEADER  # four frames of this size end exactly at the end of the ring


def test_ours_writes_after_frames_exactly_filled_the_ring(shm_name: str) -> None:
    with our_pair(shm_name) as (r, w):
        for seq in range(1, 5):
            w.write(pattern(seq, FILL))
        assert oieb(shm_name)["payload_write_pos"] == RING
        for seq in range(1, 5):
            _read_check(r, seq, FILL)
        w.write(pattern(5, 100), timeout=1.0)
        _read_check(r, 5, 100)
        state = oieb(shm_name)
        assert state["payload_free_bytes"] == RING
        assert state["payload_write_pos"] == state["payload_read_pos"] == HEADER + 100


def test_reference_reader_reads_our_frame_after_exact_fill(shm_name: str) -> None:
    """Our writer's wrap with a zero tail is understood by the reference reader."""
    with ref_reader(shm_name) as r, Writer(shm_name) as w:
        for seq in range(1, 5):
            w.write(pattern(seq, FILL))
        for seq in range(1, 5):
            _ref_read_release(r, seq, FILL)
        w.write(pattern(5, 100), timeout=1.0)
        _ref_read_release(r, 5, 100)


def test_REFERENCE_BUG_1_write_after_exact_fill_raises(shm_name: str) -> None:
    with ref_pair(shm_name) as (r, w):
        for seq in range(1, 5):
            w.write_frame(pattern(seq, FILL))
        for seq in range(1, 5):
            _ref_read_release(r, seq, FILL)
        with pytest.raises(ValueError, match="Invalid write range"):
            w.write_frame(pattern(5, 100))


# ---------------------------------------------------------------- 2. tail under 16 bytes

SHORT_TAIL = 8
BEFORE_TAIL = RING - SHORT_TAIL - HEADER  # one frame that leaves an 8-byte tail


def test_ours_wraps_over_a_tail_under_16_bytes(shm_name: str) -> None:
    with our_pair(shm_name) as (r, w):
        w.write(pattern(1, BEFORE_TAIL))
        _read_check(r, 1, BEFORE_TAIL)
        assert oieb(shm_name)["payload_read_pos"] == RING - SHORT_TAIL
        w.write(pattern(2, 100), timeout=1.0)
        _read_check(r, 2, 100)
        state = oieb(shm_name)
        assert state["payload_free_bytes"] == RING
        assert state["payload_written_count"] == state["payload_read_count"] == 3


def test_ours_reads_a_reference_writers_implicit_wrap(shm_name: str) -> None:
    """The reference writer also jumps over a short tail without a marker: our reader copes."""
    try:
        config = BufferConfig(metadata_size=64, payload_size=RING)
        with Reader(shm_name, config) as r, ref.Writer(shm_name) as w:
            w.write_frame(pattern(1, BEFORE_TAIL))
            _read_check(r, 1, BEFORE_TAIL)
            w.write_frame(pattern(2, 100))
            _read_check(r, 2, 100)
            assert oieb(shm_name)["payload_free_bytes"] == RING
    finally:
        unlink_reference_leftovers(shm_name)


def test_REFERENCE_BUG_2_reader_reads_header_in_short_tail(shm_name: str) -> None:
    with ref_pair(shm_name) as (r, w):
        w.write_frame(pattern(1, BEFORE_TAIL))
        _ref_read_release(r, 1, BEFORE_TAIL)
        w.write_frame(pattern(2, 100))
        with pytest.raises(ValueError, match="Invalid read range"):
            r.read_frame(1.0)


# ---------------------------------------------------------------- 3. two frames held, both released


@pytest.mark.parametrize("order", ["in-order", "out-of-order"])
def test_ours_returns_all_space_after_releasing_two_held_frames(shm_name: str, order: str) -> None:
    with our_pair(shm_name) as (r, w):
        w.write(pattern(1, 100))
        w.write(pattern(2, 200))
        f1 = r.read(timeout=1.0)
        f2 = r.read(timeout=1.0)
        assert (f1.sequence, f2.sequence) == (1, 2)
        first, second = (f1, f2) if order == "in-order" else (f2, f1)
        first.release()
        second.release()
        assert oieb(shm_name)["payload_free_bytes"] == RING
        tail = RING - (HEADER + 100) - (HEADER + 200)  # the whole ring is usable again, at once:
        w.write(pattern(3, tail - HEADER), timeout=0)  # up to the end of the ring,
        w.write(pattern(4, RING - tail - HEADER), timeout=0)  # then up to the reader
        assert oieb(shm_name)["payload_free_bytes"] == 0


def test_ours_holds_space_of_an_older_frame_released_out_of_order(shm_name: str) -> None:
    """Releasing a newer frame first must not hand the older frame's bytes to the writer."""
    with our_pair(shm_name) as (r, w):
        w.write(pattern(1, 100))
        w.write(pattern(2, 200))
        f1 = r.read(timeout=1.0)
        f2 = r.read(timeout=1.0)
        f2.release()
        assert oieb(shm_name)["payload_free_bytes"] == RING - (HEADER + 100) - (HEADER + 200)
        assert np.array_equal(np.frombuffer(f1.data, np.uint8), pattern(1, 100))
        f1.release()
        assert oieb(shm_name)["payload_free_bytes"] == RING


def test_REFERENCE_BUG_3_releasing_two_held_frames_leaks_space(shm_name: str) -> None:
    with ref_pair(shm_name) as (r, w):
        w.write_frame(pattern(1, 100))
        w.write_frame(pattern(2, 100))
        f1 = r.read_frame(1.0)
        f2 = r.read_frame(1.0)
        r.release_frame(f1)
        r.release_frame(f2)
        assert oieb(shm_name)["payload_free_bytes"] == RING - (HEADER + 100)


# A held frame before a wrap: the wasted tail after it may only go back to the writer with it.
# Ring of 4096: A (1000 ring bytes), X (2500) end at 3500; C (1000) wraps over a 596-byte tail.
# With X held and C read, the writer must not get the tail: a 596-byte frame D would land on X.
WIDE = 4096
A_N, X_N, C_N, D_N = 1000 - HEADER, 2500 - HEADER, 1000 - HEADER, 596 - HEADER


def _hold_x_across_a_wrap(w: Any, write: Any, read: Any, release: Any) -> tuple[Any, Any]:
    write(w, pattern(1, A_N))
    write(w, pattern(2, X_N))
    release(read())
    x = read()
    write(w, pattern(3, C_N))
    c = read()
    assert (x.sequence, c.sequence) == (2, 3)
    return x, c


def test_ours_keeps_a_held_frame_safe_across_a_wrap_from_reference_writer(shm_name: str) -> None:
    try:
        config = BufferConfig(metadata_size=64, payload_size=WIDE)
        with Reader(shm_name, config) as r, ref.Writer(shm_name) as w:
            w.write_timeout = timedelta(seconds=0.3)
            x, c = _hold_x_across_a_wrap(
                w,
                lambda w, d: w.write_frame(d),
                lambda: r.read(timeout=1.0),
                lambda f: f.release(),
            )
            with pytest.raises(ref.BufferFullException):
                w.write_frame(pattern(4, D_N))
            assert np.array_equal(np.frombuffer(x.data, np.uint8), pattern(2, X_N))
            x.release()
            c.release()
            w.write_frame(pattern(4, D_N))
            assert oieb(shm_name)["payload_free_bytes"] == WIDE - 596
    finally:
        unlink_reference_leftovers(shm_name)


def test_REFERENCE_BUG_3b_tail_returned_early_lets_writer_overwrite_held_frame(
    shm_name: str,
) -> None:
    with ref_pair(shm_name, payload_size=WIDE) as (r, w):
        x, _ = _hold_x_across_a_wrap(
            w,
            lambda w, d: w.write_frame(d),
            lambda: r.read_frame(1.0),
            r.release_frame,
        )
        w.write_frame(pattern(4, D_N))  # accepted at once: the reader gave the tail back
        assert not np.array_equal(np.frombuffer(x.data, np.uint8), pattern(2, X_N))


# ---------------------------------------------------------------- 4. empty metadata, metadata_size = 0


def test_ours_empty_metadata_is_present_and_empty(shm_name: str) -> None:
    with our_pair(shm_name, metadata_size=64) as (r, w):
        assert r.metadata is None
        w.set_metadata(b"")
        assert r.metadata is not None
        assert bytes(r.metadata) == b""
        assert oieb(shm_name)["metadata_written_bytes"] == 8
        with pytest.raises(errors.MetadataAlreadyWritten):
            w.set_metadata(b"again")


def test_ours_reads_empty_metadata_from_reference_writer(shm_name: str) -> None:
    try:
        config = BufferConfig(metadata_size=64, payload_size=RING)
        with Reader(shm_name, config) as r, ref.Writer(shm_name) as w:
            w.set_metadata(b"")
            w.write_frame(pattern(1, 10))
            _read_check(r, 1, 10)
            assert r.metadata is not None
            assert bytes(r.metadata) == b""
    finally:
        unlink_reference_leftovers(shm_name)


def test_ours_metadata_size_zero_works_and_refuses_metadata(shm_name: str) -> None:
    with our_pair(shm_name, metadata_size=0) as (r, w):
        assert oieb(shm_name)["metadata_size"] == 0
        with pytest.raises(errors.MetadataTooLarge):
            w.set_metadata(b"x")
        w.write(pattern(1, 10))
        _read_check(r, 1, 10)
        assert r.metadata is None


def test_reference_writer_works_with_our_metadata_size_zero(shm_name: str) -> None:
    try:
        config = BufferConfig(metadata_size=0, payload_size=RING)
        with Reader(shm_name, config) as r, ref.Writer(shm_name) as w:
            for seq in range(1, 4):
                w.write_frame(pattern(seq, 300))
                _read_check(r, seq, 300)
    finally:
        unlink_reference_leftovers(shm_name)


def test_REFERENCE_BUG_4_empty_metadata_and_metadata_size_zero() -> None:
    with pytest.raises(ValueError, match="metadata_size"):
        ref.BufferConfig(0, RING)
    name = unique_name()
    with ref_pair(name) as (r, w):
        w.set_metadata(b"")
        with pytest.raises(ref.ZeroBufferException, match="Invalid metadata size"):
            r.get_metadata()


# ---------------------------------------------------------------- 5. Reader.close removes both semaphores


def test_ours_reader_close_removes_everything(shm_name: str) -> None:
    r = Reader(shm_name, BufferConfig(metadata_size=64, payload_size=RING))
    assert all(resources_of(shm_name).values())
    r.close()
    assert not any(resources_of(shm_name).values()), resources_of(shm_name)


def test_REFERENCE_BUG_5_reader_close_leaves_both_semaphores(shm_name: str) -> None:
    try:
        r = ref.Reader(shm_name, ref.BufferConfig(64, RING))
        r.close()
        assert resources_of(shm_name) == {"shm": False, "sem-w": True, "sem-r": True, "lock": False}
    finally:
        unlink_reference_leftovers(shm_name)


# ---------------------------------------------------------------- 6. liveness: EPERM means alive
#
# kill(pid, 0) failing with EPERM means the process exists but belongs to another user: it is
# alive. Tested honestly by running the writer as user `nobody` against a reader owned by root:
# the reader is alive but cannot be signalled. The buffer's files are opened up to 0666 for the
# test only (ours are 0600 by design); our writer then refuses the buffer outright (another
# user's, writable by others), so for ours the liveness answer is checked directly. PID reuse (a dead peer's PID taken by a new process) and
# PID namespaces (a PID from another namespace) cannot be told apart from a live peer by PID
# alone; neither implementation handles them. PID reuse is not tested; the namespace case is
# shown by test_LIMITATION_writer_in_another_pid_namespace.

needs_root = pytest.mark.skipif(
    why_nobody_cannot_run() is not None, reason=str(why_nobody_cannot_run())
)


def _open_up(name: str) -> None:
    for path in (f"/dev/shm/{name}", f"/dev/shm/sem.sem-w-{name}", f"/dev/shm/sem.sem-r-{name}"):
        Path(path).chmod(0o666)


def _fill_as_nobody(impl: str, name: str) -> str:
    """Run a writer as nobody that fills the ring; return how its timed-out write failed."""
    with peer(user=NOBODY, role="fill", impl=impl, name=name) as p:
        result = p.expect("done", timeout=20)
        p.finish()
    assert result["written"] == RING // (HEADER + 100), result  # attached and filled the ring
    return str(result["error"])


@needs_root
def test_ours_counts_a_process_it_may_not_signal_as_alive() -> None:
    with peer(user=NOBODY, role="probe", pid=os.getpid()) as p:
        assert p.expect("done")["alive"] is True
        p.finish()


@needs_root
def test_ours_refuses_to_write_into_another_users_buffer_even_opened_up(shm_name: str) -> None:
    """Regression: our writer run as nobody attached to root's buffer opened up to 0666 and
    filled it; now it refuses it, naming the owner and the mode."""
    with Reader(shm_name, BufferConfig(metadata_size=64, payload_size=RING)):
        _open_up(shm_name)
        with peer(user=NOBODY, role="fill", impl="ours", name=shm_name) as p:
            result = p.expect("done", timeout=20)
            p.finish()
    assert (result["error"], result["written"]) == ("ForeignResource", -1), result
    assert "owned by root (uid 0) with mode 0666" in result["message"]


@needs_root
def test_REFERENCE_BUG_6_eperm_counts_as_dead(shm_name: str) -> None:
    with ref_reader(shm_name):
        _open_up(shm_name)
        assert _fill_as_nobody("ref", shm_name) == "ReaderDeadException"


@needs_root
def test_nobody_really_gets_eperm_for_our_pid() -> None:
    """The premise of the two tests above: kill(root pid, 0) from nobody fails with EPERM."""
    with peer(user=NOBODY, role="probe", pid=os.getpid()) as p:
        assert p.expect("done")["errno"] == "EPERM"
        p.finish()


needs_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare to start a peer in a new PID namespace",
)
NEW_PID_NAMESPACE = ("unshare", "--pid", "--fork", "--kill-child")


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"process {pid} still exists"
        time.sleep(0.01)


@needs_unshare
def test_LIMITATION_writer_in_another_pid_namespace(shm_name: str) -> None:
    """Documents what PID-only liveness gets wrong across PID namespaces (both implementations):
    our writer there cannot see the reader and refuses to attach, and a reference writer there
    records PID 1, so its death goes unseen (Timeout, where WriterDead would be right)."""
    with Reader(shm_name, BufferConfig(metadata_size=64, payload_size=RING)) as r:
        with peer(launcher=NEW_PID_NAMESPACE, role="fill", impl="ours", name=shm_name) as p:
            result = p.expect("done")
            assert (result["error"], result["written"]) == ("ReaderDead", -1)
            p.finish()
        with peer(
            launcher=NEW_PID_NAMESPACE, role="writer", impl="ref", name=shm_name, idle=True
        ) as w:
            assert w.expect("ready")["pid"] == 1
            assert oieb(shm_name)["writer_pid"] == 1
            (host_pid,) = _children(w.pid)
            w.kill()
            _wait_gone(host_pid)
            with pytest.raises(errors.Timeout):
                r.read(timeout=0.3)


@contextlib.contextmanager
def ref_reader(name: str) -> Iterator[Any]:
    """A reference Reader in this process; its leftovers are removed afterwards."""
    try:
        with ref.Reader(name, ref.BufferConfig(64, RING)) as r:
            yield r
    finally:
        unlink_reference_leftovers(name)


# ---------------------------------------------------------------- 7. (found here) zero-tail wrap counts
#
# When frames end exactly at the end of the ring, the reference writer counts a "wrap" in
# payload_written_count before its next frame although nothing is written and its reader never
# counts one. Its reader's graceful-close test (written_count <= read_count) then never holds
# again: after the writer closes, read_frame() times out for ever instead of raising
# WriterDeadException. Our writer counts only wraps that waste bytes; our reader does not rely on
# the counts.


def _zero_tail_then_close(ws: Any, rs: Any, name: str) -> Any:
    """Fill the ring exactly, read one frame, write one more (zero tail), close the writer, read
    everything; return the reader for a final read()."""
    reader = rs.reader(name, 64, RING)
    writer = ws.writer(name)
    for seq in range(1, 5):
        ws.write(writer, pattern(seq, FILL), zero_copy=False)
    rs.release(reader, rs.read(reader, 1.0))
    ws.write(writer, pattern(5, 100), zero_copy=False)
    writer.close()
    for seq in range(2, 6):
        frame = rs.read(reader, 1.0)
        assert frame.sequence == seq
        rs.release(reader, frame)
    return reader


@pytest.mark.parametrize(("writer_impl", "reader_impl"), [("ours", "ours"), ("ours", "ref")])
def test_writer_close_after_zero_tail_wrap_is_seen(
    shm_name: str, writer_impl: str, reader_impl: str
) -> None:
    try:
        reader = _zero_tail_then_close(Side(writer_impl), Side(reader_impl), shm_name)
        try:
            dead = errors.WriterDead if reader_impl == "ours" else ref.WriterDeadException
            with pytest.raises(dead):
                Side(reader_impl).read(reader, 0.3)
        finally:
            reader.close()
    finally:
        unlink_reference_leftovers(shm_name)


def test_ours_sees_reference_writer_close_after_zero_tail_wrap(shm_name: str) -> None:
    try:
        reader = _zero_tail_then_close(Side("ref"), Side("ours"), shm_name)
        with reader, pytest.raises(errors.WriterDead):
            reader.read(timeout=0.3)
    finally:
        unlink_reference_leftovers(shm_name)


def test_REFERENCE_BUG_7_zero_tail_wrap_hides_writer_close(shm_name: str) -> None:
    try:
        reader = _zero_tail_then_close(Side("ref"), Side("ref"), shm_name)
        state = oieb(shm_name)
        assert state["payload_written_count"] == state["payload_read_count"] + 1
        assert reader.read_frame(0.3) is None  # a timeout, though the writer is gone
        reader.close()
    finally:
        unlink_reference_leftovers(shm_name)
