"""ZeroMQ transport: one message = one multipart ZeroMQ message, big buffers sent without copying.

```
first frame: envelope (32 bytes, see _zmqwire) | writer metadata | head bytes
then one frame per buffer, sent with copy=False: ZeroMQ reads the caller's memory directly
```

Patterns: "push"/"pull" (pipelines: every message goes to one reader, the writer blocks at the
high-water mark) and "pub"/"sub" (fan-out: every reader gets every message it can keep up with;
a reader whose queue is full misses messages, the writer never blocks). By default the reading
side of push/pull and the writing side of pub/sub bind, the other side connects.

Copies: push sends every buffer of 64 KiB or more (pyzmq's copy threshold) straight from the
caller's memory and waits for ZeroMQ to release it. pub copies each buffer once: a stalled
subscriber's queue would otherwise hold the publisher's arrays (and so the publisher) until it
reads again, which is the opposite of fan-out's drop policy. A send with timeout=0 (never
block, drop when full) copies too, since waiting for ZeroMQ to finish is a block.

Peer death: ZeroMQ reconnects silently, so each socket counts its connections from monitor
events. A process that dies (even by SIGKILL) has its connections closed by the kernel, seen at
once. A host that vanishes is seen by the kernel, never by ZeroMQ: tcp:// connections carry TCP
keepalive (`heartbeat` s idle, then KEEPALIVE_PROBES probes `heartbeat` s apart; the peer's
kernel answers them whatever its process does), and a push writer blocked on a full queue also
gives up on a connection whose peer kernel left its probes unanswered that long (`_silent`).
ipc:// needs nothing: its peers share our kernel. ZMTP heartbeats stay off: libzmq stops reading
a connection whose reading queue is at its high-water mark, so a PING sent over it goes
unanswered and the heartbeat timeout cuts a live, merely slow reader, losing what the kernel and
the queues held (and libzmq 4.3 then aborts a reconnecting reader: assertion `_input_stopped`).
A reader with nothing queued and no writer connected (after one was) raises WriterDead; a push
writer that cannot send and has no reader connected (after one was) raises ReaderDead.
Gaps: a push writer that connects (so every message goes to that one reader) flags its
messages, and the reader raises MessagesLost on a gap in its sequence, then returns the message
that showed it; a subscriber counts its gaps (pub drops by design).
Buffer memory: `send` returns only after ZeroMQ has released every zero-copy frame
(MessageTracker), so the caller may modify or free the arrays as soon as it returns.

Closing: a reading socket lingers forever (LINGER -1): with LINGER 0, libzmq drops the messages
a peer sent but the application has not read yet as soon as that peer disconnects. And libzmq
4.3 drops what is still in the kernel's socket buffer when a peer hangs up while the reading
socket's queue is at its high-water mark (its engine has stopped reading; the hang-up ends the
connection without reading the rest: ipc:// always, tcp:// on a reset). So a writer's close,
after the end mark, waits until the kernel holds nothing unread for any of its connections
(SIOCOUTQ of each connection's descriptor, known from the monitor events) before it hangs up.

Threads: a socket is used by one thread at a time; `interrupt()` (a store, safe from any
thread) makes a `recv`/`send` blocked in another thread raise TransportClosed within
`_POLL_MS`, so that thread lets go of the socket and the closing thread can close it.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import secrets
import socket as _socket
import stat
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from transports import errors
from transports.zeromq import wire

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_HWM",
    "DEFAULT_SPIN",
    "PATTERNS",
    "Received",
    "ZmqReader",
    "ZmqReaderStats",
    "ZmqWriter",
    "ZmqWriterStats",
    "is_url",
]

DEFAULT_HWM = 8
"""Messages queued per connection on each side before a push writer blocks (pub: drops)."""

DEFAULT_SPIN = 100
"""Readiness checks (cheap, non-blocking) a reader makes before sleeping in poll()."""

DEFAULT_HEARTBEAT = 1.0
"""Seconds of silence before the kernel probes a tcp:// peer, and between probes (whole
seconds, at least 1); a host that leaves KEEPALIVE_PROBES probes unanswered is dead. 0: none."""

KEEPALIVE_PROBES = 3
"""Unanswered keepalive probes after which the kernel drops a tcp:// connection."""

PATTERNS: dict[str, tuple[int, bool, bool]] = {
    "push": (zmq.PUSH, True, False),
    "pub": (zmq.PUB, True, True),
    "pull": (zmq.PULL, False, True),
    "sub": (zmq.SUB, False, False),
}
"""pattern -> (socket type, sends, binds by default)."""

SCHEMES = ("tcp://", "ipc://")
_POLL_MS = 50
_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: enum arithmetic costs microseconds per message
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOT_SENT = object()
_RCVMORE = int(zmq.RCVMORE)
_SIOCOUTQ = 0x5411  # Linux: bytes the peer has not read yet (ipc) / not acknowledged (tcp)
_INT = struct.Struct("i")
# struct tcp_info (linux/tcp.h), the fields _silent reads: u8 state, ca_state, retransmits
# (unanswered retransmissions in a row), probes (unanswered zero-window or keepalive probes in
# a row), then after 4 more bytes u32s from offset 8; last_ack_recv (ms since the peer's last
# ACK) at offset 56.
_TCP_INFO = struct.Struct("<BBBB52xI")
_TCP_INFO_LEN = 104
_OPEN_EVENTS = (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED)
_CLOSE_EVENTS = (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED)


def is_url(name: str) -> bool:
    """True for the endpoints this transport serves (tcp://host:port, ipc://path)."""
    return isinstance(name, str) and name.startswith(SCHEMES)


def _check_url(url: str) -> None:
    if not is_url(url):
        raise errors.InvalidName(
            f"{url!r} is not a ZeroMQ endpoint: use tcp://HOST:PORT or ipc:///PATH"
        )
    if url.startswith("tcp://"):
        port = url.rpartition(":")[2]
        if port != "*" and not (port.isdigit() and int(port) <= 65535):
            raise errors.InvalidName(
                f"{url!r}: the port must be 0-65535 (0 or * picks a free one), not {port!r}"
            )


def _ipc_path(url: str) -> str | None:
    return url[len("ipc://") :] if url.startswith("ipc://") else None


def _refuse_live_ipc(path: str) -> None:
    """ZeroMQ unlinks an existing ipc socket file on bind: refuse if a live peer listens there."""
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return
    finally:
        probe.close()
    raise errors.BufferExists(
        f"a live process already listens on ipc://{path}; pick another path or close it"
    )


class _Socket:
    """A configured ZeroMQ socket with its monitor and connection count."""

    def __init__(
        self,
        url: str,
        pattern: str,
        bind: bool | None,
        hwm: int,
        heartbeat: float,
        sending: bool,
        max_frame: int = -1,
    ) -> None:
        _check_url(url)
        if pattern not in PATTERNS or PATTERNS[pattern][1] != sending:
            allowed = sorted(p for p, spec in PATTERNS.items() if spec[1] == sending)
            raise errors.InvalidConfig(f"pattern {pattern!r}: use one of {allowed}")
        if hwm < 1:
            raise errors.InvalidConfig(f"hwm must be >= 1 message, got {hwm}")
        kind, _, binds = PATTERNS[pattern]
        self.pattern = pattern
        self.binds = binds if bind is None else bind
        self.tcp = url.startswith("tcp://")
        self.heartbeat = heartbeat if self.tcp else 0.0
        self.peers = wire.Peers()
        self._pid = os.getpid()
        self._ipc_inode: tuple[str, int] | None = None
        # A context of its own: closing it (term) is the only way to know that ZeroMQ has
        # written out what was queued before the process may exit.
        self.ctx: Any = zmq.Context(io_threads=1)
        self.sock = self.ctx.socket(kind)
        try:
            self._configure(hwm, heartbeat, max_frame, url)
            self.monitor = self.sock.get_monitor_socket(
                zmq.EVENT_CONNECTED | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
            )
            self.url = self._attach(url)
        except BaseException:
            self.ctx.destroy(linger=0)
            raise

    def _configure(self, hwm: int, heartbeat: float, max_frame: int, url: str) -> None:
        """Options before bind/connect: listeners copy them when created."""
        s = self.sock
        # LINGER also decides what becomes of the messages a peer sent before it disconnected:
        # 0 drops those not read yet. A reading socket keeps them until read (close() passes a
        # linger of its own, so closing it never waits).
        s.setsockopt(zmq.LINGER, 0 if PATTERNS[self.pattern][1] else -1)
        if max_frame > 0:
            s.setsockopt(zmq.MAXMSGSIZE, max_frame)
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
        if heartbeat < 0 or not math.isfinite(heartbeat):
            raise errors.InvalidConfig(f"heartbeat must be >= 0 seconds, got {heartbeat}")
        # No ZMTP heartbeats (module doc, Peer death): the kernel judges a peer's liveness.
        if heartbeat > 0 and url.startswith("tcp://"):
            seconds = max(1, math.ceil(heartbeat))
            s.setsockopt(zmq.TCP_KEEPALIVE, 1)
            s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, seconds)
            s.setsockopt(zmq.TCP_KEEPALIVE_INTVL, seconds)
            s.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_PROBES)
        if self.pattern == "push":
            s.setsockopt(zmq.IMMEDIATE, 1)  # no queueing towards readers not connected
        if self.pattern == "sub":
            s.setsockopt(zmq.SUBSCRIBE, b"")

    def _attach(self, url: str) -> str:
        """Bind or connect; the endpoint actually used (the port chosen for tcp://...:0)."""
        path = _ipc_path(url)
        if not self.binds:
            try:
                self.sock.connect(url)
            except zmq.ZMQError as exc:
                raise errors.InvalidName(f"cannot connect to {url!r}: {exc}") from None
            return url
        if path is not None:
            _refuse_live_ipc(path)
        if url.startswith("tcp://") and url.endswith(":0"):
            url = url[:-1] + "*"
        old = os.umask(0o177)  # the ipc socket file is created mode 0600
        try:
            self.sock.bind(url)
        except zmq.ZMQError as exc:
            raise errors.BufferExists(
                f"cannot bind {url!r} ({exc}): the address is in use or invalid; pick another "
                "(tcp://127.0.0.1:0 picks a free port)"
            ) from None
        finally:
            os.umask(old)
        if path is not None:
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
            self._ipc_inode = (path, os.stat(path).st_ino)
        return str(self.sock.getsockopt_string(zmq.LAST_ENDPOINT))

    def check_process(self) -> None:
        """ZeroMQ sockets do not survive fork: refuse use from a child process."""
        if os.getpid() != self._pid:
            raise errors.TransportUsageError(
                f"this socket for {self.url} was created in process {self._pid}: create the "
                "sender/receiver in the process that uses it (pass the URL, or a SenderFactory)"
            )

    def events(self) -> None:
        """Apply every pending monitor event to the connection count."""
        if self.monitor.closed or os.getpid() != self._pid:
            return
        while _readable(self.monitor):
            event = recv_monitor_message(self.monitor)
            code, fd = int(event["event"]), int(event["value"])
            if code in _OPEN_EVENTS:
                self.peers.opened(fd)
            elif code in _CLOSE_EVENTS:
                self.peers.closed(fd)

    def unsent(self) -> int | None:
        """Bytes written to our open connections that their peers' ZeroMQ has not read from
        the kernel yet (None where the system cannot say). The descriptors are libzmq's; one
        closed meanwhile says 0 (not a socket) or at worst another socket's count."""
        if os.uname().sysname != "Linux":
            return None  # pragma: no cover - SIOCOUTQ is Linux's
        total = 0
        for fd in self.peers.fds():
            buf = bytearray(_INT.size)
            try:
                fcntl.ioctl(fd, _SIOCOUTQ, buf)
            except OSError:
                continue  # closed since the last event (ENOTTY, EBADF): nothing left in it
            total += max(0, _INT.unpack(buf)[0])
        return total

    def silent(self) -> bool:
        """True when this socket has tcp:// connections and every one of them has data its
        peer's kernel does not take and leaves unanswered: KEEPALIVE_PROBES retransmissions or
        window probes in a row, nothing acknowledged for as long as keepalive allows an idle
        peer. A live peer's kernel answers every probe (its process need not run), which
        resets both counts; TCP alone would retry for many minutes (tcp_retries2)."""
        if not self.tcp or self.heartbeat <= 0 or os.uname().sysname != "Linux":
            return False
        fds = self.peers.fds()
        limit_ms = 1000 * max(1, math.ceil(self.heartbeat)) * (1 + KEEPALIVE_PROBES)
        return bool(fds) and all(_silent(fd, limit_ms) for fd in fds)

    def wait(self, flag: int, ms: int) -> bool:
        """Block up to `ms` for the socket to become ready (`flag`) or a monitor event."""
        poller = zmq.Poller()
        poller.register(self.sock, flag)
        poller.register(self.monitor, zmq.POLLIN)
        ready = dict(poller.poll(ms))
        return bool(ready.get(self.sock, 0) & flag)

    def close(self, linger: float = 0.0) -> None:
        """Close the socket, giving ZeroMQ up to `linger` s to write out what is queued (this
        blocks), and remove our ipc socket file. No-op in a forked child (the parent owns it)."""
        if os.getpid() != self._pid:
            return
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=max(0, int(linger * 1000)))
        self.ctx.term()
        if self._ipc_inode is not None:
            path, inode = self._ipc_inode
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)


def _receive(sock: Any) -> list[Any]:
    """One whole message without blocking (zmq.Again if none): the first frame (envelope and
    head, small) as bytes, which pyzmq makes faster than a zmq.Frame; the buffers as
    zmq.Frame objects, whose memory is used in place."""
    frames = [sock.recv(_NOBLOCK)]
    while sock.getsockopt(_RCVMORE):
        frames.append(sock.recv(copy=False))
    return frames


def _readable(sock: Any) -> bool:
    """A message is waiting (about 1.5 us: no Poller, no exception)."""
    return bool(int(sock.getsockopt(zmq.EVENTS)) & _POLLIN)


def _silent(fd: int, limit_ms: int) -> bool:
    """Whether the TCP connection `fd` (libzmq's) has unanswered probes and no ACK for
    `limit_ms`; False for anything else (closed since, not TCP, not Linux)."""
    try:
        with _socket.socket(fileno=os.dup(fd)) as probe:
            info = probe.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return False
    if len(info) < _TCP_INFO.size:
        return False  # pragma: no cover - every Linux since 2.6 gives more
    _, _, retransmits, probes, last_ack = _TCP_INFO.unpack_from(info)
    return bool(max(retransmits, probes) >= KEEPALIVE_PROBES and last_ack >= limit_ms)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _left_ms(deadline: float | None) -> int:
    """Milliseconds to the deadline, capped to the peer-check period."""
    if deadline is None:
        return _POLL_MS
    return max(0, min(_POLL_MS, int((deadline - time.monotonic()) * 1000)))


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


# --- writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZmqWriterStats:
    """A writer's counters; `zero_copy_frames` were read by ZeroMQ from the caller's memory."""

    messages: int
    bytes: int
    zero_copy_frames: int
    copied_frames: int  # small frames pyzmq copies (below zmq.COPY_THRESHOLD)
    peers: int
    blocked_seconds: float


class ZmqWriter:
    """The sending end: "push" (connects by default) or "pub" (binds by default).

    `metadata` (the stream schema) travels in every message, so readers joining late, several
    writers and reconnections are all checked. `hwm`: messages queued per reader.
    """

    def __init__(
        self,
        url: str,
        *,
        pattern: str = "push",
        bind: bool | None = None,
        hwm: int = DEFAULT_HWM,
        heartbeat: float = DEFAULT_HEARTBEAT,
        metadata: bytes = b"",
    ) -> None:
        self._closed = True
        self._s = _Socket(url, pattern, bind, hwm, heartbeat, sending=True)
        self.url = self._s.url
        self.pattern = pattern
        self._meta = bytes(metadata)
        self._writer = secrets.randbits(64)
        self._sequence = 0
        # push that connects: every message goes to the one reader bound there
        self._flags = wire.FLAG_ONE_READER if pattern == "push" and not self._s.binds else 0
        self._pending: deque[Any] = deque()  # trackers of messages ZeroMQ still holds
        self._messages = 0
        self._bytes = 0
        self._zero_copy = 0
        self._copied = 0
        self._blocked = 0.0
        self.interrupted = False  # interrupt(): a send or flush waiting in another thread ends
        self._closed = False

    def interrupt(self) -> None:
        """Make a send or flush blocked in another thread raise TransportClosed (within
        `_POLL_MS`), so that thread lets go of the socket before close(); a store, safe from
        any thread. Stays set until the writer's own close() clears it to end the stream."""
        self.interrupted = True

    def _check_interrupted(self) -> None:
        if self.interrupted:
            raise errors.TransportClosed(
                f"the writer of {self.url} was closed by another thread while sending"
            )

    def send(self, head: Any, buffers: Sequence[Any] = (), timeout: float | None = None) -> None:
        """Send one message: `head` bytes then one frame per buffer (not copied).

        Blocks while the readers' queues are full (push), at most `timeout` s (None: while a
        reader lives; 0: one try, buffers copied), then BufferFull (nothing was sent). Returns
        once ZeroMQ has released the buffers; if that takes longer than `timeout`, raises
        Timeout with the message still queued (do not modify its buffers until `flush` returns).
        """
        self._check_open()
        first = self._first(wire.KIND_DATA, len(buffers), head)
        deadline = _deadline(timeout)
        tracker = self._send([first, *buffers], deadline, timeout)
        self._messages += 1
        self._bytes += len(first)
        if buffers:
            self._bytes += sum(memoryview(b).nbytes for b in buffers)
        if tracker is not None:
            self._pending.append(tracker)
        if self._pending:
            self._flush(deadline, timeout)

    def try_send(self, head: Any, buffers: Sequence[Any] = ()) -> bool:
        """One try that never blocks: True once the message is queued (its buffers copied, so
        the caller may modify them at once), False when every reader's queue is full or none
        is connected yet (nothing was sent; `wait_sockets` signal when that may have changed);
        ReaderDead once every reader left."""
        self._check_open()
        first = self._first(wire.KIND_DATA, len(buffers), head)
        if self._send([first, *buffers], None, 0, block=False) is _NOT_SENT:
            self._s.events()
            if self._s.peers.lost:
                raise errors.ReaderDead(
                    f"no reader is connected to {self.url} any more (it closed or died); the "
                    "message was not sent. Start a reader, then a new writer."
                )
            return False
        self._messages += 1
        self._bytes += len(first) + sum(memoryview(b).nbytes for b in buffers)
        return True

    def writable(self) -> bool:
        """Whether a reader's queue has room now (reads the socket's EVENTS, which re-arms its
        edge-triggered FD, and applies pending connection events)."""
        self._s.events()
        return bool(int(self._s.sock.getsockopt(zmq.EVENTS)) & _POLLOUT)

    def wait_sockets(self) -> list[Any]:
        """The ZeroMQ sockets that become readable when the queue's room or the connections
        may have changed: the socket itself and its monitor (their FDs are edge triggered:
        call `writable()` before sleeping on them)."""
        return [] if self._closed else [self._s.sock, self._s.monitor]

    def flush(self, timeout: float | None = None) -> None:
        """Wait until ZeroMQ has released the buffers of every message sent (Timeout after
        `timeout` s, ReaderDead if every reader left)."""
        self._flush(_deadline(timeout), timeout)

    def _first(self, kind: int, count: int, head: Any) -> bytes:
        env = wire.pack_envelope(
            kind, self._writer, self._sequence, count, len(self._meta), self._flags
        )
        return b"".join((env, self._meta, head))

    def _send(
        self, frames: list[Any], deadline: float | None, timeout: float | None, block: bool = True
    ) -> Any:
        """Queue one multipart message; returns a tracker of every frame ZeroMQ holds (without
        `block`: `_NOT_SENT` when the first frame does not get in at once)."""
        s = self._s
        last = len(frames) - 1
        flags = _NOBLOCK | (_SNDMORE if last else 0)
        tracked = isinstance(frames[0], zmq.Frame)
        trackers = []
        try:
            first = s.sock.send(frames[0], flags, copy=not tracked, track=tracked)
        except zmq.Again:
            if not block:
                return _NOT_SENT
            first = self._send_blocked(frames[0], flags, deadline, timeout)
        if tracked:
            trackers.append(first)
        blocking = timeout is None or timeout > 0
        threshold = s.sock.copy_threshold if self.pattern == "push" and blocking else 1 << 62
        for i, buf in enumerate(frames[1:], start=1):
            zero_copy = memoryview(buf).nbytes >= threshold
            self._zero_copy += zero_copy
            self._copied += not zero_copy
            # the first frame got in, so ZeroMQ takes the rest of the message without blocking
            more = _SNDMORE if i < last else 0
            if zero_copy:
                trackers.append(s.sock.send(buf, more, copy=False, track=True))
            else:
                s.sock.send(buf, more)
        self._sequence += 1
        return zmq.MessageTracker(*trackers) if trackers else None

    def _send_blocked(
        self, first: Any, flags: int, deadline: float | None, timeout: float | None
    ) -> Any:
        """Retry the first frame until the queue has room, the deadline, or the reader's death."""
        s = self._s
        tracked = isinstance(first, zmq.Frame)
        start = time.monotonic()
        try:
            while True:
                s.events()
                self._check_interrupted()
                self._refuse_when_stuck(deadline, timeout)
                s.wait(zmq.POLLOUT, _left_ms(deadline))
                try:
                    return s.sock.send(first, flags, copy=not tracked, track=tracked)
                except zmq.Again:
                    continue
        finally:
            self._blocked += time.monotonic() - start

    def _refuse_when_stuck(self, deadline: float | None, timeout: float | None) -> None:
        s = self._s
        if s.peers.lost:
            raise errors.ReaderDead(
                f"no reader is connected to {self.url} any more (it closed or died); the "
                "message was not sent. Start a reader, then a new writer."
            )
        if s.silent():
            raise self._silent_error("the message was not sent")
        if _expired(deadline):
            if s.peers.connected:
                raise errors.BufferFull(
                    f"the readers of {self.url} did not take a message for {timeout} s "
                    f"(high-water mark reached); nothing was sent"
                )
            raise errors.Timeout(
                f"no reader connected to {self.url} within {timeout} s; nothing was sent"
            )

    def _silent_error(self, what: str) -> errors.ReaderDead:
        seconds = max(1, math.ceil(self._s.heartbeat)) * (1 + KEEPALIVE_PROBES)
        return errors.ReaderDead(
            f"the host of every reader of {self.url} has answered nothing for {seconds} s "
            f"(it vanished, or the network between us did); {what}. Start a reader, then a "
            "new writer."
        )

    def _flush(self, deadline: float | None, timeout: float | None) -> None:
        """Until ZeroMQ has released every zero-copy frame of every message sent."""
        start = time.monotonic()
        pending = self._pending
        try:
            while pending:
                if pending[0].done:
                    pending.popleft()
                    continue
                with contextlib.suppress(zmq.NotDone):
                    pending[0].wait(_left_ms(deadline) / 1000 or 0.001)
                if pending[0].done:
                    continue
                if self.interrupted:
                    raise errors.TransportClosed(
                        f"the writer of {self.url} was closed by another thread while a message "
                        "was being transmitted: it may still arrive, and ZeroMQ may read its "
                        "buffers until that close() returns"
                    )
                self._s.events()
                if self._s.peers.lost:
                    raise errors.ReaderDead(
                        f"the reader of {self.url} disconnected while the message was being "
                        "sent; its buffers stay with ZeroMQ until it is dropped"
                    )
                if self._s.silent():
                    raise self._silent_error("the message may not arrive")
                if _expired(deadline):
                    raise errors.Timeout(
                        f"the message to {self.url} is queued but not yet transmitted after "
                        f"{timeout} s; do not modify its buffers before flush() returns"
                    )
        finally:
            self._blocked += time.monotonic() - start

    def end(self, timeout: float | None = 1.0) -> None:
        """Send the end-of-stream mark and wait until it (hence every message) was written.
        push hands each message to one reader in turn, so the mark goes once per connection."""
        self._check_open()
        deadline = _deadline(timeout)
        self._s.events()
        copies = max(1, self._s.peers.connected) if self.pattern == "push" else 1
        for _ in range(copies):
            first = zmq.Frame(self._first(wire.KIND_END, 0, b""), track=True)
            self._pending.append(self._send([first], deadline, timeout))
        self._flush(deadline, timeout)

    def _drain(self, deadline: float | None) -> None:
        """Until the readers' ZeroMQ has taken from the kernel all we wrote (module doc,
        Closing), every reader left, the deadline, or an interrupt."""
        s = self._s
        pause = 0.001
        while True:
            s.events()
            if not s.unsent() or self.interrupted or _expired(deadline):
                return
            time.sleep(pause if deadline is None else min(pause, _left_ms(deadline) / 1000))
            pause = min(pause * 2, _POLL_MS / 1000)

    def stats(self) -> ZmqWriterStats:
        self._s.events()
        return ZmqWriterStats(
            messages=self._messages,
            bytes=self._bytes,
            zero_copy_frames=self._zero_copy,
            copied_frames=self._copied,
            peers=self._s.peers.connected,
            blocked_seconds=self._blocked,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise errors.TransportClosed(f"the writer of {self.url} is closed")
        self._s.check_process()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = 1.0) -> None:
        """End the stream (best effort within `timeout` s) and close the socket."""
        if self._closed:
            return
        deadline = _deadline(timeout)
        self.interrupted = False  # interrupt() freed the socket for this: the end mark goes out
        try:
            self._s.events()
            if self._s.peers.connected:
                self.end(timeout)
                self._drain(deadline)
        except errors.TransportError:
            pass  # no reader, or it does not read: the readers see the disconnection instead
        finally:
            self._closed = True
            # a tracker is done once ZeroMQ encoded a small frame, not once it was written
            self._s.close(linger=1.0 if deadline is None else deadline - time.monotonic())

    def __enter__(self) -> ZmqWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- reading -------------------------------------------------------------------------------------


class Received(NamedTuple):
    """One message: the frames are kept in `frames` (views below point into them)."""

    kind: int
    writer: int
    sequence: int
    metadata: memoryview
    head: memoryview
    buffers: list[memoryview]
    frames: list[Any]
    nbytes: int

    @property
    def end(self) -> bool:
        return self.kind == wire.KIND_END


@dataclass(frozen=True)
class ZmqReaderStats:
    """A reader's counters; `lost`: messages missing from writers' sequences (sub: all gaps;
    pull: gaps of writers flagged FLAG_ONE_READER, each also raised as MessagesLost)."""

    messages: int
    bytes: int
    lost: int
    writers: int
    peers: int
    disconnects: int
    blocked_seconds: float


class ZmqReader:
    """The receiving end: "pull" (binds by default) or "sub" (connects by default).

    `max_frame` bytes: ZeroMQ drops a larger frame and the connection that sent it (the
    reader sees that writer disconnect; the writer reconnects by itself).
    """

    def __init__(
        self,
        url: str,
        *,
        pattern: str = "pull",
        bind: bool | None = None,
        hwm: int = DEFAULT_HWM,
        heartbeat: float = DEFAULT_HEARTBEAT,
        max_frame: int = -1,
        spin: int = DEFAULT_SPIN,
    ) -> None:
        self._closed = True
        self._s = _Socket(url, pattern, bind, hwm, heartbeat, sending=False, max_frame=max_frame)
        self.url = self._s.url
        self.pattern = pattern
        self.writers = wire.Writers(count_gaps=pattern == "sub")
        self._spin = spin
        self._messages = 0
        self._bytes = 0
        self._blocked = 0.0
        # taken by ready(), or kept behind the MessagesLost its gap raised: the next recvs
        self._held: deque[Received | errors.TransportError] = deque()
        self.interrupted = False  # interrupt(): a recv waiting in another thread ends
        self._closed = False

    def interrupt(self) -> None:
        """Make a recv blocked in another thread raise TransportClosed (within `_POLL_MS`),
        so that thread lets go of the socket before close(); a store, safe from any thread."""
        self.interrupted = True

    def recv(self, timeout: float | None = None) -> Received:
        """The next message (data or end mark). Blocks up to `timeout` s (None: while a writer
        is connected or none has come yet); WriterDead once no writer is connected any more
        and nothing is queued; PeerProtocolError for frames no zcser writer sends."""
        if self._closed:
            raise errors.TransportClosed(f"the reader of {self.url} is closed")
        s = self._s
        s.check_process()
        if self._held:
            held = self._held.popleft()
            if isinstance(held, errors.TransportError):
                raise held
            return held
        sock = s.sock
        try:
            return self._parse(_receive(sock))
        except zmq.Again:
            pass
        deadline = _deadline(timeout)
        start = time.monotonic()
        try:
            for _ in range(self._spin):  # a message is often microseconds away: skip the sleep
                if _readable(sock):
                    break
            while True:
                try:
                    frames = _receive(sock)
                    break
                except zmq.Again:
                    pass
                if self.interrupted:
                    raise errors.TransportClosed(
                        f"the reader of {self.url} was closed by another thread while receiving"
                    )
                s.events()
                if s.peers.lost and not _readable(sock):
                    raise errors.WriterDead(
                        f"no writer is connected to {self.url} any more and every message it "
                        "sent has been read"
                    )
                if _expired(deadline):
                    raise errors.Timeout(f"no message on {self.url} within {timeout} s")
                s.wait(zmq.POLLIN, _left_ms(deadline))
        finally:
            self._blocked += time.monotonic() - start
        return self._parse(frames)

    def ready(self) -> bool:
        """Whether `recv(timeout=0)` returns at once, never blocking: a message waiting (taken
        from ZeroMQ and held for the next recv: `held`), or an error (closed, used from
        another process, every writer gone, frames no zcser writer sends). Reads the socket's
        and the monitor's EVENTS, which re-arms their edge-triggered FDs (`wait_sockets`)."""
        if self._closed or os.getpid() != self._s._pid or self._held:
            return True
        s = self._s
        if self._hold():
            return True
        s.events()
        return self._hold() or s.peers.lost

    def _hold(self) -> bool:
        if not _readable(self._s.sock):
            return False
        try:
            self._held.append(self._parse(_receive(self._s.sock)))
        except zmq.Again:  # pragma: no cover - EVENTS said POLLIN: a whole message is there
            return False
        except errors.TransportError as exc:
            self._held.appendleft(exc)  # before the message a MessagesLost kept
        return True

    @property
    def held(self) -> Received | None:
        """The message `ready()` took, which the next recv returns (None if none, or if what
        it took is an error the next recv raises)."""
        held = self._held[0] if self._held else None
        return None if isinstance(held, errors.TransportError) else held

    def drop_held(self) -> None:
        """Forget the message `ready()` took (one the caller would skip anyway)."""
        if self._held:
            self._held.popleft()

    def wait_sockets(self) -> list[Any]:
        """The ZeroMQ sockets that become readable when `ready()` may have changed: the socket
        and its monitor (their FDs are edge triggered: call `ready()` before sleeping)."""
        return [] if self._closed else [self._s.sock, self._s.monitor]

    def _parse(self, frames: list[Any]) -> Received:
        views = [memoryview(f).cast("B") for f in frames]
        env = wire.parse_envelope(views[0], len(views))
        gap = self.writers.see(env)
        nbytes = sum(v.nbytes for v in views)
        self._messages += env.kind == wire.KIND_DATA
        self._bytes += nbytes
        first = views[0]
        rec = Received(
            kind=env.kind,
            writer=env.writer,
            sequence=env.sequence,
            metadata=first[wire.META_START : env.head_start],
            head=first[env.head_start :],
            buffers=views[1:],
            frames=frames,
            nbytes=nbytes,
        )
        if gap and self.pattern != "sub":  # subscribers count theirs: pub drops by design
            self._held.append(rec)
            raise errors.MessagesLost(
                f"{gap} message(s) from writer {env.writer:#018x} to {self.url} never arrived "
                f"(sequence {env.sequence - gap} to {env.sequence - 1}): its connection broke "
                "and was made again; the next read returns the message after them",
                lost=gap,
                first=env.sequence - gap,
                writer=env.writer,
            )
        return rec

    def stats(self) -> ZmqReaderStats:
        self._s.events()
        return ZmqReaderStats(
            messages=self._messages,
            bytes=self._bytes,
            lost=self.writers.lost,
            writers=self.writers.count,
            peers=self._s.peers.connected,
            disconnects=self._s.peers.disconnects,
            blocked_seconds=self._blocked,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the socket (stop listening); views of received messages stay valid."""
        if not self._closed:
            self._closed = True
            self._held.clear()
            self._s.close()

    def __enter__(self) -> ZmqReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
