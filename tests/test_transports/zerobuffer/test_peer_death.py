"""Every blocking call returns or raises within its timeout (plus a generous margin) when the
peer is dead, stopped (SIGSTOP) or never came: read, write and reserve on the transport,
recv and send on the channel.

test_zerobuffer.py covers the basic killed-writer / killed-reader cases; this is the full
matrix, including `timeout=None` (wait while the peer lives) against a peer that dies during
the wait, and a stopped peer, which is alive and must give Timeout/BufferFull, not PeerDead.
Each blocking call runs under a watchdog thread, so a hang fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import posix_ipc
import pytest
from conftest import unique_name
from fixtures import roles

import zcser
from transports import errors as E
from transports.zerobuffer import BufferConfig, Reader, Writer
from transports.zerobuffer import layout as L
from zcser import errors as ZE

CTX = multiprocessing.get_context("fork")
RING = 4096
TIMEOUT = 0.5
MARGIN = 5.0
"""'Did not hang past its timeout', not a performance bound."""


def _within(call: Callable[[], Any], limit: float) -> tuple[BaseException | None, float]:
    """Run `call` on a watchdog thread; (exception raised or None, seconds taken)."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            result.append(exc)
        else:
            result.append(None)

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the call hung for more than {limit} s"
    return result[0], time.monotonic() - start


class _Peer:
    """A forked child running a role; reports ('ready'|'attached', pid) on a pipe."""

    def __init__(self, target: Any, *args: Any) -> None:
        self._recv, send = CTX.Pipe(duplex=False)
        self.proc = CTX.Process(target=target, args=(*args, send), daemon=True)
        self.proc.start()
        send.close()
        assert self._recv.poll(30), "the peer did not start"
        self.event, self.pid = self._recv.recv()

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.join(10)
        self._recv.close()


@pytest.fixture
def name() -> str:
    return unique_name("pd")


@pytest.fixture
def reader(name: str) -> Iterator[Reader]:
    with Reader(name, BufferConfig(0, RING), timeout=TIMEOUT) as r:
        yield r


def _kill_later(peer: _Peer, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, peer.kill)
    timer.start()
    return timer


# --- the reader survives -------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [TIMEOUT, None])
def test_read_from_a_writer_killed_before_the_call(
    name: str, reader: Reader, timeout: float | None
) -> None:
    peer = _Peer(roles.idle_writer, name, 2)
    peer.kill()
    for seq in (1, 2):  # what it published is still delivered first
        with reader.read(timeout=0) as frame:
            assert roles.check(frame.data, frame.sequence) == seq
    exc, _took = _within(lambda: reader.read(timeout=timeout), (timeout or 0) + MARGIN)
    assert isinstance(exc, E.WriterDead) and f"pid {peer.pid}" in str(exc)


@pytest.mark.parametrize("timeout", [3.0, None])
def test_read_while_the_writer_is_killed(name: str, reader: Reader, timeout: float | None) -> None:
    peer = _Peer(roles.idle_writer, name, 0)
    timer = _kill_later(peer, 0.2)
    exc, took = _within(lambda: reader.read(timeout=timeout), (timeout or 0) + MARGIN)
    timer.join()
    assert isinstance(exc, E.WriterDead), exc
    assert took < 0.2 + MARGIN


def test_read_from_a_stopped_writer_times_out_as_alive(name: str, reader: Reader) -> None:
    peer = _Peer(roles.idle_writer, name, 0)
    try:
        peer.stop()
        exc, took = _within(lambda: reader.read(), TIMEOUT + MARGIN)
        assert type(exc) is E.Timeout and f"pid {peer.pid}) is alive" in str(exc)
        assert took >= TIMEOUT
    finally:
        peer.kill()
    exc, _ = _within(lambda: reader.read(), TIMEOUT + MARGIN)
    assert isinstance(exc, E.WriterDead)


def test_read_with_no_writer_ever_times_out(reader: Reader) -> None:
    exc, took = _within(lambda: reader.read(), TIMEOUT + MARGIN)
    assert type(exc) is E.Timeout and "no writer has connected yet" in str(exc)
    assert took >= TIMEOUT


def test_unposted_frame_of_a_writer_killed_before_posting_is_still_read(
    name: str, reader: Reader
) -> None:
    """Regression (found by the kill loop): a writer killed after publishing a frame in the OIEB
    but before posting sem-w left that frame unread: the reader raised WriterDead at once, and
    a writer taking over later saw its own frames delivered one behind."""
    peer = _Peer(roles.idle_writer, name, 1)
    sem = posix_ipc.Semaphore(L.sem_w_name(name))
    try:
        assert sem.acquire(0) is None  # take the post back: as if the kill came before it
    finally:
        sem.close()
    peer.kill()
    with reader.read() as frame:
        assert roles.check(frame.data, frame.sequence) == 1
    with pytest.raises(E.WriterDead):
        reader.read()


# --- the writer survives -------------------------------------------------------------------------


def _full_writer(name: str, timeout: float | None) -> Writer:
    w = Writer(name, timeout=timeout)
    w.write(b"f" * (RING - L.HEADER_SIZE), timeout=0)
    return w


@pytest.mark.parametrize("call", ["write", "reserve"])
@pytest.mark.parametrize("timeout", [TIMEOUT, None])
def test_write_to_a_reader_killed_before_the_call(
    name: str, call: str, timeout: float | None
) -> None:
    peer = _Peer(roles.idle_reader, name, RING)
    try:
        w = _full_writer(name, timeout)
    finally:
        peer.kill()
    with w:
        op = getattr(w, call)
        exc, _ = _within(lambda: op(b"x" if call == "write" else 1), (timeout or 0) + MARGIN)
        assert isinstance(exc, E.ReaderDead) and f"pid {peer.pid}" in str(exc)
    Reader(name, BufferConfig(0, 64)).close()  # the dead reader's leftovers are reclaimed


@pytest.mark.parametrize("call", ["write", "reserve"])
def test_write_blocked_forever_while_the_reader_is_killed(name: str, call: str) -> None:
    peer = _Peer(roles.idle_reader, name, RING)
    with _full_writer(name, None) as w:
        timer = _kill_later(peer, 0.2)
        op = getattr(w, call)
        exc, _took = _within(lambda: op(b"x" if call == "write" else 1), MARGIN)
        timer.join()
        assert isinstance(exc, E.ReaderDead), exc
    Reader(name, BufferConfig(0, 64)).close()


@pytest.mark.parametrize("call", ["write", "reserve"])
def test_write_to_a_stopped_reader_is_buffer_full(name: str, call: str) -> None:
    peer = _Peer(roles.idle_reader, name, RING)
    try:
        with _full_writer(name, TIMEOUT) as w:
            peer.stop()
            op = getattr(w, call)
            exc, took = _within(lambda: op(b"x" if call == "write" else 1), TIMEOUT + MARGIN)
            assert type(exc) is E.BufferFull and f"pid {peer.pid}) is alive" in str(exc)
            assert took >= TIMEOUT
    finally:
        peer.kill()
    Reader(name, BufferConfig(0, 64)).close()


def test_writer_with_no_reader_ever_fails_at_once(name: str) -> None:
    exc, _ = _within(lambda: Writer(name), MARGIN)
    assert isinstance(exc, E.BufferNotFound) and "start the reader first" in str(exc)


def test_writer_to_a_reader_that_died_before_attach(name: str) -> None:
    peer = _Peer(roles.idle_reader, name, RING)
    peer.kill()
    exc, _ = _within(lambda: Writer(name), MARGIN)
    assert isinstance(exc, E.ReaderDead)
    Reader(name, BufferConfig(0, 64)).close()


# --- the channel: recv and send ------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [TIMEOUT, None])
def test_recv_while_the_sender_is_killed(name: str, timeout: float | None) -> None:
    with zcser.Receiver(name, capacity=RING) as rx:
        peer = _Peer(roles.idle_sender, name, 1)
        assert rx.recv(timeout=0) == {"i": 0}
        timer = _kill_later(peer, 0.2)
        exc, _ = _within(lambda: rx.recv(timeout=timeout), (timeout or 0) + MARGIN)
        timer.join()
        if timeout is None or not isinstance(exc, ZE.Timeout):
            assert isinstance(exc, ZE.WriterDead), exc
        exc, _ = _within(lambda: rx.recv(timeout=timeout), (timeout or 0) + MARGIN)
        assert isinstance(exc, ZE.WriterDead), exc


def test_recv_from_a_stopped_sender_times_out(name: str) -> None:
    with zcser.Receiver(name, capacity=RING) as rx:
        peer = _Peer(roles.idle_sender, name, 0)
        try:
            peer.stop()
            exc, took = _within(lambda: rx.recv(timeout=TIMEOUT), TIMEOUT + MARGIN)
            assert type(exc) is ZE.Timeout and took >= TIMEOUT
        finally:
            peer.kill()


def test_recv_with_no_sender_ever_times_out(name: str) -> None:
    with zcser.Receiver(name, capacity=RING) as rx:
        exc, took = _within(lambda: rx.recv(timeout=TIMEOUT), TIMEOUT + MARGIN)
        assert type(exc) is ZE.Timeout and took >= TIMEOUT


def _fill_channel(tx: zcser.Sender) -> None:
    with contextlib.suppress(ZE.BufferFull):
        for _ in range(RING):
            tx.send(b"z" * 100, timeout=0)


def test_send_blocked_forever_while_the_receiver_is_killed(name: str) -> None:
    peer = _Peer(roles.idle_receiver, name, RING)
    with zcser.Sender(name) as tx:
        _fill_channel(tx)
        timer = _kill_later(peer, 0.2)
        exc, _ = _within(lambda: tx.send(b"z" * 100, timeout=None), MARGIN)
        timer.join()
        assert isinstance(exc, ZE.ReaderDead), exc
    zcser.Receiver(name, capacity=RING).close()


def test_send_to_a_stopped_receiver_is_buffer_full(name: str) -> None:
    peer = _Peer(roles.idle_receiver, name, RING)
    try:
        with zcser.Sender(name) as tx:
            _fill_channel(tx)
            peer.stop()
            exc, took = _within(lambda: tx.send(b"z" * 100, timeout=TIMEOUT), TIMEOUT + MARGIN)
            assert type(exc) is ZE.BufferFull and took >= TIMEOUT
    finally:
        peer.kill()
    zcser.Receiver(name, capacity=RING).close()


def test_sender_with_no_receiver_fails_within_its_timeout(name: str) -> None:
    exc, _ = _within(lambda: zcser.Sender(name, timeout=0), MARGIN)
    assert isinstance(exc, ZE.ChannelError) and "start the Receiver first" in str(exc)
    exc, _ = _within(lambda: zcser.Sender(name, timeout=0.5), 0.5 + MARGIN)
    assert isinstance(exc, ZE.ChannelError) and "waited 0.5 s" in str(exc)
