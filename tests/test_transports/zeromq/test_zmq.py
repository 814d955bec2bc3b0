"""transports.zmq: envelope and bookkeeping (pure), then real sockets between real processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import stat
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from transports import errors
from transports.zeromq import wire
from transports.zeromq.sockets import ZmqReader, ZmqWriter

WAIT = 30.0
MIB = 1 << 20
LOOPBACK = "tcp://127.0.0.1:0"


@contextmanager
def child(target: Callable[..., None], *args: Any) -> Iterator[tuple[Any, Any, Any]]:
    """target(to_parent, from_parent, *args) in a real forked process; always reaped."""
    ctx = mp.get_context("fork")
    up, down = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=target, args=(up, down, *args), daemon=True)
    proc.start()
    try:
        yield proc, up, down
    finally:
        proc.join(WAIT)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.join(WAIT)
            raise AssertionError("child process did not finish")


def crc(data: Any) -> int:
    return zlib.crc32(memoryview(data).cast("B"))


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --- pure parts ----------------------------------------------------------------------------------


def test_envelope_round_trip() -> None:
    raw = wire.pack_envelope(wire.KIND_DATA, 2**64 - 1, 7, 3, 5) + b"metaHEAD"
    env = wire.parse_envelope(memoryview(raw), 4)
    assert env == wire.Envelope(wire.KIND_DATA, 2**64 - 1, 7, 3, 5)
    assert raw[wire.META_START : env.head_start] == b"metaH" and raw[env.head_start :] == b"EAD"


@pytest.mark.parametrize(
    ("raw", "frames", "cls", "words"),
    [
        (b"ZCSN", 1, errors.PeerProtocolError, "shorter than"),
        (b"XXXX" + bytes(28), 1, errors.PeerProtocolError, "magic"),
        (wire.ENVELOPE.pack(wire.MAGIC, 9, 0, 0, 1, 0, 0, 0), 1, errors.IncompatibleBuffer, "9"),
        (wire.ENVELOPE.pack(wire.MAGIC, 1, 5, 0, 1, 0, 0, 0), 1, errors.PeerProtocolError, "kind"),
        (wire.ENVELOPE.pack(wire.MAGIC, 1, 0, 1, 1, 0, 0, 0), 1, errors.PeerProtocolError, "kind"),
        (wire.pack_envelope(0, 1, 0, 2, 0), 2, errors.PeerProtocolError, "2 buffer frames"),
        (wire.pack_envelope(0, 1, 0, 0, 0), 3, errors.PeerProtocolError, "2 arrived"),
        (wire.pack_envelope(0, 1, 0, 0, 10) + b"short", 1, errors.PeerProtocolError, "overruns"),
    ],
)
def test_envelope_refusals(raw: bytes, frames: int, cls: type[Exception], words: str) -> None:
    with pytest.raises(cls, match=words):
        wire.parse_envelope(memoryview(raw), frames)


def test_writers_count_gaps_and_ends() -> None:
    w = wire.Writers()
    assert not w.ended
    assert w.see(wire.Envelope(wire.KIND_DATA, 1, 5, 0, 0)) == 0  # late joiner: no gap
    assert w.see(wire.Envelope(wire.KIND_DATA, 1, 9, 0, 0)) == 3
    assert w.see(wire.Envelope(wire.KIND_DATA, 2, 0, 0, 0)) == 0
    assert w.see(wire.Envelope(wire.KIND_END, 1, 10, 0, 0)) == 0
    assert not w.ended and w.count == 2 and w.lost == 3
    w.see(wire.Envelope(wire.KIND_END, 2, 1, 0, 0))
    assert w.ended


def test_envelope_flags_round_trip_and_version_1_is_read_without_flags() -> None:
    raw = wire.pack_envelope(wire.KIND_DATA, 3, 4, 0, 0, wire.FLAG_ONE_READER)
    assert wire.parse_envelope(memoryview(raw), 1).flags == wire.FLAG_ONE_READER
    old = wire.ENVELOPE.pack(wire.MAGIC, 1, wire.KIND_DATA, 0, 3, 4, 0, 0)
    assert wire.parse_envelope(memoryview(old), 1).flags == 0
    for bad in (
        wire.ENVELOPE.pack(wire.MAGIC, 1, 0, wire.FLAG_ONE_READER, 3, 4, 0, 0),
        wire.ENVELOPE.pack(wire.MAGIC, 2, 0, 2, 3, 4, 0, 0),
    ):
        with pytest.raises(errors.PeerProtocolError, match="flags"):
            wire.parse_envelope(memoryview(bad), 1)


def test_writers_count_the_gaps_of_a_one_reader_writer_only() -> None:
    w = wire.Writers(count_gaps=False)
    one, shared = wire.FLAG_ONE_READER, 0
    assert w.see(wire.Envelope(wire.KIND_DATA, 1, 0, 0, 0, shared)) == 0
    assert w.see(wire.Envelope(wire.KIND_DATA, 1, 5, 0, 0, shared)) == 0  # other readers'
    assert w.see(wire.Envelope(wire.KIND_DATA, 2, 0, 0, 0, one)) == 0
    assert w.see(wire.Envelope(wire.KIND_DATA, 2, 3, 0, 0, one)) == 2
    assert w.see(wire.Envelope(wire.KIND_END, 2, 7, 0, 0, one)) == 3  # before the end mark too
    assert w.lost == 5


def test_peers_follow_open_and_close() -> None:
    p = wire.Peers()
    assert not p.lost and p.connected == 0
    p.opened(7)
    p.opened(8)
    p.closed(7)
    p.closed(7)
    assert p.connected == 1 and not p.lost and p.disconnects == 1
    p.closed(8)
    assert p.lost and p.disconnects == 2


# --- real processes --------------------------------------------------------------------------------


def _reader(up: Any, down: Any, url: str, mode: str) -> None:
    with ZmqReader(url) as r:
        up.put(r.url)
        if mode == "wait-after-first":
            r.recv(WAIT)
            up.put("ready")
            down.get(timeout=WAIT)
        elif mode in ("hang-after-first", "stop-after-first"):
            r.recv(WAIT)
            up.put("ready")
            if mode == "hang-after-first":
                signal.pause()
        got = []
        while True:
            rec = r.recv(WAIT)
            if rec.end:
                break
            got.append((rec.sequence, bytes(rec.head), [crc(b) for b in rec.buffers]))
            if mode == "stop-after-first":
                tail = np.frombuffer(rec.buffers[0], np.uint8)[-4:]
                up.put(("tail", tail.tolist()))
                return
        up.put(got)


@pytest.mark.parametrize("scheme", ["tcp", "ipc"])
def test_push_pull_between_processes(scheme: str, tmp_path: Path) -> None:
    url = LOOPBACK if scheme == "tcp" else f"ipc://{tmp_path}/s"
    rng = np.random.default_rng(1)
    messages = [
        (f"head{i}".encode(), [rng.bytes(n) for n in sizes])
        for i, sizes in enumerate([[], [10], [200_000], [70_000, 1, 3 * MIB], [0, 65_536]])
    ]
    with child(_reader, url, "all") as (_, up, _down):
        with ZmqWriter(up.get(timeout=WAIT)) as w:
            for head, bufs in messages:
                w.send(head, bufs, timeout=WAIT)
            stats = w.stats()
        got = up.get(timeout=WAIT)
    assert got == [
        (i, b"head%d" % i, [crc(b) for b in bufs]) for i, (_, bufs) in enumerate(messages)
    ]
    assert stats.messages == 5 and stats.zero_copy_frames == 4 and stats.copied_frames == 3


def test_send_reads_the_callers_memory_without_copying() -> None:
    """A message stuck behind a stopped reader still points at our array: bytes changed after
    send() returned (Timeout: queued) are the bytes the reader gets."""
    big = np.zeros(64 * MIB, np.uint8)
    with (
        child(_reader, LOOPBACK, "stop-after-first") as (proc, up, _down),
        ZmqWriter(up.get(timeout=WAIT)) as w,
    ):
        w.send(b"hello", timeout=WAIT)
        assert up.get(timeout=WAIT) == "ready"
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: stopped(proc.pid), "the reader to stop")
        with pytest.raises(errors.Timeout, match="queued"):
            w.send(b"big", [big], timeout=0.5)
        big[-4:] = [1, 2, 3, 4]  # far past what the socket buffers hold
        os.kill(proc.pid, signal.SIGCONT)
        assert up.get(timeout=WAIT) == ("tail", [1, 2, 3, 4])
        w.flush(timeout=WAIT)
        assert w.stats().zero_copy_frames == 1


def test_high_water_mark_gives_backpressure_then_delivers_all() -> None:
    with child(_reader, LOOPBACK, "wait-after-first") as (_, up, down):
        with ZmqWriter(up.get(timeout=WAIT), hwm=2) as w:
            w.send(b"first", timeout=WAIT)
            assert up.get(timeout=WAIT) == "ready"
            sent = 0
            with pytest.raises(errors.BufferFull, match="high-water mark"):
                for sent in range(1, 100_000):  # noqa: B007 - the count is checked below
                    w.send(b"x" * 10_000, timeout=0)
            down.put("go")
        got = up.get(timeout=WAIT)
    assert [seq for seq, _, _ in got] == list(range(1, sent))


def test_killed_reader_raises_reader_dead() -> None:
    with (
        child(_reader, LOOPBACK, "hang-after-first") as (proc, up, _down),
        ZmqWriter(up.get(timeout=WAIT)) as w,
    ):
        w.send(b"first", timeout=WAIT)
        assert up.get(timeout=WAIT) == "ready"
        proc.kill()
        with pytest.raises(errors.ReaderDead, match="reader"):
            for _ in range(10_000):
                w.send(b"x", [bytes(MIB)], timeout=WAIT)


def _writer(up: Any, down: Any, url: str, count: int) -> None:
    w = ZmqWriter(url)
    for i in range(count):
        w.send(b"m%d" % i, [np.full(MIB, i, np.uint8)], timeout=WAIT)
    up.put("sent")
    signal.pause()


def test_killed_writer_reader_gets_everything_then_writer_dead() -> None:
    with ZmqReader(LOOPBACK) as r, child(_writer, r.url, 5) as (proc, up, _down):
        assert up.get(timeout=WAIT) == "sent"
        proc.kill()
        for i in range(5):
            rec = r.recv(WAIT)
            assert bytes(rec.head) == b"m%d" % i and bytes(rec.buffers[0][:1]) == bytes([i])
        with pytest.raises(errors.WriterDead, match="no writer"):
            r.recv(WAIT)
        assert r.stats().disconnects == 1


def test_reader_timeout_when_nobody_writes() -> None:
    with ZmqReader(LOOPBACK) as r, pytest.raises(errors.Timeout, match="no message"):
        r.recv(0.1)


def test_writer_timeout_when_no_reader_listens(tmp_path: Path) -> None:
    """An ipc path nobody listens on (a freed TCP port could be taken by a concurrent run)."""
    url = f"ipc://{tmp_path}/nobody"
    with ZmqWriter(url) as w, pytest.raises(errors.Timeout, match="no reader connected"):
        w.send(b"x", timeout=0.2)


def test_ipc_file_is_private_exclusive_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "chan"
    with ZmqReader(f"ipc://{path}") as r:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(errors.BufferExists, match="already listens"):
            ZmqReader(r.url)
    assert not path.exists()


def test_nothing_listens_after_close() -> None:
    r = ZmqReader(LOOPBACK)
    port = int(r.url.rsplit(":", 1)[1])
    r.close()

    def refused() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) != 0

    wait_until(refused, "the port to close")
    with pytest.raises(errors.TransportClosed):
        r.recv(0)


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(errors.InvalidName, match="tcp://"):
        ZmqReader("udp://127.0.0.1:5")
    with pytest.raises(errors.InvalidConfig, match="pattern"):
        ZmqWriter(LOOPBACK, pattern="pull")
    with pytest.raises(errors.InvalidConfig, match="hwm"):
        ZmqReader(LOOPBACK, hwm=0)
    with ZmqReader(LOOPBACK) as r, pytest.raises(errors.BufferExists, match="in use"):
        ZmqReader(r.url)


def test_malformed_frames_raise_and_the_stream_goes_on() -> None:
    with ZmqReader(LOOPBACK) as r:
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.connect(r.url)
        try:
            raw.send(b"junk")
            raw.send_multipart([wire.pack_envelope(0, 1, 0, 2, 0), b"one buffer only"])
            raw.send_multipart([wire.pack_envelope(0, 1, 1, 0, 0) + b"fine"])
            with pytest.raises(errors.PeerProtocolError, match="shorter than"):
                r.recv(WAIT)
            with pytest.raises(errors.PeerProtocolError, match="announces 2"):
                r.recv(WAIT)
            assert bytes(r.recv(WAIT).head) == b"fine"
        finally:
            raw.close(linger=0)


def _subscriber(up: Any, down: Any, url: str, slow: bool) -> None:
    with ZmqReader(url, pattern="sub", hwm=2) as r:
        first = r.recv(WAIT).sequence
        up.put("ready")
        if slow:
            down.get(timeout=WAIT)
        seqs, ended = [], False
        try:
            while not (rec := r.recv(2.0)).end:
                seqs.append(rec.sequence)
            ended, last = True, rec.sequence
        except (errors.Timeout, errors.WriterDead):
            last = seqs[-1]  # the end mark itself was dropped
        up.put((first, seqs, last - first - ended, r.stats().lost))


def test_pub_sub_fans_out_and_drops_for_a_stalled_subscriber() -> None:
    with (
        ZmqWriter(LOOPBACK, pattern="pub", hwm=2) as w,
        child(_subscriber, w.url, False) as (_, up1, _d1),
        child(_subscriber, w.url, True) as (_, up2, down2),
    ):
        ready = 0
        while ready < 2:  # ZeroMQ drops messages sent before a subscription arrives
            w.send(b"hello", timeout=WAIT)
            for q in (up1, up2):
                if not q.empty():
                    assert q.get() == "ready"
                    ready += 1
            time.sleep(0.01)
        for _ in range(300):
            w.send(b"x", [bytes(100_000)], timeout=WAIT)  # never blocks on the stalled one
        down2.put("go")
        w.close()
        results = [up1.get(timeout=WAIT), up2.get(timeout=WAIT)]
    for _, seqs, span, lost in results:
        assert seqs == sorted(seqs)
        assert len(seqs) + lost == span  # every message was received or counted as lost
    assert results[1][3] > 0  # the stalled subscriber missed messages and knows how many


def test_a_non_blocking_send_copies_instead_of_waiting() -> None:
    with (
        child(_reader, LOOPBACK, "wait-after-first") as (_, up, down),
        ZmqWriter(up.get(timeout=WAIT)) as w,
    ):
        w.send(b"first", timeout=WAIT)
        assert up.get(timeout=WAIT) == "ready"
        data = np.full(MIB, 1, np.uint8)
        w.send(b"copied", [data], timeout=0)
        data[:] = 2  # the message already holds its own copy
        stats = w.stats()
        down.put("go")
    assert up.get(timeout=WAIT) == [(1, b"copied", [crc(np.full(MIB, 1, np.uint8))])]
    assert stats.zero_copy_frames == 0 and stats.copied_frames == 1


def test_a_stale_ipc_file_of_a_dead_reader_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "stale"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed reader leaves
    with ZmqReader(f"ipc://{path}") as r, ZmqWriter(r.url) as w:
        w.send(b"hi", timeout=WAIT)
        assert bytes(r.recv(WAIT).head) == b"hi"
    assert not path.exists()


# --- gaps and liveness ---------------------------------------------------------------------------


def test_a_gap_in_a_connecting_push_writer_raises_messages_lost_then_the_message() -> None:
    with ZmqReader(LOOPBACK) as r, ZmqWriter(r.url) as w:
        w.send(b"zero", timeout=WAIT)
        w._sequence += 2  # two messages that never reach the reader (a broken connection)
        w.send(b"three", timeout=WAIT)
        w.send(b"four", timeout=WAIT)
        assert bytes(r.recv(WAIT).head) == b"zero"
        with pytest.raises(errors.MessagesLost, match="sequence 1 to 2") as caught:
            r.recv(WAIT)
        assert (caught.value.lost, caught.value.first) == (2, 1)
        assert bytes(r.recv(WAIT).head) == b"three"  # the message that showed the gap
        assert bytes(r.recv(WAIT).head) == b"four"
        assert r.stats().lost == 2


def test_ready_keeps_messages_lost_before_the_message_that_showed_it() -> None:
    with ZmqReader(LOOPBACK) as r, ZmqWriter(r.url) as w:
        w.send(b"zero", timeout=WAIT)
        assert bytes(r.recv(WAIT).head) == b"zero"
        w._sequence += 1
        w.send(b"two", timeout=WAIT)
        wait_until(r.ready, "the message")
        assert r.held is None  # the error comes first
        with pytest.raises(errors.MessagesLost):
            r.recv(0)
        assert bytes(r.recv(0).head) == b"two"


def test_a_binding_push_writer_leaves_gaps_to_its_other_readers() -> None:
    with ZmqWriter(LOOPBACK, bind=True) as w, ZmqReader(w.url, bind=False) as r:
        w.send(b"zero", timeout=WAIT)
        w._sequence += 1  # a message round-robin gave another reader
        w.send(b"two", timeout=WAIT)
        assert bytes(r.recv(WAIT).head) == b"zero"
        assert bytes(r.recv(WAIT).head) == b"two"
        assert r.stats().lost == 0


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_tcp_connections_carry_keepalive_and_no_zmtp_heartbeat(side: str) -> None:
    with ZmqReader(LOOPBACK, heartbeat=0.2) as r, ZmqWriter(r.url, heartbeat=0.2) as w:
        w.send(b"x", timeout=WAIT)
        r.recv(WAIT)
        ends = {"reader": r._s, "writer": w._s}
        end = ends[side]
        end.events()
        (fd,) = end.peers.fds()
        with socket.socket(fileno=os.dup(fd)) as conn:
            assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1  # whole s
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert end.sock.getsockopt(zmq.HEARTBEAT_IVL) == 0
        assert not end.silent()  # the peer's kernel answers


def test_a_negative_heartbeat_is_refused() -> None:
    with pytest.raises(errors.InvalidConfig, match="heartbeat"):
        ZmqReader(LOOPBACK, heartbeat=-1)
