"""Every exception zcser raises: one tree, caller misuse split from bad bytes (h11 style).

`UsageError` means *you* called the API wrongly and can fix the call; `CorruptData` means the
bytes or the peer are bad and retrying the same input will not help; `Timeout`, `PeerDead`,
`Closed` and `ChannelError` are about the state of a channel and the machine. All are picklable.

The transports raise their own errors (`transports.errors`: that package knows nothing of
zcser); `translate` is the one place where they become the classes below, so a user catches
one tree whatever the transport.
"""

from __future__ import annotations

from typing import overload

from transports import errors as _transport

__all__ = [
    "BufferTooSmall",
    "ChecksumMismatch",
    "Closed",
    "CorruptData",
    "CorruptMessage",
    "CorruptSnapshot",
    "DecodeError",
    "IncompatibleStream",
    "MessageTooLarge",
    "Timeout",
    "UnregisteredType",
    "UnsupportedType",
    "UnsupportedVersion",
    "UsageError",
    "ZcserError",
]


class ZcserError(Exception):
    """Base class of every zcser error."""


class UsageError(ZcserError):
    """The caller misused the API; the message says which call to change."""


class UnregisteredType(UsageError):
    """A class is not registered: call `codec.register(cls)` on writer and reader."""


class UnsupportedType(UsageError):
    """The object's type cannot be sent; the message says what to convert it to."""


class BufferTooSmall(UsageError):
    """The target memory cannot hold the message; allocate `plan.nbytes` bytes."""


class MessageTooLarge(UsageError):
    """The message exceeds a transport or format limit."""


class CorruptData(ZcserError):
    """The bytes (or the peer that wrote them) are bad."""


class CorruptMessage(CorruptData):
    """The message header, buffer table or a buffer is inconsistent with the memory given."""


class ChecksumMismatch(CorruptData):
    """A checksum stored in the message does not match the data: it was altered after writing."""


class DecodeError(CorruptData):
    """The serializer failed on the in-band bytes; the original error is chained as __cause__."""


class IncompatibleStream(CorruptData):
    """Writer and reader codecs differ in a way that makes decoding unsafe or wrong."""


class UnsupportedVersion(CorruptData):
    """The message uses a format version this zcser cannot read."""


class CorruptSnapshot(CorruptData):
    """A snapshot file is truncated or damaged."""


class Closed(ZcserError):
    """The channel or stream was closed."""


class Timeout(ZcserError, TimeoutError):
    """An operation did not complete in the time allowed (also a builtin `TimeoutError`)."""


# --- channels (zcser.channels): the peer process and the shared ring -------------------------


class PeerDead(ZcserError):
    """The process on the other side of a channel is gone."""


class WriterDead(PeerDead):
    """The sender died (or detached without closing) and every message it sent has been read."""


class ReaderDead(PeerDead):
    """The receiver closed or died; messages can no longer be delivered. Start a new Receiver."""


class BufferFull(Timeout):
    """The ring stayed full for the whole timeout: the receiver is slow or holds its messages."""


class ChannelError(ZcserError):
    """The shared buffer cannot be created or joined (name taken or missing, /dev/shm full)."""


class CorruptStream(CorruptData):
    """The shared ring holds values no correct peer writes (bad header, lost frames)."""


class MessagesLost(CorruptStream):
    """Messages a network sender sent to this receiver never arrived: its connection broke
    (a host or the path between them vanished for longer than the liveness timeout) and was
    made again. `lost` messages of sender `writer` are missing, from sequence number `first`
    on. The message that revealed the gap is not lost: the next recv returns it."""

    lost: int = 0
    first: int = 0
    writer: int = 0


class ShmFull(ChannelError):
    """Not enough free shared memory (/dev/shm) for the ring: a smaller capacity, or more
    shared memory (Docker: --shm-size)."""


class DiskFull(ZcserError):
    """Not enough disk space for the snapshot being written: free space or write elsewhere."""


__all__ += [
    "BufferFull",
    "ChannelError",
    "CorruptStream",
    "DiskFull",
    "MessagesLost",
    "PeerDead",
    "ReaderDead",
    "ShmFull",
    "WriterDead",
    "translate",
]


# --- the one seam between transport errors and this tree ----------------------------------------

_TRANSLATE: tuple[tuple[type[Exception], type[ZcserError]], ...] = (
    (_transport.BufferFull, BufferFull),
    (_transport.Timeout, Timeout),
    (_transport.WriterDead, WriterDead),
    (_transport.ReaderDead, ReaderDead),
    (_transport.FrameTooLarge, MessageTooLarge),
    (_transport.TransportClosed, Closed),
    (_transport.SnapshotFileError, CorruptSnapshot),
    (_transport.MessagesLost, MessagesLost),
    (_transport.PeerProtocolError, CorruptStream),
    (_transport.ShmFullError, ShmFull),
    (_transport.FileSpaceError, DiskFull),
    (_transport.TransportEnvironmentError, ChannelError),
    (_transport.TransportUsageError, UsageError),
)


@overload
def translate(exc: _transport.TransportError) -> ZcserError: ...
@overload
def translate(exc: BaseException) -> BaseException: ...


def translate(exc: BaseException) -> BaseException:
    """The class of this tree for a transport error, with its message and its fields (`timeout`,
    `needed`, `available`, ...; first match of the table above, most specific first); anything
    that is not a transport error is returned as it is."""
    if not isinstance(exc, _transport.TransportError):
        return exc
    target: type[ZcserError] = ChannelError
    for source, cls in _TRANSLATE:
        if isinstance(exc, source):
            target = cls
            break
    new = target(str(exc))
    new.__dict__.update(exc.__dict__)
    return new
