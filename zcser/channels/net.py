"""Channels over ZeroMQ: the same Sender/Receiver API and messages, between hosts.

`zcser.Sender("tcp://host:port")` / `zcser.Receiver("tcp://0.0.0.0:port")` (or `ipc:///path`)
build these (registered for the tcp:// and ipc:// schemes; needs `pip install zcser[net]`). A message is one multipart ZeroMQ message: the
codec's head (header, table, in-band bytes) in the first frame after a transport envelope and
the stream schema, then one frame per out-of-band buffer, sent without copying.

Receiving: buffers are ZeroMQ's own memory. libzmq 4.3 puts a received frame over 8 KiB 40 bytes
into its own malloc block, i.e. 8 bytes past a 16-byte boundary (measured). The default
`min_align=8` keeps them as zero-copy read-only views (numpy, torch and Arrow accept 8-byte
alignment for every dtype up to 8 bytes wide; 16-byte types such as clongdouble are then
flagged unaligned, still correct); it halves the time of a 100 MB receive against
`min_align=64` (the message format's alignment), which copies each buffer once to aligned
memory (counted in `stats().aligned_copies`). Any buffer below the chosen alignment is copied.

Security: no authentication or encryption (ZeroMQ CURVE is not wired in). Bind to 127.0.0.1,
an ipc:// path (created mode 0600) or a private network; strict decoding (the default codec)
keeps a hostile peer from running code, and `capacity` bounds what one message may hold.

The stream schema rides in every message (a few hundred bytes) and is checked once per distinct
schema, so late subscribers, several senders and reconnections are all verified; PUSH/PULL and
PUB/SUB hide which connection a message came from, so "first message of a connection" cannot
be told apart reliably.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transports import errors as terr
from zcser import errors
from zcser.channels import base, waiting
from zcser.channels.lease import Lease, Message
from zcser.channels.schema import check_stream, schema_bytes
from zcser.channels.shm import DEFAULT_CAPACITY, METADATA_SIZE
from zcser.codec import Codec, layout
from zcser.codec.memory import address as _address

try:
    from transports.zeromq import sockets as tzmq
except ImportError as _exc:  # pragma: no cover - exercised only without pyzmq
    tzmq = None  # type: ignore[assignment]
    _MISSING: ImportError | None = _exc
else:
    _MISSING = None

__all__ = ["NetReceiver", "NetReceiverStats", "NetSender", "NetSenderStats"]

_NO_BUFFERS: tuple[memoryview, ...] = ()


def _transport() -> Any:
    if tzmq is None:
        raise errors.UsageError(
            f"tcp:// and ipc:// channels need pyzmq: pip install 'zcser[net]' ({_MISSING})"
        )
    return tzmq


_translate = errors.translate
_log = logging.getLogger("zcser.channels")

ASYNC_RECHECK = 0.05
"""Longest sleep (s) of `NetSender.asend` and of a wait on a `NetReceiver` before checking again,
when another thread is using the socket (its changes do not wake the event loop)."""


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetSenderStats:
    """A network sender's counters. `zero_copy` buffers were sent from the caller's memory."""

    messages: int
    bytes: int
    zero_copy: int
    copy_fallbacks: int  # buffers under pyzmq's copy threshold (64 KiB), copied on purpose
    peers: int  # connections open now
    blocked_seconds: float


class NetSender(base.Sender):
    """The writing end of a tcp:// or ipc:// channel (`zcser.Sender(url)` builds one).

    pattern "push" (default: connects; each message goes to one receiver, blocks at the
    high-water mark) or "pub" (binds; fan-out, never blocks: a subscriber whose queue is full
    misses messages, counted in its `stats().lost`). `hwm`: messages queued per receiver.
    `heartbeat` (tcp://): seconds of silence before the kernel probes a receiver's host, and
    between its 3 probes; a host that answers none is dead (docs/network.md, Dead peers).
    """

    scheme = "tcp"

    def __init__(
        self,
        name: str,
        codec: Codec | None = None,
        *,
        pattern: str = "push",
        bind: bool | None = None,
        hwm: int | None = None,
        heartbeat: float | None = None,
    ) -> None:
        self._closed = True
        t = _transport()
        self.codec = codec if codec is not None else Codec()
        try:
            self._w = t.ZmqWriter(
                name,
                pattern=pattern,
                bind=bind,
                hwm=t.DEFAULT_HWM if hwm is None else hwm,
                heartbeat=t.DEFAULT_HEARTBEAT if heartbeat is None else heartbeat,
                metadata=schema_bytes(self.codec),
            )
        except terr.TransportError as exc:
            raise _translate(exc) from None
        self.name: str = self._w.url
        self._closed = False
        self._lock = threading.Lock()

    def send(self, obj: Any, timeout: float | None = None) -> None:
        """Send `obj` as one message; returns once ZeroMQ no longer needs its arrays (they may
        be modified then). Blocks while receivers' queues are full: `timeout` s (None: while
        a receiver lives; 0: one try, arrays copied) then BufferFull (not sent); ReaderDead if
        every receiver left. Timeout if the message was queued but not transmitted in time
        (it may still arrive; call flush() before modifying its arrays). Thread-safe: sends
        from several threads are serialised (a ZeroMQ socket is not thread-safe)."""
        with self._lock:
            self._send(obj, timeout)

    def _send(self, obj: Any, timeout: float | None) -> None:
        self._check_open()
        head, buffers = self._pack(obj)
        try:
            self._w.send(head, buffers, timeout)
        except terr.TransportError as exc:
            raise _translate(exc) from None

    def _pack(self, obj: Any) -> tuple[Any, Sequence[memoryview]]:
        """The head and out-of-band buffers of `obj`'s message."""
        packed = self.codec.pack(obj)
        if isinstance(packed, bytes):  # no buffer: the whole message is the head
            return packed, _NO_BUFFERS
        return packed.segments(0)[0][1], packed.buffers

    async def asend(self, obj: Any, timeout: float | None = None) -> None:
        """`send(obj, timeout)` for asyncio, in the loop's thread and never blocking it: each
        try queues the message at once or not at all; while every receiver's queue is full
        (or none is connected yet) the task awaits room with the loop's readers on the socket.
        The arrays are copied into ZeroMQ's queue (as with `timeout=0`), so they may be
        modified once it returns. BufferFull after `timeout` s (None: while a receiver lives;
        0: one try); ReaderDead if every receiver left. Cancelled, nothing was sent."""
        limit = waiting._check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        self._check_open()
        head, buffers = self._pack(obj)
        while True:
            if self._try_send(head, buffers):
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise errors.BufferFull(
                    f"the receivers of {self.name!r} did not take a message for {limit} s (the "
                    "high-water mark was reached, or none is connected); nothing was sent"
                )
            await self._room(remaining)

    def _try_send(self, head: Any, buffers: Sequence[memoryview]) -> bool:
        """One try that never blocks (False: no room now, or another thread is sending)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._check_open()
            return bool(self._w.try_send(head, buffers))
        except terr.TransportError as exc:
            raise _translate(exc) from None
        finally:
            self._lock.release()

    async def _room(self, remaining: float | None) -> None:
        """Await until the socket may have room, a connection came or went, or `remaining` s
        (and at most `ASYNC_RECHECK` s: another thread's send is not seen by the loop)."""
        loop = asyncio.get_running_loop()
        woke: asyncio.Future[None] = loop.create_future()

        def ring() -> None:
            if not woke.done():
                woke.set_result(None)

        fds: list[int] = []
        try:
            if self._lock.acquire(blocking=False):  # else another thread is sending: recheck
                try:
                    if self._closed:
                        return  # the next try raises Closed
                    fds = [waiting._fileno(sock) for sock in self._w.wait_sockets()]
                    for fd in fds:
                        loop.add_reader(fd, ring)
                    if self._w.writable():  # re-arms the edge-triggered FDs
                        return
                finally:
                    self._lock.release()
            limit = ASYNC_RECHECK if remaining is None else min(remaining, ASYNC_RECHECK)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(woke, limit)
        finally:
            for fd in fds:
                loop.remove_reader(fd)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until ZeroMQ has released the arrays of every message sent (only needed after
        a send raised Timeout: the message was queued and may still be delivered)."""
        with self._lock:
            self._check_open()
            self._flush(timeout)

    def _flush(self, timeout: float | None) -> None:
        try:
            self._w.flush(timeout)
        except terr.TransportError as exc:
            raise _translate(exc) from None

    def empty(
        self, shape: int | tuple[int, ...], dtype: Any = float, *, timeout: float | None = None
    ) -> np.ndarray:
        """A new uninitialised 64-byte-aligned array; on the network every array is sent without
        a copy, so this is only an aligned allocation (API parity with shm channels)."""
        self._check_open()
        dt = base.plain_dtype(dtype)
        dims = base.array_shape(shape)
        nbytes = math.prod(dims) * dt.itemsize
        raw = np.empty(nbytes + layout.ALIGN, np.uint8)
        skip = -raw.ctypes.data % layout.ALIGN
        array: np.ndarray = raw[skip : skip + nbytes].view(dt).reshape(dims)
        return array

    def stats(self) -> NetSenderStats:
        """Counters (see NetSenderStats)."""
        ws = self._w.stats()
        return NetSenderStats(
            messages=ws.messages,
            bytes=ws.bytes,
            zero_copy=ws.zero_copy_frames,
            copy_fallbacks=ws.copied_frames,
            peers=ws.peers,
            blocked_seconds=ws.blocked_seconds,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 1.0) -> None:
        """Mark the end of the stream (receivers then get Closed after the last message) and
        close the socket, waiting at most `timeout` s for the receivers to take what is still
        in transit (past it, the rest may be lost: they then see WriterDead, not Closed). A
        send blocked in another thread raises Closed first (within 50 ms; one whose message
        was queued already says so: it may still arrive)."""
        if self._closed:
            return
        self._w.interrupt()  # a send waiting in another thread lets go of the socket
        with self._lock:
            if not self._closed:
                self._closed = True
                self._w.close(timeout)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close(timeout=0)


# --- receiving -----------------------------------------------------------------------------------


SCHEMAS_KEPT = 8
"""Distinct stream schemas a network receiver remembers as checked (the newest): a peer that
sends many costs a re-check, never unbounded memory."""

NET_ALIGN = 8
"""Default receive alignment: libzmq's frames are 8-byte aligned, so 8 keeps receives zero-copy."""


@dataclass(frozen=True)
class NetReceiverStats:
    """A network receiver's counters; `lost`: messages missing from senders' sequences (pub/sub
    drops; messages of a connecting push sender lost with a broken connection, each gap also
    raised once as MessagesLost); `aligned_copies`: buffers copied to align."""

    max_message: int
    messages: int
    bytes: int
    frames_pinned: int  # received messages still held by live views
    bytes_pinned: int
    aligned_copies: int
    lost: int
    senders: int
    peers: int
    blocked_seconds: float


class _Frames:
    """The ZeroMQ frames of one message, held by its lease while views of them live."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[Any]) -> None:
        self.frames: list[Any] | None = frames

    def release(self) -> None:
        self.frames = None


class NetReceiver(base.Receiver):
    """The reading end of a tcp:// or ipc:// channel (`zcser.Receiver(url)` builds one).

    pattern "pull" (default: binds; tcp://HOST:0 picks a free port, see `.name`) or "sub"
    (connects to a "pub" sender). The largest message is `capacity // 2` bytes, as for shm
    channels; larger ones raise MessageTooLarge. A single frame larger than that plus the
    metadata block is never allocated: ZeroMQ closes that sender's connection for good, and
    the receiver sees it gone (WriterDead if it was the only one). `min_align`: a buffer whose
    address is not a multiple of it is copied once; 8 (default) keeps libzmq's frames zero-copy,
    64 (the format's alignment) copies every buffer (docs/network.md).
    """

    scheme = "tcp"

    def __init__(
        self,
        name: str,
        capacity: int | None = None,
        codec: Codec | None = None,
        *,
        pattern: str = "pull",
        bind: bool | None = None,
        hwm: int | None = None,
        heartbeat: float | None = None,
        min_align: int = NET_ALIGN,
    ) -> None:
        self._r: Any = None
        t = _transport()
        if min_align < 1 or min_align & (min_align - 1) or min_align > layout.ALIGN:
            raise errors.UsageError(f"min_align must be a power of two <= {layout.ALIGN}")
        self.codec = codec if codec is not None else Codec()
        if capacity is None:
            capacity = DEFAULT_CAPACITY
        elif isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2:
            raise errors.UsageError(f"capacity must be an int of bytes or None, not {capacity!r}")
        self.max_message = capacity // 2
        self.min_align = min_align
        try:
            self._r = t.ZmqReader(
                name,
                pattern=pattern,
                bind=bind,
                hwm=t.DEFAULT_HWM if hwm is None else hwm,
                heartbeat=t.DEFAULT_HEARTBEAT if heartbeat is None else heartbeat,
                max_frame=self.max_message + METADATA_SIZE,
            )
        except terr.TransportError as exc:
            raise _translate(exc) from None
        self.name: str = self._r.url
        self._checked: OrderedDict[bytes, None] = OrderedDict()  # schemas seen, newest last
        self._pinned: weakref.WeakKeyDictionary[Lease, int] = weakref.WeakKeyDictionary()
        self._copies = 0
        self._lock = threading.Lock()
        self._busy = False  # the last _wait_ready found another thread receiving

    def _next(self, timeout: float | None) -> Any:
        """The next data message; Closed once every sender ended its stream."""
        while True:
            try:
                rec = self._r.recv(timeout)
            except terr.WriterDead as exc:
                if self._r.writers.ended:
                    raise errors.Closed(
                        f"channel {self.name!r}: every sender closed and every message was read"
                    ) from None
                raise errors.WriterDead(str(exc)) from None
            except terr.TransportError as exc:
                raise _translate(exc) from None
            if not rec.end:
                break
            if self._r.writers.ended:
                raise errors.Closed(
                    f"channel {self.name!r}: the sender closed and every message has been read"
                )
        size = rec.nbytes  # the stream schema it carries counts too
        if size > self.max_message:
            raise errors.MessageTooLarge(
                f"a {size}-byte message arrived on {self.name!r}, over this receiver's limit "
                f"of {self.max_message} bytes; it was dropped. Create the Receiver with "
                f"capacity >= {2 * size} or send smaller objects"
            )
        meta = rec.metadata
        if meta.nbytes > METADATA_SIZE:
            raise errors.IncompatibleStream(
                f"a message on {self.name!r} carries a {meta.nbytes}-byte stream schema, over "
                f"the {METADATA_SIZE} bytes any zcser sender writes; it was dropped"
            )
        key = bytes(meta)
        checked = self._checked
        if key in checked:
            checked.move_to_end(key)
        else:
            check_stream(self.codec, key)
            checked[key] = None
            if len(checked) > SCHEMAS_KEPT:
                checked.popitem(last=False)
        return rec

    def _aligned(self, buffers: list[memoryview]) -> int:
        """How many buffers the codec will copy because of their address."""
        return sum(1 for b in buffers if b.nbytes and _address(b) % self.min_align)

    def recv(self, timeout: float | None = None, copy: bool = False) -> Any:
        """The next object. Blocks up to `timeout` s (None: while a sender is connected).
        Arrays are read-only (views of the received frames, or aligned copies, see min_align);
        copy=True gives private writable objects. Thread-safe: each message goes to one recv.
        MessagesLost when messages of a sender never arrived (a broken connection); the next
        recv returns the message after them."""
        with self._lock:
            rec = self._next(timeout)
        if not rec.buffers:  # in-band values are private copies anyway: no lease
            if copy:
                return self.codec.decode_parts(rec.head, [], copy=True)
            # Without buffers the head is a whole message: the codec's small-message path.
            return self.codec.decode_small(bytes(rec.head))
        if copy:
            return self.codec.decode_parts(rec.head, rec.buffers, copy=True)
        return self._decode(rec)[0]

    def recv_message(self, timeout: float | None = None) -> Message:
        """The next message with an explicit lifetime: `with rx.recv_message() as msg:`."""
        with self._lock:
            rec = self._next(timeout)
            value, lease = self._decode(rec)
        return Message(value, lease, rec.sequence, rec.nbytes)

    def _decode(self, rec: Any) -> tuple[Any, Lease]:
        lease = Lease(_Frames(rec.frames))
        copies = self._aligned(rec.buffers)
        if copies:
            self._copies += copies
            _log.debug(
                "%r: %d buffer(s) below min_align=%d copied to aligned memory",
                self.name,
                copies,
                self.min_align,
            )
        value = self.codec.decode_parts(rec.head, rec.buffers, owner=lease, align=self.min_align)
        self._pinned[lease] = rec.nbytes
        return value, lease

    def stats(self) -> NetReceiverStats:
        """Counters (see NetReceiverStats)."""
        rs = self._r.stats()
        pinned = list(self._pinned.values())
        return NetReceiverStats(
            max_message=self.max_message,
            messages=rs.messages,
            bytes=rs.bytes,
            frames_pinned=len(pinned),
            bytes_pinned=sum(pinned),
            aligned_copies=self._copies,
            lost=rs.lost,
            senders=rs.writers,
            peers=rs.peers,
            blocked_seconds=rs.blocked_seconds,
        )

    # -- zcser.wait and asyncio (channels/waiting.py) --------------------------------------------

    def _wait_ready(self) -> bool:
        """recv(timeout=0) would return at once (a message, or Closed/WriterDead/an error).
        The transport takes a waiting message from ZeroMQ and holds it for the next recv; an
        end mark of one sender while others still send is skipped here, as recv skips it."""
        r = self._r
        if r is None or r.closed:
            return True
        if not self._lock.acquire(blocking=False):
            self._busy = True  # another thread is receiving: look again soon
            return False
        try:
            self._busy = False
            while r.ready():
                held = r.held
                if held is None or not held.end or r.writers.ended:
                    return True
                r.drop_held()
            return False
        finally:
            self._lock.release()

    def _wait_fds(self) -> list[Any]:
        if self._r is None or self._busy:
            return []  # a ZeroMQ socket is not thread-safe: not polled while a recv uses it
        return list(self._r.wait_sockets())

    def _wait_backstop(self) -> float | None:
        return ASYNC_RECHECK if self._busy else None

    @property
    def closed(self) -> bool:
        return self._r is None or bool(self._r.closed)

    def close(self) -> None:
        """Stop listening (the port or ipc file is released). Views alive stay valid. A recv
        blocked in another thread raises Closed first (within 50 ms), and the socket is closed
        once it let go (a ZeroMQ socket is not thread-safe: only the thread using it may)."""
        if self._r is not None:
            self._r.interrupt()
            with self._lock:
                self._r.close()


base.register("tcp", NetSender, NetReceiver)
base.register("ipc", NetSender, NetReceiver)
