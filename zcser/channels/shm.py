"""Shared-memory channels: one ZeroBuffer ring per channel, the receiver owns it.

```
rx = zcser.Receiver(name)            # creates the ring (reader side)
tx = zcser.Sender(name)              # connects (writer side), writes the stream schema once
tx.send({"x": array, "t": 1.5})      # one message = one frame; blocks while the ring is full
obj = rx.recv()                      # arrays are read-only views into shared memory
arr = tx.empty((1080, 1920, 3), np.uint8); fill(arr); tx.send({"frame": arr})  # no copy at all
```

The send path goes one way: the codec plans the message (`Codec.pack` / `Codec.plan`, pure),
the sender reserves a frame of exactly its size where it will land, the plan writes itself into
the frame (`Plan.write_into`), the transport commits. Messages without out-of-band buffers skip
the reservation: their bytes do not depend on the address, so one transport write copies them.

Lifetimes: every view `recv` returns pins its frame (a `Lease` is the codec's owner); the frame
goes back to the writer when the last view is garbage-collected. `recv_message()` adds explicit
release. Small messages (see `SMALL_MESSAGE`) are copied out on receipt instead.

`empty()` arrays live in the frame being built (channels/arena.py). ZeroBuffer rings have one
writer, so a Receiver made with `senders=N` keeps one ring per connected Sender behind one name
(transports/zerobuffer/pool.py) and reads them in turn.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from transports import errors as terr
from transports.zerobuffer import (
    DEFAULT_SPIN,
    FRAME_HEADER_SIZE,
    BufferConfig,
    Frame,
    Reader,
    Writer,
    shm_available,
)
from transports.zerobuffer import pool as tpool
from transports.zerobuffer.common import interrupts_deferred
from zcser import errors
from zcser.channels import base, names, waiting
from zcser.channels.arena import FrameArena
from zcser.channels.lease import Lease, Message
from zcser.channels.schema import check_stream, schema_bytes
from zcser.codec import Codec, Plan, layout, memory

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_HEADROOM",
    "METADATA_SIZE",
    "ReceiverStats",
    "SenderStats",
    "ShmReceiver",
    "ShmSender",
]

DEFAULT_CAPACITY = 256 << 20
"""Ring bytes when /dev/shm has room for it. A message may use at most half of the ring (so one is
read while the next is written). With less free shared memory (a Docker container's 64 MiB
/dev/shm), a Receiver created without `capacity` takes the largest power of two up to half of
what is free, at least `MIN_CAPACITY`; `stats().capacity` says what it took."""

MIN_CAPACITY = 1 << 20
"""The smallest ring a Receiver picks by itself."""

DEFAULT_HEADROOM = 4096
"""Bytes kept at the start of an `empty()` frame for message header, table and in-band bytes."""

METADATA_SIZE = 64 << 10
"""Metadata block for the stream schema (JSON; registered type names make it grow)."""

SMALL_MESSAGE = 16 * 1024
"""Messages up to this size are copied out of the ring on receipt and their frame given back at
once: a 16 KiB copy costs less than a frame's lease and release, and such a message (under the
default codec threshold) carries no out-of-band buffer, so nothing decoded would pin it anyway."""

_EOS = b"ZCSREOS\x00"
"""End-of-stream frame written by Sender.close(); shorter than any message header."""
_EOS_SIZE = len(_EOS)
_LOST = b"ZCSRLST\x00"
"""Written first by a Sender that takes over the place of one that died (senders > 1): the
receiver counts that death even if it never saw it happen."""
_NOTHING: Any = object()  # no message waiting in ShmReceiver._ready

FOREIGN_POLL = 0.005
"""How often zcser.wait and arecv look at a channel whose writer is not a zcser Sender (it
rings no bell)."""


_COUNT = struct.Struct("<I")
_OFF_COUNT = layout.OFF_COUNT
_translate = errors.translate
_TransportError = terr.TransportError
_get_ident = threading.get_ident
_log = logging.getLogger("zcser.channels")


def default_capacity() -> int:
    """The ring size a Receiver created without `capacity` takes now (see DEFAULT_CAPACITY)."""
    free = shm_available()
    if free is None or free >= 2 * DEFAULT_CAPACITY:
        return DEFAULT_CAPACITY
    capacity = MIN_CAPACITY
    while capacity * 2 <= free // 2 and capacity * 2 <= DEFAULT_CAPACITY:
        capacity *= 2
    return capacity


CONNECT_TIMEOUT = 5.0
"""Seconds a Sender waits by default for its Receiver to create the channel."""


def _connect(name: str, spin: int, timeout: float | None) -> tuple[Writer, tpool.Place | None]:
    """The transport writer of channel NAME and its place in the receiver's pool (None for a
    plain ring of another ZeroBuffer reader), waiting up to `timeout` s for the channel to be
    created and, when every place is taken, for one to be freed (polling with backoff up to
    50 ms: connecting is rare and has no event to wait on)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    full = False  # the channel was there, every place taken
    while True:
        try:
            return _attach(name, spin)
        except (terr.BufferNotFound, tpool.PlacesTaken) as exc:
            names.refuse_other_kind("channel", name)  # a publisher's name: say so at once
            full = full or isinstance(exc, tpool.PlacesTaken)
            if deadline is not None and time.monotonic() >= deadline:
                if full and isinstance(exc, terr.BufferNotFound):
                    raise errors.ChannelError(
                        f"channel {name!r}: its Receiver closed while this Sender waited for a "
                        f"free place (waited {timeout} s, and no new Receiver came)"
                    ) from None
                if isinstance(exc, tpool.PlacesTaken):
                    raise errors.ChannelError(
                        f"channel {name!r}: {exc}; waited {timeout} s for one to be freed. "
                        "Close a sender first, give Sender(timeout=...) more time, or create "
                        "the Receiver with more senders=..."
                    ) from None
                raise errors.ChannelError(
                    f"no channel {name!r} (waited {timeout} s for its Receiver to create it): "
                    "start the Receiver first, check the name, or give Sender(timeout=...) more "
                    "time"
                ) from exc
            time.sleep(pause if deadline is None else min(pause, deadline - time.monotonic()))
            pause = min(pause * 2, 0.05)
        except terr.ShmFullError as exc:
            raise errors.ShmFull(
                f"channel {name!r}: a sender's ring needs {getattr(exc, 'needed', 0):,} bytes of "
                f"shared memory but /dev/shm has {getattr(exc, 'available', None) or 0:,} free. "
                "Create the Receiver with a smaller capacity (it is per sender), remove stale "
                "rings (`zcser gc`), or give the machine more shared memory (Docker: "
                "--shm-size=2g)."
            ) from exc
        except _TransportError as exc:
            names.refuse_other_kind("channel", name)
            raise _translate(exc) from exc


def _attach(name: str, spin: int) -> tuple[Writer, tpool.Place | None]:
    got: tuple[Writer, tpool.Place | None] | None = None
    try:
        with interrupts_deferred():  # Ctrl-C: a place is taken and handed over whole...
            got = _attach_now(name, spin)
    except BaseException:
        if got is not None:  # ...and a Ctrl-C held back until then gives it back, marked
            w, place = got
            if place is not None:
                with contextlib.suppress(_TransportError):
                    w.write(_EOS, 0)  # the pool counts every sender that took a place
            w.close()
            if place is not None:
                place.leave()
        raise
    return got


def _attach_now(name: str, spin: int) -> tuple[Writer, tpool.Place | None]:
    found = tpool.Place.open(name)
    if found is None:
        w = Writer(name, spin=spin)  # a plain ring (another ZeroBuffer reader), or BufferNotFound
        if tpool.Place.open(name) is None:
            return w, None
        w.close()  # a zcser Receiver finished creating its pool meanwhile: take a place
        found = tpool.Place.open(name)
        if found is None:
            raise terr.BufferNotFound(f"channel {name!r} is being replaced; retry")
    place = tpool.Place.claim(name, found)
    try:
        w = Writer(place.ring, spin=spin)
    except BaseException:
        place.leave()
        raise
    try:
        place.reserve(w)
    except BaseException:
        w.close()
        place.leave()
        raise
    return w, place


def _check_timeout(timeout: object) -> None:
    """UsageError unless `timeout` is None or a number of seconds >= 0 (as recv checks it)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise errors.UsageError(
            f"timeout must be None (wait while the peer lives) or seconds >= 0, not {timeout!r}"
        )


def _check_spin(spin: object) -> None:
    if isinstance(spin, bool) or not isinstance(spin, int) or spin < 0:
        raise errors.UsageError(f"spin must be an int >= 0 (polls before waiting), not {spin!r}")


_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
"""Every open end of this process, so a forked child can mark its copies unusable."""


def _after_fork_in_child() -> None:
    for end in list(_LIVE):
        end._forked = True
        place = getattr(end, "_place", None)
        if place is not None:
            place.forget()  # the parent's bell: a child holding it would hide the parent's death


os.register_at_fork(after_in_child=_after_fork_in_child)


def _forked_error(end: Any) -> errors.UsageError:
    return errors.UsageError(
        f"{type(end).__name__} of {end.name!r} belongs to the process that made it: this "
        "forked child cannot use it (its position in the ring is the parent's). Make a new "
        "one in the child (zcser.Sender(name), or call the SenderFactory there)"
    )


def _check_capacity(capacity: object) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 4096:
        raise errors.UsageError(
            f"capacity must be an int of ring bytes >= 4096 (or None: chosen from the free shared "
            f"memory), not {capacity!r}"
        )
    return capacity


def _shm_name(name: str) -> str:
    return name[len("shm://") :] if name.startswith("shm://") else name


def _too_large(nbytes: int, capacity: int) -> errors.MessageTooLarge:
    return errors.MessageTooLarge(
        f"a message of {nbytes} bytes is larger than half the channel's {capacity}-byte ring "
        f"(the most that always fits while the previous message is still held); create the "
        f"Receiver with capacity >= {2 * (nbytes + FRAME_HEADER_SIZE)} or send the object in parts"
    )


def _sender_dead(name: str, exc: terr.WriterDead) -> errors.WriterDead:
    """WriterDead in the channel's words."""
    what = str(exc).partition(". A new Writer")[0].rstrip(".")
    return errors.WriterDead(
        f"channel {name!r}: the sender is gone ({what}). A new Sender may connect to the same "
        "channel (same codec); recv() again waits for it."
    )


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SenderStats:
    """A sender's counters and its view of the ring."""

    capacity: int  # ring bytes
    used: int  # ring bytes not yet given back by the receiver
    free: int
    messages: int  # messages sent
    bytes: int  # message bytes sent
    zero_copy: int  # messages whose empty() arrays were sent in place
    copy_fallbacks: int  # empty() arrays or messages that had to be copied after all
    unread: int  # frames written that the receiver has not read yet
    blocked_seconds: float  # time spent waiting for ring space


class ShmSender(base.Sender):
    """The writing end of shared-memory channel NAME (the Receiver must exist). It takes one of
    the Receiver's `senders` places (a ring of its own) for as long as it is open. Safe to
    share between threads: sends are serialised, each message whole; arrays
    from `empty()` belong to the next send, whichever thread makes it.

    `codec` must match the receiver's (same registered classes, same mode): the receiver checks
    the stream schema this writes. `headroom`: bytes kept before `empty()` arrays for the
    message's header and in-band part; if they do not fit there, that send copies.
    `copy_threads`: threads that copy each buffer of 8 MiB or more into the frame, each part
    with streaming stores (default None: the CPUs this process may use, at most 4; 1: the
    calling thread alone, with memcpy). `spin`: polls of the ring before a blocking wait.
    `timeout`: seconds to wait for the Receiver to create the channel and, when every place is
    taken, for one to be freed (None: without end; 0: now or ChannelError), so a sender
    started before its receiver connects when it appears. A new
    Sender may connect after the previous one closed or died; its codec must match the stream
    schema the first one wrote (IncompatibleStream otherwise).
    """

    scheme = "shm"

    def __init__(
        self,
        name: str,
        codec: Codec | None = None,
        *,
        headroom: int = DEFAULT_HEADROOM,
        spin: int = DEFAULT_SPIN,
        copy_threads: int | None = None,
        timeout: float | None = CONNECT_TIMEOUT,
    ) -> None:
        self._closed = True
        self._closing = False
        self._forked = False
        self._place: tpool.Place | None = None
        _check_timeout(timeout)
        _check_spin(spin)
        if copy_threads is not None and (
            isinstance(copy_threads, bool) or not isinstance(copy_threads, int) or copy_threads < 1
        ):
            raise errors.UsageError(
                f"copy_threads must be an int >= 1 or None, not {copy_threads!r}"
            )
        self._copy_threads = memory.default_threads() if copy_threads is None else copy_threads
        name = _shm_name(name)
        self.name = name
        self.codec = codec if codec is not None else Codec()
        if headroom < layout.TABLE_START:
            raise errors.UsageError(f"headroom must be >= {layout.TABLE_START} bytes")
        self._w, self._place = _connect(name, spin, timeout)
        try:
            self._check_stream(name)
        except BaseException:  # Ctrl-C included: the place goes back, marked as finished
            self._withdraw()
            raise
        self._closed = False
        self._pid = os.getpid()
        self._capacity = self._w.stats().capacity
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
        self._next_addr = 0  # where the next frame's data will most likely start
        self._gate = base.Gate()
        _LIVE.add(self)

    # -- sending ---------------------------------------------------------------------------------

    def send(self, obj: Any, timeout: float | None = None) -> None:
        """Send `obj` as one message. Blocks while the ring is full: `timeout` seconds (None: as
        long as the receiver lives; 0: one try, to drop messages) then BufferFull."""
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
        remaining = gate.hold(timeout, f"not sent on {self.name!r}", errors.BufferFull)
        try:
            if self._closed:
                self._check_open()
            self._send(obj, remaining)
        finally:
            gate.lock.release()

    def _send(self, obj: Any, timeout: float | None) -> None:
        if self._forked:
            raise _forked_error(self)
        if self._closing:
            raise errors.Closed(f"sender of {self.name!r} was closed; create a new Sender")
        arena = self._arena
        try:
            if arena.frame is not None:
                used = arena.send(self.codec.plan(obj), timeout)
            else:
                plan = self.codec.pack(obj)
                if isinstance(plan, bytes):
                    # No out-of-band buffer: the bytes do not depend on the frame's address, so
                    # one transport write copies them in (no reservation round).
                    used = len(plan)
                    if used + FRAME_HEADER_SIZE > self._half:
                        raise _too_large(used, self._capacity)
                    self._w.write(plan, timeout)
                    self._next_addr = 0
                else:
                    if arena.ring_hi:
                        arena.refuse_sent(plan)
                    used = self._send_copy(plan, timeout)
        except terr.BufferFull as exc:
            raise self._full(exc) from exc
        except _TransportError as exc:
            raise _translate(exc) from exc
        self._messages += 1
        self._bytes += used

    def _check_stream(self, name: str) -> None:
        """Write the stream schema, or check it against the one the channel has; a Sender
        taking a dead one's place says so first (pool.py)."""
        schema = schema_bytes(self.codec)
        try:
            self._w.set_metadata(schema)
        except terr.MetadataAlreadyWritten:
            written = self._w.metadata
            if written is None or bytes(written) != schema:
                raise errors.IncompatibleStream(
                    f"channel {name!r} carries a stream started by a sender with another codec "
                    "(other registered classes or settings): a new Sender must use the same "
                    "codec configuration, or a new Receiver (a new name)"
                ) from None
        except _TransportError as exc:
            raise _translate(exc) from exc
        if self._place is not None and self._place.places > 1 and self._place.after_death:
            try:
                self._w.write(_LOST)
            except _TransportError as exc:
                raise _translate(exc) from exc

    def _withdraw(self) -> None:
        """A Sender that took a place but cannot go on: its end mark (a pool counts every
        sender that connected), then leave."""
        if self._place is not None:
            with contextlib.suppress(_TransportError):
                self._w.write(_EOS, 0)
        self._leave()

    def _leave(self) -> None:
        self._w.close()
        if self._place is not None:
            self._place.leave()

    def _full(self, exc: terr.BufferFull) -> errors.BufferFull:
        """BufferFull in the channel's words, saying whether the receiver holds what it read."""
        ws = self._w.stats()
        if ws.frames_unread == 0 and ws.used:
            why = (
                f"the receiver has read every message but still holds {ws.used:,} bytes of them "
                "(views of received messages pin their frames until dropped). On the receiving "
                "side: drop the views, recv(copy=True), or msg.release(); or create the "
                "Receiver with a bigger capacity"
            )
        else:
            why = (
                f"{ws.frames_unread} messages are waiting to be read: the receiver is slower "
                "than this sender; wait longer (timeout=None waits while it lives), or create "
                "the Receiver with a bigger capacity"
            )
        return errors.BufferFull(
            f"channel {self.name!r}: no room within {getattr(exc, 'timeout', None)} s "
            f"({ws.free:,} of {ws.capacity:,} ring bytes free); {why}"
        )

    def _send_copy(self, plan: Plan, timeout: float | None) -> int:
        """Reserve exactly the message's size where the frame will land (its buffers' padding
        depends on the address), write the message into the frame, publish."""
        w = self._w
        if w.reserved and self._arena.frame is None:  # left by an interrupted send: give it back
            w.abort()
        guess = self._next_addr
        n = plan.nbytes_at(guess) if guess else plan.nbytes
        for _ in range(2):
            view = self._reserve_frame(n, timeout)
            address = w.reserved_address
            if address == guess or plan.nbytes_at(address) <= n:
                break
            w.abort()  # the frame wrapped: re-reserve from the same position, a little larger
            guess, n = address, plan.nbytes_at(address)
        else:
            view = self._reserve_frame(plan.nbytes, timeout)
            address = w.reserved_address
        try:
            used = plan.write_into(view, address, copy_threads=self._copy_threads)
        except BaseException:
            w.abort()
            raise
        self._commit(used, address)
        return used

    def _reserve_frame(self, n: int, timeout: float | None) -> memoryview:
        if n + FRAME_HEADER_SIZE > self._half:
            raise _too_large(n, self._capacity)
        return self._w.reserve(n, timeout)

    def _commit(self, used: int, address: int) -> None:
        self._w.commit(used)
        self._next_addr = address + used + FRAME_HEADER_SIZE

    # -- zero-copy allocation --------------------------------------------------------------------

    def empty(
        self, shape: int | tuple[int, ...], dtype: Any = float, *, timeout: float | None = None
    ) -> np.ndarray:
        """A new uninitialised array inside the next frame: fill it and send it in the next
        message, with no copy. Several arrays (any dtypes) may go into one message. Blocks for
        ring space like send(). After that send the array is read-only."""
        if timeout is not None:
            _check_timeout(timeout)
        dt = base.plain_dtype(dtype)
        dims = base.array_shape(shape)
        array: np.ndarray = self._gate.run(self._empty, dims, dt, timeout)
        return array

    def _empty(self, dims: tuple[int, ...], dt: np.dtype[Any], timeout: float | None) -> Any:
        if self._forked:
            raise _forked_error(self)
        self._check_open()
        if math.prod(dims) * dt.itemsize < self.codec.threshold:
            # Below the threshold the array travels in band (copied at send) wherever it lies:
            # ordinary memory, so it can never alias a frame that already carried a message.
            return np.empty(dims, dt)
        try:
            return self._arena.empty(dims, dt, timeout)
        except terr.BufferFull as exc:
            raise self._full(exc) from exc
        except _TransportError as exc:
            raise _translate(exc) from exc

    # -- state -----------------------------------------------------------------------------------

    def stats(self) -> SenderStats:
        """Counters and ring usage (see SenderStats)."""
        ws = self._w.stats()
        return SenderStats(
            capacity=ws.capacity,
            used=ws.used,
            free=ws.free,
            messages=self._messages,
            bytes=self._bytes,
            zero_copy=self._arena.zero_copy,
            copy_fallbacks=self._arena.fallbacks,
            unread=ws.frames_unread,
            blocked_seconds=ws.blocked_seconds,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 1.0) -> None:
        """Mark the end of the stream (the receiver then gets Closed once it has read every
        message; if the ring stays full for `timeout` s it gets WriterDead) and detach."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise errors.UsageError(f"close(timeout=) takes seconds >= 0, not {timeout!r}")
        if self._closed:
            return
        if self._forked or os.getpid() != self._pid:
            self._closed = True
            return  # a forked child's copy: the stream belongs to the parent
        self._closing = True  # sends queued behind the gate raise Closed instead of waiting
        if self._gate.in_use():
            self._w.interrupt()  # a send waiting for room in another thread raises Closed
        self._gate.run(self._close_once, timeout)

    def _close_once(self, timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        self._w.interrupted = False  # the end-of-stream mark waits for room up to `timeout`
        self._close(timeout)

    def _close(self, timeout: float) -> None:
        self._arena.abort()
        try:
            self._w.write(_EOS, timeout)
        except _TransportError:
            pass  # the receiver is gone or holds the whole ring
        finally:
            self._leave()

    def __del__(self) -> None:
        try:  # noqa: SIM105
            self.close(timeout=0)
        except Exception:
            pass


# --- receiving -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiverStats:
    """A receiver's counters and ring usage; `frames_pinned` are held by live views.

    With `senders=N`, `capacity`, `used`, `free` and the pinned counts add up every sender's
    ring; `senders` is N, `senders_connected` the senders connected now, `senders_closed` those
    whose end of stream was read and `senders_lost` those that died without closing (what they
    sent was delivered)."""

    capacity: int
    used: int
    free: int
    messages: int
    bytes: int
    frames_pinned: int
    bytes_pinned: int
    blocked_seconds: float
    senders: int = 1  # places: the most senders connected at once
    senders_connected: int = 0  # connected now (senders > 1; 0 or 1 otherwise)
    senders_closed: int = 0  # senders that closed (their end of stream read)
    senders_lost: int = 0  # senders that died without closing (what they sent was delivered)


class ShmReceiver(base.Receiver):
    """The reading end of shared-memory channel NAME: creates the shared ring (`capacity`
    bytes; the largest message is half of it; None: `DEFAULT_CAPACITY`, or less when /dev/shm
    is short). Decodes with `codec`, which must match the sender's. `metadata_size`: bytes for
    the stream schema; `spin`: polls before a blocking wait. Safe to share between threads:
    each message goes to exactly one `recv`.

    `senders`: how many Senders may be connected at once (1 to 64). Each gets a ring of
    `capacity` bytes of its own, whose shared memory is reserved when it connects and given
    back when it leaves; `recv()` takes from whichever has a message, in turn, and
    `msg.sender` says whose. The stream ends (`Closed`, the end of `for obj in rx`) once
    `senders` Senders have finished: closed, or died (counted in `stats().senders_lost`; what
    they sent is delivered first). A Sender connecting after that starts a new stream."""

    scheme = "shm"

    def __init__(
        self,
        name: str,
        capacity: int | None = None,
        codec: Codec | None = None,
        *,
        metadata_size: int = METADATA_SIZE,
        spin: int = DEFAULT_SPIN,
        senders: int = 1,
    ) -> None:
        _check_spin(spin)
        if (
            isinstance(senders, bool)
            or not isinstance(senders, int)
            or not (1 <= senders <= tpool.MAX_PLACES)
        ):
            raise errors.UsageError(
                f"senders must be an int from 1 to {tpool.MAX_PLACES} (Senders connected at "
                f"once), not {senders!r}"
            )
        self._forked = False
        name = _shm_name(name)
        self.name = name
        if codec is not None and not isinstance(codec, Codec):
            raise errors.UsageError(f"codec must be a zcser.Codec or None, not {codec!r}")
        self.codec = codec if codec is not None else Codec()
        chosen = capacity is None
        capacity = default_capacity() if capacity is None else _check_capacity(capacity)
        if chosen and capacity < DEFAULT_CAPACITY:
            _log.info(
                "channel %r: /dev/shm is short, ring capacity %d bytes (not %d)",
                name,
                capacity,
                DEFAULT_CAPACITY,
            )
        names.check_free_for("channel", name)
        try:
            self._pool = tpool.PoolReader(
                name, BufferConfig(metadata_size, capacity), senders, spin=spin
            )
        except terr.ShmFullError as exc:
            raise errors.ShmFull(
                f"channel {name!r}: a ring of capacity {capacity:,} bytes needs "
                f"{getattr(exc, 'needed', capacity):,} bytes of shared memory but /dev/shm has "
                f"{getattr(exc, 'available', None) or 0:,} free. Create the Receiver with a smaller "
                "capacity (or leave capacity out: it then fits what is free), remove stale rings "
                "(`zcser gc`), or give the machine more shared memory (Docker: --shm-size=2g)."
            ) from exc
        except terr.BufferExists as exc:
            # Only "a live reader holds the lock" is reworded (it names the control segment,
            # NAME--pool, and a reader); the other BufferExists say what they mean already.
            if isinstance(exc, terr.NameInUse) or "owned by a live reader" not in str(exc):
                raise _translate(exc) from exc
            raise errors.ChannelError(
                f"channel {name!r} already has a live Receiver: pick another name, or close "
                "that Receiver first (`python -m zcser inspect NAME` shows its pid)"
            ) from exc
        except _TransportError as exc:
            raise _translate(exc) from exc
        try:  # again, now that ours exist: of a Receiver and a Publisher made at once, the
            names.check_free_for("channel", name)  # one that looks last sees the other
        except BaseException:
            self._pool.close()
            raise
        self.senders = senders
        self._r: Reader | tpool.PoolReader = self._pool.rings[0] if senders == 1 else self._pool
        self._gate = base.Gate()
        self._busy = False  # the last _wait_ready found another thread inside recv
        # Threads of zcser.wait / arecv between _wait_arm and _wait_disarm (or in _wait_woken):
        # close() does not unmap what they sleep on under them.
        self._waiters = 0
        self._waiters_lock = threading.Lock()
        self._shutting = False
        _LIVE.add(self)
        self._checked = False
        self._sender = 0  # the place of the frame in `_unread` (or read last)
        self._closes = 0  # senders whose end of stream was read
        self._lost = 0
        self._finished = 0  # closes and deaths in the current stream (senders > 1)
        self._started_at = 0  # the pool's claims when the current stream began
        self._ended_at: int | None = None  # its claims when the last stream ended
        self._place_ended = [False] * senders
        self._checked_places: set[int] = set()
        self._single = senders == 1  # _recv reads the one ring itself, else through _read_pool
        if senders > 1:
            self._read = self._read_pool  # type: ignore[method-assign]
        self._ended = False
        self._messages = 0
        self._bytes = 0
        self._small = _small_limit(self.codec.threshold)
        # Interrupted, not lost (recv, recv_message): the frame taken from the ring stays in
        # `_unread` until its message is decoded, the message in `_ready` (a value) or
        # `_ready_message` (a Message's arguments) until it is returned.
        self._unread: Frame | bytes | None = None
        self._ready: Any = _NOTHING
        self._ready_message: tuple[Any, Lease | None, int, int, int] | None = None

    def _read(self, limit: int, timeout: float | None) -> Frame | bytes:
        """The next frame, or its bytes when at most `limit` long (already given back)."""
        try:
            return self._r.read_small(limit, timeout)
        except _TransportError as exc:
            raise self._read_error(exc) from None

    # -- many senders (senders > 1): the pool's rings in turn -------------------------------------

    def _read_pool(self, limit: int, timeout: float | None) -> Frame | bytes:
        """The next frame of any sender, not an end of stream; ends and deaths are counted
        here. `_unread` and `_sender` are stored right after the take (see recv).

        The stream ends (Closed) once `senders` senders have finished, every sender that
        connected has finished, and nothing is left to read; until a sender connects again,
        recv keeps saying so. A frame already waiting is taken without a look at the clock or
        at the stream's end: the usual case while senders are busy."""
        pool = self._pool
        deadline = None
        while True:
            last = False
            try:
                got = pool.take(limit)
                if got is None:
                    remaining = None
                    if timeout is not None:
                        now = time.monotonic()
                        if deadline is None:
                            deadline = now + timeout
                        remaining = max(0.0, deadline - now)
                    last = self._finished >= self.senders and self._stream_over()
                    got = pool.read_small(limit, 0.0 if last else remaining, looked=True)
                self._unread = got
                self._sender = pool.place
            except terr.WriterDead as exc:
                place = getattr(exc, "place", 0)
                if not getattr(exc, "closed", False):
                    self._sender_finished(place, died=True)
                elif not self._place_ended[place]:  # closed without its end mark (ring full)
                    self._sender_finished(place, died=False)
                continue
            except terr.Timeout as exc:
                if last:
                    raise self._stream_ended() from None
                raise self._read_error(exc) from None
            except _TransportError as exc:
                raise self._read_error(exc) from None
            place = self._sender
            if (len(got) if isinstance(got, bytes) else got.size) == _EOS_SIZE:
                mark = got if isinstance(got, bytes) else bytes(got.data)
                if mark in (_LOST, _EOS):
                    self._unread = None
                    _release_quietly(got)
                    self._sender_finished(place, died=mark == _LOST)
                    continue
            self._place_ended[place] = False
            self._checked = place in self._checked_places
            return got

    def _sender_finished(self, place: int, died: bool) -> None:
        if died:
            if self._place_ended[place]:
                return  # it had closed its stream already, or its death was counted
            self._lost += 1
            _log.warning(
                "channel %r: sender %d died; the messages it sent were delivered", self.name, place
            )
        else:
            self._closes += 1
        self._place_ended[place] = True
        self._finished += 1

    def _stream_over(self) -> bool:
        """`senders` senders finished and every sender that connected in this stream too.
        Once ended it stays so until a sender connects again, which starts a new stream
        (that again ends after `senders` finished)."""
        claims = self._pool.claims()
        if self._ended_at is not None:
            if claims == self._ended_at:
                return True
            self._started_at, self._ended_at = self._ended_at, None
            self._finished = 0
        finished = self._finished
        return finished >= self.senders and finished >= claims - self._started_at

    def _stream_ended(self) -> errors.Closed:
        if self._ended_at is None:
            self._ended_at = self._pool.claims()
        return errors.Closed(
            f"channel {self.name!r}: all {self.senders} senders finished (closed: "
            f"{self._closes}, died: {self._lost}) and every message has been read"
        )

    def _read_error(self, exc: terr.TransportError) -> errors.ZcserError:
        if isinstance(exc, terr.WriterDead):
            if self._ended or getattr(exc, "closed", False):
                return errors.Closed(
                    f"channel {self.name!r}: the sender closed and every message has been read"
                )
            _log.warning("channel %r: %s", self.name, exc)
            self._lost += 1
            return _sender_dead(self.name, exc)
        if isinstance(exc, terr.TransportClosed):
            return self._closing_error()
        if isinstance(exc, terr.Timeout):
            rs = self._r.stats()
            if rs.frames_held and rs.free < rs.capacity // 2:
                return errors.Timeout(
                    f"no message on {self.name!r} within {getattr(exc, 'timeout', None)} s, and "
                    f"this receiver itself holds {rs.frames_held} messages ({rs.bytes_held:,} of "
                    f"{rs.capacity:,} ring bytes): views of received messages pin their frames, "
                    "so the sender may be waiting for room. Drop those views (or copy what you "
                    "keep: recv(copy=True)), release messages (msg.release()), or create the "
                    "Receiver with a bigger capacity"
                )
        return _translate(exc)

    def _accept(self, got: Frame | bytes) -> None:
        """Stop at the end-of-stream mark, check the stream schema once."""
        if isinstance(got, bytes):
            if len(got) == _EOS_SIZE and got == _EOS:
                self._end()
        elif got.size == _EOS_SIZE and got.data == _EOS:
            got.release()
            self._end()
        self._ended = False  # a sender that connects after an end of stream starts a new one
        if not self._checked:
            try:
                check_stream(self.codec, self._r.metadata)
            except _TransportError as exc:  # a corrupt metadata block
                _release_quietly(got)
                raise _translate(exc) from None
            except errors.ZcserError:
                _release_quietly(got)
                raise
            self._checked = True
            self._checked_places.add(self._sender)  # senders > 1: its place's schema

    def _end(self) -> None:
        self._ended = True
        self._closes += 1
        raise errors.Closed(
            f"channel {self.name!r}: the sender closed and every message has been read"
        )

    def recv(self, timeout: float | None = None, copy: bool = False) -> Any:
        """The next object. Blocks up to `timeout` s (None: until a message or the end of the
        stream). Arrays are
        read-only views pinning their frame until garbage-collected; copy=True gives private
        writable objects and frees the frame at once.

        A KeyboardInterrupt (or any signal handler's exception) raised inside recv loses no
        message: the next recv returns it. A message that fails with a zcser error (corrupt,
        of an unregistered type, ...) is dropped."""
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
        remaining = gate.hold(timeout, f"no message on {self.name!r}")
        try:
            if self._shutting:  # queued behind the gate while close() began: it interrupted
                raise self._closing_error()  # only the call in the pool then
            return self._recv(remaining, copy)
        finally:
            gate.lock.release()

    def _recv(self, timeout: float | None, copy: bool) -> Any:
        if self._forked:
            raise _forked_error(self)
        value = self._ready
        if value is not _NOTHING:  # decoded by a recv that a signal handler interrupted
            self._ready = _NOTHING
            return value
        ready = self._ready_message
        if ready is not None:  # likewise, by recv_message
            self._ready_message = None
            return ready[0]
        got = self._unread
        if got is None:
            if self._single:
                try:  # self._read, inlined (one call fewer per message)
                    got = self._r.read_small(self._small, timeout)
                except _TransportError as exc:
                    raise self._read_error(exc) from None
            else:
                # The pool's usual case while senders are busy, inlined (PoolReader._take's
                # first case, with the same moves of its turn and countdown): the sender whose
                # turn it is has a small frame taken already, its place's schema was checked
                # and its stream is open. Anything else goes the whole way (_read_pool).
                pool = self._pool
                i = pool.next
                core = pool.cores[i]
                pending = core.pending
                if (
                    pending
                    and type(got := pending[0]) is bytes
                    and _EOS_SIZE != len(got) <= self._small
                    and pool.countdown > 1
                    and pool.active[i]
                    and not core.closed
                    and i in self._checked_places
                    and not self._place_ended[i]
                ):
                    del pending[0]
                    pool.countdown -= 1
                    pool.next = pool.after[i]
                    pool.place = i
                    self._sender = i
                    self._checked = True
                else:
                    got = self._read(self._small, timeout)
            self._unread = got  # no call in between: a signal lands before or after both
        try:
            if isinstance(got, bytes):
                size = len(got)
                if size != _EOS_SIZE and self._checked and not copy:
                    value, release = self.codec.decode_small(got), False  # _decode_got's first case
                else:
                    value, release = self._decode_got(got, copy)
            else:
                size = got.size
                value, release = self._decode_got(got, copy)
        except errors.ZcserError:  # a corrupt or undecodable message, the end of the stream
            self._unread = None
            raise
        # Straight-line stores (CPython runs signal handlers only at calls and loops): the
        # message moves from the frame to `_ready`, so an interrupted release cannot lose it.
        self._ready = value
        self._unread = None
        self._messages += 1
        self._bytes += size
        if release:
            _release_quietly(got)
        self._ready = _NOTHING
        return value

    def _decode_got(self, got: Frame | bytes, copy: bool) -> tuple[Any, bool]:
        """The message in `got` and whether its frame goes back now (the caller releases it)."""
        if isinstance(got, bytes) and len(got) != _EOS_SIZE and self._checked and not copy:
            return self.codec.decode_small(got), False
        self._accept(got)
        if isinstance(got, bytes):
            # A small message, copied out whole: its frame went back to the writer already.
            if copy:
                return self.codec.decode(got, copy=True), False
            return self.codec.decode_small(got), False
        if copy:
            try:
                return self.codec.decode(got.data, copy=True), True
            except errors.ZcserError:
                _release_quietly(got)
                raise
        value, lease = self._decode(got)
        return value, lease is None

    def recv_message(self, timeout: float | None = None) -> Message:
        """The next message with an explicit lifetime: `with rx.recv_message() as msg:`.
        Interrupted, not lost, as recv."""
        if timeout is not None:
            _check_timeout(timeout)
        gate = self._gate
        if _get_ident() == gate.owner:  # as recv (not gate.run: a call through C would
            gate.busy = True  # run a signal handler after the message left _ready_message)
            if not gate.shared:
                try:
                    return self._recv_message(timeout)
                finally:
                    gate.busy = False
            gate.busy = False
        remaining = gate.hold(timeout, f"no message on {self.name!r}")
        try:
            return self._recv_message(remaining)
        finally:
            gate.lock.release()

    def _closing_error(self) -> errors.Closed:
        return errors.Closed(f"receiver of {self.name!r} is closed; create a new Receiver")

    def _recv_message(self, timeout: float | None) -> Message:
        if self._forked:
            raise _forked_error(self)
        if self._shutting:  # as recv: close() began while this call waited for the gate
            raise self._closing_error()
        # Interrupted, not lost, as recv: what an interrupted call left comes first.
        ready = self._ready_message
        if ready is not None:
            message = Message(*ready)
            self._ready_message = None
            return message
        if self._ready is not _NOTHING:  # decoded by an interrupted recv (no frame kept)
            message = Message(self._ready, None, self._handed_sequence(), 0, self._sender)
            self._ready = _NOTHING
            return message
        got = self._unread
        if got is None:
            got = self._read(-1, timeout)
            self._unread = got  # no call in between (the pool's read stored it already)
        try:
            if isinstance(got, bytes):  # taken by an interrupted recv: decoded as recv does
                sequence, size, release = self._handed_sequence(), len(got), False
                value, _ = self._decode_got(got, False)
                lease = None
            else:
                sequence, size = got.sequence, got.size
                self._accept(got)
                value, lease = self._decode(got)
                release = lease is None
        except errors.ZcserError:  # a corrupt or undecodable message, the end of the stream
            self._unread = None
            raise
        # Straight-line stores, as in recv: the lease moves from the frame to _ready_message.
        ready = (value, lease, sequence, size, self._sender)
        self._ready_message = ready
        self._unread = None
        self._messages += 1
        self._bytes += size
        if release:
            _release_quietly(got)
        message = Message(*ready)
        self._ready_message = None
        return message

    def _handed_sequence(self) -> int:
        """The sequence number of the frame read last (of its sender's ring)."""
        if self._single:
            return self._r.handed_sequence()  # type: ignore[union-attr]
        return self._pool.rings[self._sender].handed_sequence()

    def _decode(self, frame: Frame) -> tuple[Any, Lease | None]:
        """The message in `frame` and the lease its views pin the frame with; None: nothing
        decoded refers to the frame, the caller releases it. On a signal handler's exception
        the frame stays as it was (recv decodes it again); a zcser error releases it."""
        data = frame.data
        if frame.size >= layout.TABLE_START and not _COUNT.unpack_from(data, _OFF_COUNT)[0]:
            # No out-of-band buffers: nothing decoded refers to the frame (in-band bytes are
            # copied), so it can go back at once; if anything did, release() refuses and the
            # frame's own garbage collection frees it later.
            try:
                return self.codec.decode(data), None
            except errors.ZcserError:
                _release_quietly(frame)
                raise
        lease = Lease(None)
        try:
            lease._frame = frame  # pinned by a store: a signal cannot land between the two
            return self.codec.decode(frame.data, owner=lease), lease
        except errors.ZcserError:
            del lease
            _release_quietly(frame)
            raise
        except BaseException:
            lease._frame = None  # the frame stays for the next recv (a store: no signal here)
            raise

    def stats(self) -> ReceiverStats:
        """Counters and ring usage (see ReceiverStats)."""
        rs = self._r.stats()
        return ReceiverStats(
            capacity=rs.capacity,
            used=rs.used,
            free=rs.free,
            messages=self._messages,
            bytes=self._bytes,
            frames_pinned=rs.frames_held,
            bytes_pinned=rs.bytes_held,
            blocked_seconds=rs.blocked_seconds,
            senders=self.senders,
            senders_connected=self._pool.writers()
            if self.senders > 1
            else int(
                bool(self._r.writer_pid())  # type: ignore[union-attr]
            ),
            senders_closed=self._closes,
            senders_lost=self._lost,
        )

    @property
    def closed(self) -> bool:
        return self._pool.closed

    def close(self) -> None:
        """Remove the channel's names (shm, semaphores, lock, bells). Views alive stay valid. A
        recv waiting in another thread raises Closed (within `POLL_INTERVAL`; with senders > 1
        within the pool's `BACKSTOP`) before this closes; a `zcser.wait` or `arecv` sleeping on
        this receiver wakes (within the same) and returns it. Should one not have woken after
        twice that (an event loop that this very call blocks), the last of them closes."""
        with self._waiters_lock:
            self._shutting = True
        if self._gate.in_use():
            self._pool.interrupt()
        deadline = time.monotonic() + 2 * tpool.BACKSTOP
        while self._waiters and time.monotonic() < deadline:
            time.sleep(0.002)
        with self._waiters_lock:
            if self._waiters:  # they sleep on the pool's memory and bells: the last one closes
                return
        self._gate.run(self._pool.close)

    # -- zcser.wait and asyncio (channels/waiting.py) --------------------------------------------

    def _wait_ready(self) -> bool:
        """False while another thread is inside recv (it takes what comes; `zcser.wait`
        then looks again every `waiting.BUSY_RECHECK` s instead of waiting for it)."""
        try:
            done, ready = self._gate.attempt(self._ready_now)
        except _TransportError as exc:  # a control word no writer writes
            raise _translate(exc) from None
        self._busy = not done
        return bool(ready)

    def _ready_now(self) -> bool:
        if self._unread is not None or self._ready is not _NOTHING or self._pool.closed:
            return True
        if self._ready_message is not None:
            return True
        if self.senders > 1:
            return self._pool.ready() or (self._finished >= self.senders and self._stream_over())
        ring = self._pool.rings[0]
        return ring.poll() or ring.peer_gone()

    def _wait_fds(self) -> list[Any]:
        return [] if self._busy else self._pool.fds()

    def _wait_arm(self) -> bool:
        """False once close() has begun: not armed, and the caller reports this end (its
        recv says Closed). Armed, close() leaves the pool mapped until _wait_disarm."""
        with self._waiters_lock:
            if self._shutting:
                return False
            self._waiters += 1
        try:
            self._pool.arm(settle=False)  # an atomic add: from any thread, undone below
            self._gate.attempt(self._pool.settle)  # a recv in another thread settles by itself
        except BaseException:
            self._wait_leave(disarm=False)
            raise
        return True

    def _wait_disarm(self) -> None:
        self._wait_leave(disarm=True)

    def _wait_leave(self, disarm: bool) -> None:
        try:
            if disarm:
                self._pool.disarm()
        finally:
            with self._waiters_lock:
                self._waiters -= 1
                last = self._shutting and not self._waiters
            if last:  # close() gave up waiting for us, or is about to close anyway
                self._gate.run(self._pool.close)

    def _wait_woken(self) -> None:
        # The bells (and with senders > 1 the pool's state) belong to a recv running in
        # another thread: left to it; and to nobody once close() has begun.
        with self._waiters_lock:
            if self._shutting:
                return
            self._waiters += 1
        try:
            self._gate.attempt(self._pool.woken)
        except _TransportError as exc:  # a bell replaced by someone else, a corrupt word
            raise _translate(exc) from None
        finally:
            self._wait_leave(disarm=False)

    def _wait_backstop(self) -> float | None:
        if self._busy:
            return waiting.BUSY_RECHECK
        if self.senders > 1:
            return tpool.BACKSTOP
        # A writer that is not a zcser Sender (another ZeroBuffer implementation) rings no bell.
        pid = self._pool.rings[0].writer_pid()
        return tpool.BACKSTOP if not pid or self._pool.owner(0) == pid else FOREIGN_POLL


def _small_limit(threshold: int) -> int:
    """The receiver's copy-out limit: below the smallest message that can carry an out-of-band
    buffer (header, one table entry and `threshold` bytes), so small arrays that a low codec
    threshold sends out of band stay zero-copy views of the frame."""
    smallest_oob = layout.TABLE_START + layout.ENTRY.size + max(threshold, 1)
    return min(SMALL_MESSAGE, smallest_oob - 1)


def _release_quietly(frame: Frame | bytes) -> None:
    """Release now if nothing exports the frame, else let its garbage collection do it (a plain
    try: contextlib.suppress costs a context manager per message)."""
    if isinstance(frame, bytes):
        return
    try:  # noqa: SIM105
        frame.release()
    except BufferError:
        pass


base.register("shm", ShmSender, ShmReceiver)
