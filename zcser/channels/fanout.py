"""One publisher, many subscribers: every message written once, read in place by all.

```
pub = zcser.Publisher(name, capacity=256 << 20, subscribers=8)   # creates the shared memory
sub = zcser.Subscriber(name, policy="block")                      # from any process
pub.send(obj)                     # one copy into shared memory, whatever the number of readers
arr = pub.empty(shape, dtype)     # allocated in the next message: no copy at all
obj = sub.recv()                  # read-only views into shared memory
```

`Publisher(NAME)` / `Subscriber(NAME)` build `ShmPublisher` / `ShmSubscriber` (a segment in
shared memory, transports/fanout); a `tcp://` or `ipc://` name builds `NetPublisher` /
`NetSubscriber` (ZeroMQ PUB/SUB, one copy per subscriber on the wire), like `Sender` and
`Receiver`, through a registry of their own.

Policies, for a subscriber slower than the publisher:
- "block": lossless; the publisher waits for it (up to its send timeout, then BufferFull).
- "drop": the publisher moves its cursor past the messages it must overwrite; it misses them
  (`msg.missed`, `stats().missed`); the publisher and the others go on.
- "latest": each recv returns the newest message published, skipping the ones before.
Pins: views pin their message; a subscriber's pins may span at most its share of the ring
(capacity / (2 x subscribers) bytes, from its oldest held message to its newest, always at
least one message). A message beyond that share is received as a private copy
(`stats().copied`), so no subscriber's views ever take ring memory from the others; the
publisher writes around the pins of every subscriber.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from transports import errors as terr
from transports.fanout import FanoutFrame, FanoutReader, FanoutWriter, SlotsTaken
from zcser import errors
from zcser.channels import base, names, waiting
from zcser.channels.arena import FrameArena
from zcser.channels.lease import Lease, Message
from zcser.channels.net import NetReceiver, NetSender
from zcser.channels.schema import check_stream, schema_bytes
from zcser.channels.shm import DEFAULT_CAPACITY, DEFAULT_HEADROOM
from zcser.codec import Codec, Plan, layout, memory

__all__ = [
    "NetPublisher",
    "NetSubscriber",
    "Publisher",
    "PublisherStats",
    "ShmPublisher",
    "ShmSubscriber",
    "Subscriber",
    "SubscriberInfo",
    "SubscriberStats",
    "register",
]

_PUBLISHERS: dict[str, type[Publisher]] = {}
_SUBSCRIBERS: dict[str, type[Subscriber]] = {}
_translate = errors.translate
_TransportError = terr.TransportError
_log = logging.getLogger("zcser.channels")

DEFAULT_SUBSCRIBERS = 8
CONNECT_TIMEOUT = 5.0
"""Seconds a Subscriber waits by default for its Publisher to create the segment, and for a
free subscriber slot when every one is taken."""
SMALL_MESSAGE = 16 * 1024
"""Messages up to this size are copied out on receipt (their slot in the ring goes back at
once), as on shm channels."""


_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
"""Every shared-memory end of this process, so a forked child knows its copies are not its own
(no getpid() per message), and the exit closes the publishers left open."""
_NOTHING: Any = object()  # no message waiting in ShmSubscriber._ready
_get_ident = threading.get_ident


def _after_fork_in_child() -> None:
    for end in list(_LIVE):
        end._forked = True


def _close_publishers_at_exit() -> None:
    """Close the publishers still open at interpreter exit (a script stopped by Ctrl-C without
    `with`): their subscribers then end with Closed after the last message, and the names go.
    `__del__` is not enough: at shutdown it may run after the modules it needs were torn down,
    or not at all. A publisher another thread is using now is left to the exit (its
    subscribers see WriterDead and remove the segment), never waited for."""
    for end in list(_LIVE):
        if isinstance(end, ShmPublisher) and not end._closed and not end._forked:
            try:  # noqa: SIM105
                end._gate.attempt(end._close)
            except Exception:
                pass


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_publishers_at_exit)


def register(scheme: str, publisher: type[Publisher], subscriber: type[Subscriber]) -> None:
    """Make `Publisher(scheme://...)` and `Subscriber(scheme://...)` build these classes."""
    _PUBLISHERS[scheme] = publisher
    _SUBSCRIBERS[scheme] = subscriber


def _check_timeout(timeout: object) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise errors.UsageError(
            f"timeout must be None (wait while the peer lives) or seconds >= 0, not {timeout!r}"
        )


def _check_policy(policy: object, allowed: tuple[str, ...]) -> str:
    if policy not in allowed:
        raise errors.UsageError(
            f"policy must be one of {', '.join(repr(p) for p in allowed)}, not {policy!r}"
        )
    return str(policy)


def _shm_name(name: str) -> str:
    return name[len("shm://") :] if name.startswith("shm://") else name


@dataclass(frozen=True)
class SubscriberInfo:
    """One subscriber as its publisher sees it."""

    pid: int
    policy: str
    lag: int  # messages published that it has not taken yet
    pinned_bytes: int  # ring bytes its held messages keep (oldest to newest)


@dataclass(frozen=True)
class PublisherStats:
    capacity: int
    messages: int
    bytes: int
    zero_copy: int  # messages whose empty() arrays were sent in place
    copy_fallbacks: int
    blocked_seconds: float  # time spent waiting for room (block subscribers, pins)
    subscribers: tuple[SubscriberInfo, ...]  # connected now

    @property
    def connected(self) -> int:
        return len(self.subscribers)


@dataclass(frozen=True)
class SubscriberStats:
    policy: str
    messages: int  # messages received
    bytes: int
    missed: int  # messages skipped (drop, latest)
    copied: int  # received as private copies: this subscriber's pins were over its share
    frames_pinned: int
    bytes_pinned: int
    blocked_seconds: float


class Publisher:
    """The writing end of a fan-out: `Publisher(name)` creates it; any number of Subscribers
    (up to `subscribers`) read every message. A bare NAME (or shm://NAME) is shared memory
    (`ShmPublisher`); tcp:// and ipc:// are ZeroMQ PUB (`NetPublisher`)."""

    scheme: ClassVar[str] = ""
    name: str
    __signature__ = base.BaseSignature(_PUBLISHERS)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(base._subclass(cls, Publisher, _PUBLISHERS, args, kwargs))

    def send(self, obj: Any, timeout: float | None = None) -> None:
        """Publish `obj` to every subscriber (written once into shared memory)."""
        raise NotImplementedError

    def empty(
        self, shape: int | tuple[int, ...], dtype: Any = float, *, timeout: float | None = None
    ) -> np.ndarray:
        """A new uninitialised array inside the next message, to fill and send (no copy)."""
        raise NotImplementedError

    def stats(self) -> Any:
        """Counters, and the subscribers connected with their lag and pinned bytes."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        raise NotImplementedError

    def close(self, timeout: float = 1.0) -> None:
        """End the stream: subscribers get every message published, then the end."""
        raise NotImplementedError

    async def asend(self, obj: Any, timeout: float | None = None) -> None:
        """`send` for asyncio: waits for room without blocking the event loop."""
        await waiting.asend(self, obj, timeout)

    def _check_open(self) -> None:
        if self.closed:
            raise errors.Closed(f"publisher {self.name!r} is closed; create a new Publisher")

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Publisher:  # `async with`: close() does not wait on the peer
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a {type(self).__name__} owns its segment and cannot be pickled: pass the name to "
            "the subscribing processes"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {'closed' if self.closed else 'open'}>"


class Subscriber(base.Receiving):
    """A reading end of a fan-out: `Subscriber(name, policy=...)` joins a Publisher and gets
    every message published from then on (see the module doc for the policies)."""

    scheme: ClassVar[str] = ""
    name: str
    __signature__ = base.BaseSignature(_SUBSCRIBERS)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(base._subclass(cls, Subscriber, _SUBSCRIBERS, args, kwargs))

    def recv(self, timeout: float | None = None, copy: bool = False) -> Any:
        """The next object (read-only views pinning its message; copy=True: private)."""
        raise NotImplementedError

    def recv_message(self, timeout: float | None = None) -> Any:
        """The next message with an explicit lifetime and `missed` (messages skipped)."""
        raise NotImplementedError

    def stats(self) -> Any:
        """Counters: messages received, missed, copied; frames pinned."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        raise NotImplementedError

    def close(self) -> None:
        """Leave the publisher; views of received messages stay valid."""
        raise NotImplementedError

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscriber:  # `async with`: close() does not wait on the peer
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a {type(self).__name__} holds a slot of its publisher and cannot be pickled: "
            "pass the name and create the Subscriber in the process that reads"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {'closed' if self.closed else 'open'}>"


# --- shared memory -------------------------------------------------------------------------------


def _too_large(nbytes: int, capacity: int) -> errors.MessageTooLarge:
    return errors.MessageTooLarge(
        f"a message of {nbytes:,} bytes is larger than half the publisher's {capacity:,}-byte "
        f"ring; create the Publisher with capacity >= {2 * (nbytes + 128):,} or send the object "
        "in parts"
    )


class ShmPublisher(Publisher):
    """Publisher over a shared-memory segment of `capacity` ring bytes (a message may use half)
    with room for `subscribers` subscribers. `codec` must match the subscribers' (they check
    the stream schema). `headroom`, `copy_threads`: as ShmSender. Thread-safe (sends are
    serialised)."""

    scheme = "shm"

    def __init__(
        self,
        name: str,
        capacity: int = DEFAULT_CAPACITY,
        subscribers: int = DEFAULT_SUBSCRIBERS,
        codec: Codec | None = None,
        *,
        headroom: int = DEFAULT_HEADROOM,
        copy_threads: int | None = None,
    ) -> None:
        self._closed = True
        name = _shm_name(name)
        self.name = name
        if codec is not None and not isinstance(codec, Codec):
            raise errors.UsageError(f"codec must be a zcser.Codec or None, not {codec!r}")
        self.codec = codec if codec is not None else Codec()
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 4096:
            raise errors.UsageError(
                f"capacity must be an int of ring bytes >= 4096, not {capacity!r}"
            )
        if copy_threads is not None and (
            isinstance(copy_threads, bool) or not isinstance(copy_threads, int) or copy_threads < 1
        ):
            raise errors.UsageError(
                f"copy_threads must be an int >= 1 or None, not {copy_threads!r}"
            )
        if headroom < layout.TABLE_START:
            raise errors.UsageError(f"headroom must be >= {layout.TABLE_START} bytes")
        self._copy_threads = memory.default_threads() if copy_threads is None else copy_threads
        names.check_free_for("fan-out", name)
        try:
            self._w = FanoutWriter(
                name,
                payload_size=capacity,
                slots=subscribers,
                metadata=schema_bytes(self.codec),
            )
        except terr.InvalidConfig as exc:
            raise errors.UsageError(str(exc)) from None
        except terr.BufferExists as exc:
            pid = names.publisher_pid(name)  # the live publisher's, from its segment's header
            who = f"pid {pid}" if pid else f"`python -m zcser inspect {name}` shows its pid"
            raise errors.ChannelError(f"{exc} ({who})") from None
        except terr.ShmFullError as exc:
            raise errors.ShmFull(str(exc)) from exc
        except _TransportError as exc:
            raise _translate(exc) from exc
        try:  # again, now that ours exists (as a Receiver does): one of two racing sees the other
            names.check_free_for("fan-out", name)
        except BaseException:
            self._w.close()
            raise
        self._capacity = self._w.capacity
        self._half = self._capacity // 2
        self._arena = FrameArena(
            self._w,
            headroom,
            self._copy_threads,
            self._reserve_frame,
            self._commit,
            self._send_copy,
        )
        self._messages = 0
        self._bytes = 0
        self._gate = base.Gate()
        self._pid = os.getpid()
        self._forked = False
        _LIVE.add(self)
        self._closed = False

    def send(self, obj: Any, timeout: float | None = None) -> None:
        """Publish `obj`: written once into shared memory (not at all for empty() arrays).
        Waits while "block" subscribers (or pins) leave no room: `timeout` s (None: while they
        live; 0: one try), then BufferFull.

        A KeyboardInterrupt (or any signal handler's exception) raised inside send means the
        message was not published: sending it again duplicates nothing."""
        if timeout is not None and (type(timeout) is not float or not timeout >= 0):
            _check_timeout(timeout)  # a float >= 0 needs no call
        gate = self._gate
        if _get_ident() == gate.owner:
            gate.busy = True
            if not gate.shared:
                try:
                    if self._closed:
                        self._check_open()
                    self._send(obj, timeout)
                finally:
                    gate.busy = False
                return
            gate.busy = False
        remaining = gate.hold(timeout, f"not published on {self.name!r}", errors.BufferFull)
        try:
            if self._closed:
                self._check_open()
            self._send(obj, remaining)
        finally:
            gate.lock.release()

    def _send(self, obj: Any, timeout: float | None) -> None:
        if self._forked:
            raise errors.UsageError(
                f"Publisher {self.name!r} belongs to the process that made it: a forked child "
                "cannot publish through it. Publish from the parent, or give the child a "
                "Publisher of its own (another name)"
            )
        arena = self._arena
        try:
            if arena.frame is not None:
                used = arena.send(self.codec.plan(obj), timeout)
            else:
                plan = self.codec.pack(obj)
                if isinstance(plan, bytes):
                    used = len(plan)
                    if used + 64 > self._half:
                        raise _too_large(used, self._capacity)
                    self._w.write(plan, timeout)
                else:
                    if arena.ring_hi:
                        arena.refuse_sent(plan)
                    used = self._send_copy(plan, timeout)
        except terr.FrameTooLarge:
            raise _too_large(0, self._capacity) from None
        except _TransportError as exc:
            raise _translate(exc) from exc
        self._messages += 1
        self._bytes += used

    def _send_copy(self, plan: Plan, timeout: float | None) -> int:
        w = self._w
        if w.reserved and self._arena.frame is None:  # left by an interrupted send: give it back
            w.abort()
        n = plan.nbytes
        view = self._reserve_frame(n, timeout)
        try:
            address = w.reserved_address
            used = plan.write_into(view, address, copy_threads=self._copy_threads)
        except BaseException:
            w.abort()
            raise
        self._commit(used, address)  # the last call: a signal lands before it, or after return
        return used

    def _reserve_frame(self, n: int, timeout: float | None) -> memoryview:
        if n + 64 > self._half:
            raise _too_large(n, self._capacity)
        return self._w.reserve(n, timeout)

    def _commit(self, used: int, address: int) -> None:
        self._w.commit(used)

    def empty(
        self, shape: int | tuple[int, ...], dtype: Any = float, *, timeout: float | None = None
    ) -> np.ndarray:
        """A new uninitialised array inside the next message: fill it and send it, with no
        copy (as Sender.empty). Read-only after that send."""
        _check_timeout(timeout)
        dt = base.plain_dtype(dtype)
        dims = base.array_shape(shape)
        array: np.ndarray = self._gate.run(self._empty, dims, dt, timeout)
        return array

    def _empty(self, dims: tuple[int, ...], dt: np.dtype[Any], timeout: float | None) -> Any:
        self._check_open()
        if math.prod(dims) * dt.itemsize < self.codec.threshold:
            return np.empty(dims, dt)
        try:
            return self._arena.empty(dims, dt, timeout)
        except _TransportError as exc:
            raise _translate(exc) from exc

    def stats(self) -> PublisherStats:
        ws = self._w.stats()
        return PublisherStats(
            capacity=ws.capacity,
            messages=self._messages,
            bytes=self._bytes,
            zero_copy=self._arena.zero_copy,
            copy_fallbacks=self._arena.fallbacks,
            blocked_seconds=ws.blocked_seconds,
            subscribers=tuple(
                SubscriberInfo(pid=s.pid, policy=s.policy, lag=s.lag, pinned_bytes=s.pinned_bytes)
                for s in ws.subscribers
            ),
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 1.0) -> None:
        """End the stream: subscribers read every message published, then `for obj in sub`
        ends (Closed). The names are removed; subscribers' views stay valid."""
        if self._closed:
            return
        self._gate.run(self._close)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            return
        self._arena.abort()
        self._w.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105
            self.close(timeout=0)
        except Exception:
            pass


def _connect(name: str, policy: str, timeout: float | None) -> FanoutReader:
    """A slot of publisher NAME, waiting up to `timeout` s (None: without end) for the segment
    to be created and, when every slot is taken, for one to be freed (polling with backoff up
    to 50 ms, as Sender does for a place: joining is rare and has no event to wait on)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    full = False  # the publisher was there, every slot taken
    while True:
        try:
            return FanoutReader(name, policy=policy)
        except (terr.BufferNotFound, SlotsTaken) as exc:
            names.refuse_other_kind("fan-out", name)  # a channel's name: say so at once
            full = full or isinstance(exc, SlotsTaken)
            if deadline is not None and time.monotonic() >= deadline:
                if isinstance(exc, SlotsTaken):
                    raise errors.ChannelError(
                        f"{exc}; waited {timeout} s for a subscriber to leave. Close a "
                        "subscriber first, give Subscriber(timeout=...) more time, or create "
                        "the Publisher with more subscribers=..."
                    ) from None
                if full:
                    raise errors.ChannelError(
                        f"publisher {name!r} closed while this Subscriber waited for a free "
                        f"slot (waited {timeout} s, and no new Publisher came)"
                    ) from None
                raise errors.ChannelError(
                    f"no publisher {name!r} (waited {timeout} s for it to create the segment): "
                    "start the Publisher first, check the name, or give Subscriber(timeout=...) "
                    "more time"
                ) from exc
            time.sleep(
                pause if deadline is None else max(0, min(pause, deadline - time.monotonic()))
            )
            pause = min(pause * 2, 0.05)
        except terr.InvalidConfig as exc:
            raise errors.UsageError(str(exc)) from None
        except _TransportError as exc:
            names.refuse_other_kind("fan-out", name)
            raise _translate(exc) from exc


class ShmSubscriber(Subscriber):
    """Subscriber of shared-memory publisher NAME. `policy`: "block", "drop" or "latest".
    `timeout`: seconds to wait for the Publisher to exist and, when every subscriber slot is
    taken, for one to be freed (None: without end; 0: one try). Decodes with
    `codec`, which must match the publisher's. Safe to share between threads."""

    scheme = "shm"

    def __init__(
        self,
        name: str,
        policy: str = "block",
        codec: Codec | None = None,
        *,
        timeout: float | None = CONNECT_TIMEOUT,
    ) -> None:
        self._r: FanoutReader | None = None
        # Threads inside a zcser.wait / arecv hook (between _wait_arm and _wait_disarm, or in
        # _wait_ready / _wait_woken): they read the slot's words and sleep on its bell outside
        # the gate, so close() leaves the segment mapped and the slot taken until they left.
        self._waiters = 0
        self._waiters_lock = threading.Lock()
        self._shutting = False
        name = _shm_name(name)
        self.name = name
        self.policy = _check_policy(policy, ("block", "drop", "latest"))
        _check_timeout(timeout)
        if codec is not None and not isinstance(codec, Codec):
            raise errors.UsageError(f"codec must be a zcser.Codec or None, not {codec!r}")
        self.codec = codec if codec is not None else Codec()
        self._r = _connect(name, policy, timeout)
        self._pid = os.getpid()
        self._forked = False
        _LIVE.add(self)
        self._checked = False
        self._messages = 0
        self._bytes = 0
        self._small = min(SMALL_MESSAGE, layout.TABLE_START + 16 + max(self.codec.threshold, 1) - 1)
        self._gate = base.Gate()
        # Interrupted, not lost (recv, recv_message): the frame taken stays in `_unread` until
        # its message is decoded, the message in `_ready` (a value) or `_ready_message` (a
        # Message's arguments) until it is returned; `_size`: the size of the last one decoded.
        self._unread: FanoutFrame | bytes | None = None
        self._ready: Any = _NOTHING
        self._ready_message: tuple[Any, Lease | None, int, int, int, int] | None = None
        self._size = 0

    def _read(self, limit: int, timeout: float | None) -> FanoutFrame | bytes:
        """The next frame, stored in `_unread` as soon as it is taken (see recv)."""
        r = self._r
        assert r is not None
        if self._forked:
            raise errors.UsageError(
                f"Subscriber of {self.name!r} belongs to the process that made it: this forked "
                "child cannot use it (its slot and cursor are the parent's). Make a new "
                "zcser.Subscriber(name) in the child"
            )
        try:
            got = r.read(timeout, limit)
            self._unread = got  # no call in between: a signal lands before or after both
        except terr.TransportClosed:
            if r.closing:
                raise errors.Closed(f"subscriber of {self.name!r} is closed") from None
            raise errors.Closed(
                f"publisher {self.name!r} closed and every message it published was read"
            ) from None
        except terr.WriterDead as exc:
            raise errors.WriterDead(
                f"{exc}. Start a new Publisher (same name) and new Subscribers."
            ) from None
        except terr.Timeout:
            held = (
                f"; this subscriber holds {r.pinned_frames} messages ({r.pinned_bytes:,} "
                "bytes): drop views you no longer need"
                if r.pinned_frames
                else ""
            )
            raise errors.Timeout(
                f"no message from publisher {self.name!r} within {timeout} s{held}"
            ) from None
        except _TransportError as exc:
            raise _translate(exc) from None
        if not self._checked:
            try:
                check_stream(self.codec, r.metadata)
            except (errors.ZcserError, _TransportError) as exc:  # a signal's: the frame stays
                self._drop_unread()
                if isinstance(exc, _TransportError):
                    raise _translate(exc) from None
                raise
            self._checked = True
        return got

    def _drop_unread(self) -> None:
        """Give back the frame in `_unread`: its message failed with a zcser error."""
        got = self._unread
        self._unread = None
        if isinstance(got, FanoutFrame):
            _release_quietly(got)

    def recv(self, timeout: float | None = None, copy: bool = False) -> Any:
        """The next object (see the policies). Arrays are read-only views pinning their message
        until garbage-collected; copy=True gives private writable objects.

        A KeyboardInterrupt (or any signal handler's exception) raised inside recv loses no
        message: the next recv (or recv_message) returns it. A message that fails with a zcser
        error (corrupt, of an unregistered type, ...) is dropped."""
        if timeout is not None and (type(timeout) is not float or not timeout >= 0):
            _check_timeout(timeout)  # a float >= 0 needs no call
        gate = self._gate
        if _get_ident() == gate.owner:
            gate.busy = True
            if not gate.shared:
                try:
                    return self._recv(timeout, copy)
                finally:
                    gate.busy = False
            gate.busy = False
        remaining = gate.hold(timeout, f"no message from publisher {self.name!r}")
        try:
            return self._recv(remaining, copy)
        finally:
            gate.lock.release()

    def _recv(self, timeout: float | None, copy: bool) -> Any:
        r = self._r
        if self._shutting or r is None or r.closed:
            self._check_open()
        assert r is not None  # _check_open raised otherwise
        value = self._ready
        if value is not _NOTHING:  # decoded by a call that a signal handler interrupted
            self._ready = _NOTHING
            return value
        ready = self._ready_message
        if ready is not None:  # likewise, by recv_message
            self._ready_message = None
            return ready[0]
        got = self._unread
        if got is None:
            pending = r.pending
            if (
                pending
                and type(got := pending[0]) is bytes
                and len(got) <= self._small
                and self._checked
                and not self._forked
            ):  # read()'s usual case while messages flow, inlined: a small frame a run took
                del pending[0]
            else:
                got = self._read(self._small, timeout)
            self._unread = got  # no call in between: a signal lands before or after both
        release = False
        try:
            if type(got) is bytes:
                size = len(got)
                value = self.codec.decode(got, copy=True) if copy else self.codec.decode_small(got)
            else:
                assert isinstance(got, FanoutFrame)  # a frame: large, or a view to pin
                size = got.size
                if copy:
                    value, release = self.codec.decode(got.data, copy=True), True
                else:
                    value, lease = self._decode(got)
                    release = lease is None
        except errors.ZcserError:  # a corrupt or undecodable message: dropped
            self._drop_unread()
            raise
        # Straight-line stores (CPython runs signal handlers only at calls and loops): the
        # message moves from the frame to `_ready`, so an interrupted release cannot lose it.
        self._ready = value
        self._unread = None
        self._messages += 1
        self._bytes += size
        self._size = size
        if release:
            _release_quietly(got)  # type: ignore[arg-type]  # a frame when release is set
        self._ready = _NOTHING
        return value

    def recv_message(self, timeout: float | None = None) -> Message:
        """The next message with an explicit lifetime and `missed` (messages skipped before
        it): `with sub.recv_message() as msg:`. Interrupted, not lost, as recv."""
        if timeout is not None:
            _check_timeout(timeout)
        gate = self._gate
        if _get_ident() == gate.owner:  # as recv (not gate.run: a call through C would
            gate.busy = True  # run a signal handler after the message left _ready)
            if not gate.shared:
                try:
                    return self._recv_message(timeout)
                finally:
                    gate.busy = False
            gate.busy = False
        remaining = gate.hold(timeout, f"no message from publisher {self.name!r}")
        try:
            return self._recv_message(remaining)
        finally:
            gate.lock.release()

    def _recv_message(self, timeout: float | None) -> Message:
        r = self._r
        if self._shutting or r is None or r.closed:
            self._check_open()
        assert r is not None
        ready = self._ready_message
        if ready is not None:  # decoded by a call that a signal handler interrupted
            message = Message(*ready)
            self._ready_message = None
            return message
        if self._ready is not _NOTHING:  # likewise, by recv
            message = Message(self._ready, None, r.handed_sequence(), self._size)
            self._ready = _NOTHING
            return message
        got = self._unread
        if got is None:
            got = self._read(-1, timeout)
        release = False
        try:
            if isinstance(got, bytes):  # taken by an interrupted recv: decoded as recv does
                sequence, missed, size = r.handed_sequence(), 0, len(got)
                value, lease = self.codec.decode_small(got), None
            else:
                sequence, missed, size = got.sequence, got.missed, got.size
                value, lease = self._decode(got)
                release = lease is None
        except errors.ZcserError:
            self._drop_unread()
            raise
        # Straight-line stores, as in recv: the lease moves from `got` to `_ready_message`.
        ready = (value, lease, sequence, size, 0, missed)
        self._ready_message = ready
        self._unread = None
        self._messages += 1
        self._bytes += size
        self._size = size
        if release:
            _release_quietly(got)  # type: ignore[arg-type]  # a frame when release is set
        message = Message(*ready)
        self._ready_message = None
        return message

    def _decode(self, frame: FanoutFrame) -> tuple[Any, Lease | None]:
        """The message in `frame` and the lease its views pin the frame with; None: nothing
        decoded refers to the frame, the caller releases it. On a signal handler's exception
        the frame stays as it was (the next call decodes it again)."""
        data = frame.data
        if frame.size >= layout.TABLE_START and not int.from_bytes(
            data[layout.OFF_COUNT : layout.OFF_COUNT + 4], "little"
        ):
            return self.codec.decode(data), None
        lease = Lease(None)
        try:
            lease._frame = frame  # pinned by a store: a signal cannot land between the two
            return self.codec.decode(frame.data, owner=lease), lease
        except BaseException:
            lease._frame = None  # the frame stays (a zcser error: the caller drops it)
            raise

    def _check_open(self) -> None:
        if self._shutting or self._r is None or self._r.closed:
            raise errors.Closed(f"subscriber of {self.name!r} is closed; create a new one")

    def stats(self) -> SubscriberStats:
        r = self._r
        assert r is not None
        return SubscriberStats(
            policy=self.policy,
            messages=self._messages,
            bytes=self._bytes,
            missed=r.missed,
            copied=r.copied,
            frames_pinned=r.pinned_frames,
            bytes_pinned=r.pinned_bytes,
            blocked_seconds=r.blocked,
        )

    @property
    def closed(self) -> bool:
        return self._shutting or self._r is None or self._r.closed

    def close(self) -> None:
        """Leave the publisher (its slot is freed once no view of a received message lives;
        views stay valid). A recv waiting in another thread raises Closed first: the segment
        it looks at stays mapped until it has left. A zcser.wait or arecv sleeping on this
        subscriber wakes and returns it; should one not have left after twice the backstop
        (an event loop that this very call blocks), the last of them leaves the publisher."""
        r = self._r
        if r is None or r.closed:
            return
        with self._waiters_lock:
            self._shutting = True
        r.interrupt()
        deadline = time.monotonic() + 2 * _WAIT_BACKSTOP
        while self._waiters and time.monotonic() < deadline:
            time.sleep(0.002)
        with self._waiters_lock:
            if self._waiters:  # they look at the slot and sleep on its bell: the last leaves
                return
        self._gate.run(self._close_reader, r)

    def _close_reader(self, r: FanoutReader) -> None:
        self._ready = _NOTHING
        self._ready_message = None
        unread, self._unread = self._unread, None
        if isinstance(unread, FanoutFrame):
            _release_quietly(unread)
        r.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105
            self.close()
        except Exception:
            pass

    # zcser.wait / arecv hooks (channels/waiting.py). They run outside the gate, next to a
    # close() in another thread: each counts itself in `_waiters` while it touches the reader
    # (its slot's words, its bell), so close() does not unmap them under it.
    def _wait_enter(self) -> bool:
        with self._waiters_lock:
            if self._shutting or self._r is None:
                return False
            self._waiters += 1
        return True

    def _wait_leave(self) -> None:
        with self._waiters_lock:
            self._waiters -= 1
            last = self._shutting and not self._waiters
        r = self._r
        if last and r is not None:  # close() gave up waiting for us: we leave the publisher
            self._gate.run(self._close_reader, r)

    def _wait_ready(self) -> bool:
        if self._unread is not None or self._ready is not _NOTHING or self._ready_message:
            return True
        if not self._wait_enter():
            return True  # closing: its recv says so at once
        try:
            return self._r is None or self._r.ready()
        finally:
            self._wait_leave()

    def _wait_fds(self) -> list[Any]:
        return [] if self._r is None or self._r.bell < 0 else [self._r.bell]

    def _wait_arm(self) -> bool:
        """False once close() has begun: not armed, and the caller reports this end. Armed,
        close() leaves the segment mapped and the slot taken until _wait_disarm."""
        if not self._wait_enter():
            return False
        try:
            self._r.arm()  # type: ignore[union-attr]  # _wait_enter: not None
        except BaseException:
            self._wait_leave()
            raise
        return True

    def _wait_disarm(self) -> None:
        try:
            self._r.disarm()  # type: ignore[union-attr]  # armed: not None
        finally:
            self._wait_leave()

    def _wait_woken(self) -> None:
        if not self._wait_enter():
            return
        try:
            self._r.woken()  # type: ignore[union-attr]  # _wait_enter: not None
        finally:
            self._wait_leave()

    def _wait_backstop(self) -> float | None:
        return _WAIT_BACKSTOP


_WAIT_BACKSTOP = 0.1
"""A fan-out subscriber's longest sleep in zcser.wait before looking again (its publisher's
liveness)."""


def _release_quietly(frame: FanoutFrame) -> None:
    try:  # noqa: SIM105
        frame.release()
    except BufferError:
        pass


# --- ZeroMQ PUB/SUB ------------------------------------------------------------------------------


class NetPublisher(Publisher):
    """Publisher over ZeroMQ PUB (binds NAME): each subscriber gets its own copy on the wire;
    a subscriber whose queue (`hwm` messages) is full misses messages. `capacity` and
    `subscribers` are accepted for symmetry and not used."""

    scheme = "tcp"

    def __init__(
        self,
        name: str,
        capacity: int = DEFAULT_CAPACITY,
        subscribers: int = DEFAULT_SUBSCRIBERS,
        codec: Codec | None = None,
        *,
        hwm: int | None = None,
        heartbeat: float | None = None,
    ) -> None:
        self._tx = NetSender(name, codec, pattern="pub", hwm=hwm, heartbeat=heartbeat)
        self.name = self._tx.name
        self.codec = self._tx.codec

    def send(self, obj: Any, timeout: float | None = None) -> None:
        """Publish `obj` (never waits for subscribers: ZeroMQ PUB drops for full queues)."""
        self._tx.send(obj, timeout)

    def empty(
        self, shape: int | tuple[int, ...], dtype: Any = float, *, timeout: float | None = None
    ) -> np.ndarray:
        return self._tx.empty(shape, dtype, timeout=timeout)

    def stats(self) -> Any:
        return self._tx.stats()

    @property
    def closed(self) -> bool:
        return self._tx.closed

    def close(self, timeout: float = 1.0) -> None:
        self._tx.close(timeout)


class NetSubscriber(Subscriber):
    """Subscriber over ZeroMQ SUB (connects to NAME). Policy "drop" (default here; ZeroMQ
    never makes a publisher wait) or "latest" (each recv returns the newest message queued,
    the older ones are missed). "block" is refused: PUB/SUB cannot be lossless."""

    scheme = "tcp"

    def __init__(
        self,
        name: str,
        policy: str = "drop",
        codec: Codec | None = None,
        *,
        capacity: int | None = None,
        hwm: int | None = None,
        heartbeat: float | None = None,
    ) -> None:
        if policy == "block":
            raise errors.UsageError(
                "policy='block' needs shared memory: a ZeroMQ PUB never waits for its "
                "subscribers. Use policy='drop' or 'latest' on tcp:// and ipc:// names, or a "
                "shared-memory name for a lossless fan-out"
            )
        self.policy = _check_policy(policy, ("drop", "latest"))
        self._rx = NetReceiver(name, capacity, codec, pattern="sub", hwm=hwm, heartbeat=heartbeat)
        self.name = self._rx.name
        self.codec = self._rx.codec
        self._missed = 0

    def recv(self, timeout: float | None = None, copy: bool = False) -> Any:
        if self.policy == "latest":
            return self.recv_message(timeout).value if not copy else self._latest(timeout, True)
        return self._rx.recv(timeout, copy)

    def _latest(self, timeout: float | None, copy: bool) -> Any:
        value = self._rx.recv(timeout, copy)
        while self._wait_ready():
            try:
                value = self._rx.recv(0, copy)
            except errors.Timeout:
                break
            self._missed += 1
        return value

    def recv_message(self, timeout: float | None = None) -> Message:
        lost = self._rx.stats().lost
        msg = self._rx.recv_message(timeout)
        skipped = 0
        if self.policy == "latest":
            while self._wait_ready():
                try:
                    newer = self._rx.recv_message(0)
                except errors.Timeout:
                    break
                skipped += 1
                msg = newer
        self._missed += skipped
        missed = skipped + max(0, self._rx.stats().lost - lost)
        return Message(
            msg.value,
            msg._lease() if msg._lease else None,
            msg.sequence,
            msg.nbytes,
            missed=missed,
        )

    def stats(self) -> Any:
        return self._rx.stats()

    @property
    def closed(self) -> bool:
        return self._rx.closed

    def close(self) -> None:
        self._rx.close()

    # zcser.wait / arecv hooks: those of the wrapped NetReceiver (which may hold a message it
    # took from ZeroMQ while looking, for the next recv)
    def _wait_ready(self) -> bool:
        return self._rx._wait_ready()

    def _wait_fds(self) -> list[Any]:
        return self._rx._wait_fds()

    def _wait_arm(self) -> None:
        self._rx._wait_arm()

    def _wait_disarm(self) -> None:
        self._rx._wait_disarm()

    def _wait_woken(self) -> None:
        self._rx._wait_woken()

    def _wait_backstop(self) -> float | None:
        return self._rx._wait_backstop()


register("shm", ShmPublisher, ShmSubscriber)
register("tcp", NetPublisher, NetSubscriber)
register("ipc", NetPublisher, NetSubscriber)
