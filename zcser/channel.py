"""Channels: `Sender.send(obj)` in one process, `Receiver.recv()` in another, over shared memory.

```
rx = zcser.Receiver(name)            # creates the ZeroBuffer ring (reader side)
tx = zcser.Sender(name)              # connects (writer side), writes the stream schema once
tx.send({"x": array, "t": 1.5})      # one message = one frame; blocks while the ring is full
obj = rx.recv()                      # arrays are read-only views into shared memory
arr = tx.empty((1080, 1920, 3), np.uint8); fill(arr); tx.send({"frame": arr})  # no copy at all
```

Lifetimes: every view `recv` returns pins its frame (a `Lease` is the codec's owner); the frame
goes back to the writer when the last view is garbage-collected. `recv_message()` adds explicit
release. Errors come from `zcser.errors`: `Timeout`, `BufferFull`, `WriterDead`, `ReaderDead`,
`Closed` (the sender closed and everything was read), `MessageTooLarge`, `IncompatibleStream`.

`tx.empty()` arrays live in the frame being built: fill them, then send them in the next
message. After that send they are read-only and sending them again raises `UsageError`; an
`empty()` array left out of the next message is discarded (its memory goes back to the ring).
One Sender per Receiver: ZeroBuffer rings have one writer (use one channel per producer).
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import secrets
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from transports import errors as terr
from transports._layout import HEADER_SIZE as _FRAME_HEADER
from transports.zerobuffer import DEFAULT_SPIN, BufferConfig, Frame, Reader, Writer
from zcser import _copy, _message, errors
from zcser._lease import Lease, Message
from zcser.codec import Codec, Plan, _address

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_HEADROOM",
    "Message",
    "Receiver",
    "ReceiverStats",
    "Sender",
    "SenderFactory",
    "SenderStats",
    "channel",
]

DEFAULT_CAPACITY = 256 << 20
"""Ring bytes. A message may use at most half of it (so one is read while the next is written)."""

DEFAULT_HEADROOM = 4096
"""Bytes kept at the start of an `empty()` frame for message header, table and in-band bytes."""

METADATA_SIZE = 64 << 10
"""Metadata block for the stream schema (JSON; registered type names make it grow)."""

STREAM_FORMAT = "zcser-channel"
STREAM_VERSION = 1

_EOS = b"ZCSREOS\x00"
_EOS_SIZE = len(_EOS)
SMALL_MESSAGE = 16 * 1024
"""Messages up to this size are copied out of the ring on receipt and their frame given back at
once: a 16 KiB copy costs less than a frame's lease and release, and such a message (under the
default codec threshold) carries no out-of-band buffer, so nothing decoded would pin it anyway."""
"""End-of-stream frame written by Sender.close(); shorter than any message header."""

_ALIGN = _message.ALIGN
_COUNT = struct.Struct("<I")
_OFF_COUNT = _message.OFF_COUNT


# --- errors and schema ---------------------------------------------------------------------------

_TRANSLATE: tuple[tuple[type[Exception], type[errors.ZcserError]], ...] = (
    (terr.BufferFull, errors.BufferFull),
    (terr.Timeout, errors.Timeout),
    (terr.WriterDead, errors.WriterDead),
    (terr.ReaderDead, errors.ReaderDead),
    (terr.FrameTooLarge, errors.MessageTooLarge),
    (terr.TransportClosed, errors.Closed),
    (terr.PeerProtocolError, errors.CorruptStream),
    (terr.TransportEnvironmentError, errors.ChannelError),
    (terr.TransportUsageError, errors.UsageError),
)


def _translate(exc: terr.TransportError) -> errors.ZcserError:
    """The zcser.errors class users catch for a transport error (the message is kept)."""
    for source, target in _TRANSLATE:
        if isinstance(exc, source):
            return target(str(exc))
    return errors.ChannelError(str(exc))


def _sender_dead(name: str, exc: terr.WriterDead) -> errors.WriterDead:
    """WriterDead with the channel's advice: a Receiver takes one Sender for its lifetime, so the
    transport's "a new Writer may connect" does not apply."""
    what = str(exc).partition(". A new Writer")[0].rstrip(".")
    return errors.WriterDead(
        f"channel {name!r}: the sender is gone ({what}). A Receiver takes one Sender for its "
        "lifetime: make a new Receiver (a new name) and restart the sender against it."
    )


def stream_schema(codec: Codec) -> dict[str, Any]:
    """What a Sender writes into the ring's metadata block: stream format plus codec schema."""
    return {"stream": STREAM_FORMAT, "stream_version": STREAM_VERSION, **codec.schema()}


def check_stream(codec: Codec, raw: Any) -> None:
    """Raise IncompatibleStream unless `raw` (metadata bytes) is a stream `codec` can decode."""
    if raw is None or not len(raw):
        raise errors.IncompatibleStream(
            "the writer wrote no stream schema: it is not a zcser.Sender (raw ZeroBuffer "
            "writers need transports.zerobuffer.Reader, not zcser.Receiver)"
        )
    try:
        other = json.loads(bytes(raw))
    except ValueError:
        other = None
    if not isinstance(other, dict) or other.get("stream") != STREAM_FORMAT:
        raise errors.IncompatibleStream(
            "the ring's metadata is not a zcser stream schema: the writer is not a zcser.Sender"
        )
    if other.get("stream_version") != STREAM_VERSION:
        raise errors.IncompatibleStream(
            f"stream version {other.get('stream_version')!r} (writer, zcser "
            f"{other.get('codec_version')}) vs {STREAM_VERSION} (this reader): use the same "
            "zcser version on both sides"
        )
    codec.check_schema(other)


def _is_url(name: object) -> bool:
    """tcp:// and ipc:// names select the network transport (zcser._net)."""
    return isinstance(name, str) and name.startswith(("tcp://", "ipc://"))


def _shm_name(name: str) -> str:
    return name[len("shm://") :] if name.startswith("shm://") else name


def _align_up(value: int) -> int:
    return (value + _ALIGN - 1) // _ALIGN * _ALIGN


def _shape(shape: Any) -> tuple[int, ...]:
    """`shape` as a tuple of sizes >= 0 (UsageError otherwise)."""
    try:
        if isinstance(shape, (tuple, list)):
            dims = tuple(operator.index(d) for d in shape)
        else:
            dims = (operator.index(shape),)
    except TypeError:
        raise errors.UsageError(f"empty() needs a shape of ints, not {shape!r}") from None
    if any(d < 0 for d in dims):
        raise errors.UsageError(f"empty() needs sizes >= 0, not {dims}")
    return dims


def _plain_dtype(dtype: Any) -> np.dtype[Any]:
    """`dtype` as a numpy dtype without Python objects (UsageError otherwise): empty() memory
    is sent as bytes, and object pointers mean nothing in another process."""
    dt: np.dtype[Any] = np.dtype(dtype)
    if dt.hasobject:
        raise errors.UsageError(f"empty() needs a plain dtype, not {dt} (objects hold pointers)")
    return dt


def _too_large(nbytes: int, capacity: int) -> errors.MessageTooLarge:
    return errors.MessageTooLarge(
        f"a message of {nbytes} bytes is larger than half the channel's {capacity}-byte ring "
        f"(the most that always fits while the previous message is still held); create the "
        f"Receiver with capacity >= {2 * (nbytes + _FRAME_HEADER)} or send the object in parts"
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


class Sender:
    """The writing end of channel NAME (the Receiver must exist). One Sender per Receiver; use
    it from one thread at a time.

    `codec` must match the receiver's (same registered classes, same mode): the receiver checks
    the stream schema this writes. `headroom`: bytes kept before `empty()` arrays for the
    message's header and in-band part; if they do not fit there, that send copies.
    `copy_threads`: threads that copy each buffer of 8 MiB or more into the frame, each part
    with streaming stores (default None: the CPUs this process may use, at most 4; 1: the
    calling thread alone, with memcpy). On the 2-core benchmark VM two threads sent 100 MiB in
    ~6.7 ms instead of ~10 ms.
    NAME `tcp://HOST:PORT` or `ipc:///PATH` builds a network sender (`zcser._net.NetSender`);
    `shm://NAME` is the same as NAME.
    """

    def __new__(cls, name: str, *args: Any, **kwargs: Any) -> Any:
        if _is_url(name):
            from zcser._net import NetSender

            return NetSender(name, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        name: str,
        codec: Codec | None = None,
        *,
        headroom: int = DEFAULT_HEADROOM,
        spin: int = DEFAULT_SPIN,
        copy_threads: int | None = None,
    ) -> None:
        self._closed = True
        if copy_threads is not None and (
            isinstance(copy_threads, bool) or not isinstance(copy_threads, int) or copy_threads < 1
        ):
            raise errors.UsageError(
                f"copy_threads must be an int >= 1 or None, not {copy_threads!r}"
            )
        self._copy_threads = _copy.default_threads() if copy_threads is None else copy_threads
        name = _shm_name(name)
        self.name = name
        self.codec = codec if codec is not None else Codec()
        if headroom < _message.TABLE_START:
            raise errors.UsageError(f"headroom must be >= {_message.TABLE_START} bytes")
        self._headroom = headroom
        try:
            self._w = Writer(name, spin=spin)
        except terr.TransportError as exc:
            raise _translate(exc) from exc
        schema = json.dumps(stream_schema(self.codec), sort_keys=True).encode()
        try:
            self._w.set_metadata(schema)
        except terr.MetadataAlreadyWritten:
            self._w.close()
            raise errors.UsageError(
                f"channel {name!r} already served a Sender: a Receiver takes one Sender for its "
                "lifetime. Create a new Receiver (a new name) for a new Sender."
            ) from None
        except terr.TransportError as exc:
            self._w.close()
            raise _translate(exc) from exc
        self._closed = False
        self._pid = os.getpid()
        self._capacity = self._w.stats().capacity
        self._half = self._capacity // 2
        self._res: memoryview | None = None  # the reserved frame empty() arrays live in
        self._res_n = 0
        self._res_addr = 0
        self._cursor = 0  # end of the last empty() array, from the frame start
        self._first = 0  # start of the first empty() array
        self._pending: list[np.ndarray] = []
        self._ring_lo = 0  # address span of every frame reserved for empty() arrays
        self._ring_hi = 0
        self._messages = 0
        self._bytes = 0
        self._zero_copy = 0
        self._fallbacks = 0
        self._next_addr = 0  # where the next frame's data will most likely start

    # -- sending ---------------------------------------------------------------------------------

    def send(self, obj: Any, timeout: float | None = None) -> None:
        """Send `obj` as one message. Blocks while the ring is full: `timeout` seconds (None: as
        long as the receiver lives; 0: one try, to drop messages) then BufferFull."""
        if self._closed:
            self._check_open()
        if self._res is not None:
            used = self._send_reserved(self.codec.plan(obj), timeout)
            self._messages += 1
            self._bytes += used
            return
        plan = self.codec.pack(obj)
        if isinstance(plan, bytes):
            # No out-of-band buffer: the bytes do not depend on the frame's address, so one
            # transport write copies them in (no reservation round).
            used = len(plan)
            if used + _FRAME_HEADER > self._half:
                raise _too_large(used, self._capacity)
            try:
                self._w.write(plan, timeout)
            except terr.TransportError as exc:
                raise _translate(exc) from exc
            self._next_addr = 0
        else:
            if self._ring_hi:
                self._refuse_sent(plan)
            used = self._send_copy(plan, timeout)
        self._messages += 1
        self._bytes += used

    def _send_copy(self, plan: Plan, timeout: float | None) -> int:
        """Reserve exactly the message's size where the frame will land (its buffers' padding
        depends on the address), write the message into the frame, publish."""
        w = self._w
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
        if n + _FRAME_HEADER > self._capacity // 2:
            raise _too_large(n, self._capacity)
        try:
            return self._w.reserve(n, timeout)
        except terr.TransportError as exc:
            raise _translate(exc) from exc

    def _commit(self, used: int, address: int) -> None:
        try:
            self._w.commit(used)
        except terr.TransportError as exc:
            raise _translate(exc) from exc
        self._next_addr = address + used + _FRAME_HEADER

    def _send_reserved(self, plan: Plan, timeout: float | None) -> int:
        """Write the message around the empty() arrays already in the reserved frame."""
        base, end = self._res_addr, self._res_addr + self._res_n
        pending = {int(a.ctypes.data): a.nbytes for a in self._pending}
        placed: set[int] = set()
        inside = False
        extra = 0
        for buf in plan.buffers:
            addr = _address(buf)
            if base <= addr < end:
                inside = True
                if pending.get(addr) == buf.nbytes and addr not in placed:
                    placed.add(addr)
                    continue
            elif self._ring_lo <= addr < self._ring_hi:
                self._refuse_sent(plan)
            extra += _align_up(buf.nbytes)
        head = _message.meta_size(len(plan.buffers), plan.checksum) + len(plan.inband)
        if inside and head > self._first:
            return self._send_fallback(plan, timeout)
        need = max(self._cursor, head) + extra + (_ALIGN - 1 if extra else 0)
        if need > self._res_n and not self._grow(need, timeout):
            return self._send_fallback(plan, timeout)
        assert self._res is not None
        address = self._res_addr
        used = plan.write_into(self._res, address, copy_threads=self._copy_threads)
        self._finish_reservation()
        self._commit(used, address)
        self._zero_copy += bool(placed)
        return used

    def _send_fallback(self, plan: Plan, timeout: float | None) -> int:
        """Copy the arrays out of the reserved frame, give it back, and send by copy. If that
        send fails (full ring, timeout), the frame is reserved again at the same place, so the
        empty() arrays stay valid and the same send can be retried."""
        base, end = self._res_addr, self._res_addr + self._res_n
        for i, buf in enumerate(plan.buffers):
            if base <= _address(buf) < end:
                plan.buffers[i] = memoryview(bytearray(buf))
        n = self._res_n
        self._w.abort()
        try:
            used = self._send_copy(plan, timeout)
        except BaseException:
            self._restore(n)
            if self._res_addr != base:
                self._w.abort()
                self._finish_reservation()
                raise errors.UsageError(
                    "the empty() frame could not be reserved again at its place: allocate the "
                    "arrays again"
                ) from None
            raise
        self._finish_reservation()
        self._fallbacks += 1
        return used

    def _refuse_sent(self, plan: Plan) -> None:
        lo, hi = self._ring_lo, self._ring_hi
        res_lo, res_hi = self._res_addr, self._res_addr + self._res_n
        for buf in plan.buffers:
            addr = _address(buf)
            if lo <= addr < hi and not (self._res is not None and res_lo <= addr < res_hi):
                raise errors.UsageError(
                    "this array was allocated by Sender.empty() and already sent: its memory "
                    "belongs to the receiver now. Allocate a new one with empty() (or send a "
                    "copy: arr.copy())."
                )

    # -- zero-copy allocation --------------------------------------------------------------------

    def empty(
        self, shape: int | tuple[int, ...], dtype: Any = float, *, timeout: float | None = None
    ) -> np.ndarray:
        """A new uninitialised array inside the next frame: fill it and send it in the next
        message, with no copy. Several arrays (any dtypes) may go into one message. Blocks for
        ring space like send(). After that send the array is read-only."""
        self._check_open()
        dt = _plain_dtype(dtype)
        dims = _shape(shape)
        count = math.prod(dims)
        nbytes = count * dt.itemsize
        if nbytes == 0:
            return np.empty(dims, dt)
        if self._res is None:
            self._reserve(self._headroom + _ALIGN - 1 + nbytes, timeout)
            self._cursor = self._headroom
        offset = _align_up(self._res_addr + self._cursor) - self._res_addr
        end = offset + nbytes
        if end > self._res_n and not self._grow(end, timeout):
            self._fallbacks += 1
            return np.empty(dims, dt)  # this one is copied at send
        assert self._res is not None
        array = np.frombuffer(self._res, dtype=dt, count=count, offset=offset).reshape(dims)
        if not self._pending:
            self._first = offset
        self._pending.append(array)
        self._cursor = end
        return array

    def _reserve(self, n: int, timeout: float | None) -> None:
        view = self._reserve_frame(n, timeout)
        self._res = view
        self._res_n = n
        self._res_addr = addr = self._w.reserved_address
        self._ring_lo = min(self._ring_lo or addr, addr)
        self._ring_hi = max(self._ring_hi, addr + n)

    def _grow(self, n: int, timeout: float | None) -> bool:
        """Enlarge the reserved frame in place to n bytes (re-reserving from the same ring
        position keeps its address). False if it would have to move (the ring's end is near)."""
        w = self._w
        old_n, old_offset = self._res_n, w.reserved_offset
        w.abort()
        try:
            self._reserve(n, timeout)
        except BaseException:
            self._restore(old_n)
            raise
        if w.reserved_offset == old_offset:
            return True
        w.abort()
        self._restore(old_n)
        return False

    def _restore(self, n: int) -> None:
        """Re-reserve the previous frame; it fits at once (only the writer consumes space)."""
        try:
            self._reserve(n, 0)
        except errors.ZcserError:
            self._res = None
            self._finish_reservation()
            raise

    def _finish_reservation(self) -> None:
        """The empty() arrays were sent (or dropped): make them read-only, forget the frame."""
        for array in self._pending:
            array.flags.writeable = False
        self._pending.clear()
        self._res = None
        self._res_n = 0
        self._res_addr = 0
        self._cursor = 0

    # -- state -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise errors.Closed(f"sender of {self.name!r} is closed; create a new Sender")

    def stats(self) -> SenderStats:
        """Counters and ring usage (see SenderStats)."""
        ws = self._w.stats()
        return SenderStats(
            capacity=ws.capacity,
            used=ws.used,
            free=ws.free,
            messages=self._messages,
            bytes=self._bytes,
            zero_copy=self._zero_copy,
            copy_fallbacks=self._fallbacks,
            unread=ws.frames_unread,
            blocked_seconds=ws.blocked_seconds,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = 1.0) -> None:
        """Mark the end of the stream (the receiver then gets Closed once it has read every
        message; if the ring stays full for `timeout` s it gets WriterDead) and detach."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            return  # a forked child's copy: the stream belongs to the parent
        if self._res is not None:
            self._w.abort()
            self._finish_reservation()
        try:
            self._w.write(_EOS, timeout)
        except terr.TransportError:
            pass  # the receiver is gone or holds the whole ring
        finally:
            self._w.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close(timeout=0)

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Sender is connected to its ring and cannot be pickled: pass the SenderFactory "
            "from zcser.channel() (or the channel name) to the process that sends"
        )

    def __repr__(self) -> str:
        return f"<Sender {self.name!r} {'closed' if self._closed else 'open'}>"


# --- receiving -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiverStats:
    """A receiver's counters and ring usage; `frames_pinned` are held by live views."""

    capacity: int
    used: int
    free: int
    messages: int
    bytes: int
    frames_pinned: int
    bytes_pinned: int
    blocked_seconds: float


class Receiver:
    """The reading end of channel NAME: creates the shared ring (`capacity` bytes; the largest
    message is half of it). Decodes with `codec`, which must match the sender's.
    NAME `tcp://HOST:PORT` or `ipc:///PATH` builds a network receiver (`zcser._net.NetReceiver`,
    it binds; `tcp://127.0.0.1:0` picks a free port, read it from `.name`)."""

    def __new__(cls, name: str, *args: Any, **kwargs: Any) -> Any:
        if _is_url(name):
            from zcser._net import NetReceiver

            return NetReceiver(name, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        name: str,
        capacity: int = DEFAULT_CAPACITY,
        codec: Codec | None = None,
        *,
        metadata_size: int = METADATA_SIZE,
        spin: int = DEFAULT_SPIN,
    ) -> None:
        name = _shm_name(name)
        self.name = name
        self.codec = codec if codec is not None else Codec()
        try:
            self._r = Reader(name, BufferConfig(metadata_size, capacity), timeout=None, spin=spin)
        except terr.TransportError as exc:
            raise _translate(exc) from exc
        self._checked = False
        self._ended = False
        self._messages = 0
        self._bytes = 0
        self._small = _small_limit(self.codec.threshold)

    def _frame(self, timeout: float | None, small: int = -1) -> Frame | bytes:
        """The next message frame, or its bytes when at most `small` long (already given back);
        Closed at the end-of-stream mark."""
        try:
            got = self._r.read_small(small, timeout)
        except terr.TransportError as exc:
            raise self._read_error(exc) from None
        return self._accept(got)

    def _read_error(self, exc: terr.TransportError) -> errors.ZcserError:
        if isinstance(exc, terr.WriterDead):
            if self._ended:
                return errors.Closed(f"channel {self.name!r}: the sender closed")
            return _sender_dead(self.name, exc)
        return _translate(exc)

    def _accept(self, got: Frame | bytes) -> Frame | bytes:
        """Stop at the end-of-stream mark, check the stream schema once, count the message."""
        if isinstance(got, bytes):
            size = len(got)
            if size == _EOS_SIZE and got == _EOS:
                self._end()
        else:
            size = got.size
            if size == _EOS_SIZE and got.data == _EOS:
                got.release()
                self._end()
        if not self._checked:
            try:
                check_stream(self.codec, self._r.metadata)
            except terr.TransportError as exc:  # a corrupt metadata block
                _release_quietly(got)
                raise _translate(exc) from None
            except BaseException:
                _release_quietly(got)
                raise
            self._checked = True
        self._messages += 1
        self._bytes += size
        return got

    def _end(self) -> None:
        self._ended = True
        raise errors.Closed(
            f"channel {self.name!r}: the sender closed and every message has been read"
        )

    def recv(self, timeout: float | None = None, copy: bool = False) -> Any:
        """The next object. Blocks up to `timeout` s (None: while the sender lives). Arrays are
        read-only views pinning their frame until garbage-collected; copy=True gives private
        writable objects and frees the frame at once."""
        try:
            got = self._r.read_small(self._small, timeout)
        except terr.TransportError as exc:
            raise self._read_error(exc) from None
        if isinstance(got, bytes) and len(got) != _EOS_SIZE and self._checked and not copy:
            self._messages += 1
            self._bytes += len(got)
            return self.codec.decode_small(got)
        got = self._accept(got)
        if isinstance(got, bytes):
            # A small message, copied out whole: its frame went back to the writer already.
            return self.codec.decode(got, copy=True) if copy else self.codec.decode_small(got)
        if copy:
            try:
                return self.codec.decode(got.data, copy=True)
            finally:
                _release_quietly(got)
        return self._decode(got)[0]

    def recv_message(self, timeout: float | None = None) -> Message:
        """The next message with an explicit lifetime: `with rx.recv_message() as msg:`."""
        frame = self._frame(timeout)
        assert type(frame) is Frame
        value, lease = self._decode(frame)
        return Message(value, lease, frame.sequence, frame.size)

    def _decode(self, frame: Frame) -> tuple[Any, Lease | None]:
        data = frame.data
        if frame.size >= _message.TABLE_START and not _COUNT.unpack_from(data, _OFF_COUNT)[0]:
            # No out-of-band buffers: nothing decoded refers to the frame (in-band bytes are
            # copied), so it goes back at once; if anything did, release() refuses and the
            # frame's own garbage collection frees it later.
            try:
                return self.codec.decode(data), None
            finally:
                _release_quietly(frame)
        lease = Lease(frame)
        try:
            return self.codec.decode(frame.data, owner=lease), lease
        except BaseException:
            del lease
            _release_quietly(frame)
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
        )

    @property
    def closed(self) -> bool:
        return self._r.closed

    def close(self) -> None:
        """Remove the ring's names (shm, semaphores, lock). Views alive stay valid."""
        self._r.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Receiver owns its ring and cannot be pickled: create it in the reading process "
            "and pass the name (or a zcser.channel() SenderFactory) to the writer"
        )

    def __repr__(self) -> str:
        return f"<Receiver {self.name!r} {'closed' if self.closed else 'open'}>"


def _small_limit(threshold: int) -> int:
    """The receiver's copy-out limit: below the smallest message that can carry an out-of-band
    buffer (header, one table entry and `threshold` bytes), so small arrays that a low codec
    threshold sends out of band stay zero-copy views of the frame."""
    smallest_oob = _message.TABLE_START + _message.ENTRY.size + max(threshold, 1)
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


# --- the pair ------------------------------------------------------------------------------------


class SenderFactory:
    """A picklable recipe for the Sender of one channel: pass it to a process (any start
    method), call it there. Carries the name and the codec's configuration, not the codec."""

    def __init__(self, name: str, codec: Codec | None = None, **options: Any) -> None:
        self.name = name
        self.options = options
        self._codec: tuple[Any, ...] | None = None
        if codec is not None:
            self._codec = (
                codec.threshold,
                codec.trusted,
                codec.checksum,
                codec.ref,
                dict(codec._types),
            )

    def codec(self) -> Codec:
        """A fresh Codec configured like the one given (same classes under the same names)."""
        if self._codec is None:
            return Codec()
        threshold, trusted, checksum, ref, types = self._codec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the trusted-mode warning was shown at creation
            codec = Codec(threshold=threshold, trusted=trusted, checksum=checksum, ref=ref)
        for type_name, cls in types.items():
            codec.register(cls, name=type_name)
        return codec

    def __call__(self) -> Sender:
        return Sender(self.name, self.codec(), **self.options)

    def __repr__(self) -> str:
        return f"<SenderFactory {self.name!r}>"


def channel(
    name: str | None = None,
    capacity: int = DEFAULT_CAPACITY,
    codec: Codec | None = None,
    **sender_options: Any,
) -> tuple[SenderFactory, Receiver]:
    """Create a channel here (the Receiver) and a picklable factory for its Sender:

    ```
    make_tx, rx = zcser.channel()
    Process(target=producer, args=(make_tx,)).start()   # producer: tx = make_tx(); tx.send(...)
    obj = rx.recv()
    ```
    """
    if name is None:
        name = f"zcser-{os.getpid()}-{secrets.token_hex(4)}"
    receiver = Receiver(name, capacity, codec)
    return SenderFactory(receiver.name, codec, **sender_options), receiver
