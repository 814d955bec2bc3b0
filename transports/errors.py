"""Errors raised by the transports.

One base, `TransportError`, split three ways (h11's Local/Remote split plus the environment):

- `TransportUsageError`: *you* misused the API (frame too large, metadata twice, commit without
  reserve, a closed object). Fix the calling code. Value problems are also `ValueError`s.
- `PeerProtocolError`: *the peer or the bytes* are bad (a corrupt OIEB or frame header, a
  sequence gap, an incompatible protocol version). Nothing the caller passed is wrong; the other
  side (or whatever scribbled on the shared memory) is.
- `TransportEnvironmentError`: *the environment* (a peer died, a timeout, /dev/shm is full, the
  buffer does not exist, is taken, or belongs to another user).

Every class takes a single message string, so instances pickle and unpickle with their type and
message intact (extra fields live in the instance dict, which pickle keeps). Messages say what to do.
"""

from __future__ import annotations

from typing import Any


class TransportError(Exception):
    """Base of every error the transports raise."""

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message or self.__doc__ or type(self).__name__)
        for key, value in fields.items():
            setattr(self, key, value)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


# --- you misused the API -------------------------------------------------------------------------


class TransportUsageError(TransportError):
    """The caller used the API wrongly; change the calling code."""


class TransportClosed(TransportUsageError, ValueError):
    """This reader or writer is closed; create a new one."""


class InvalidName(TransportUsageError, ValueError):
    """A buffer name must be short and use only letters, digits, '_' and '-'."""


class InvalidConfig(TransportUsageError, ValueError):
    """A buffer configuration value is out of range."""


class InvalidFrameSize(TransportUsageError, ValueError):
    """A frame must carry at least one byte."""


class FrameTooLarge(TransportUsageError, ValueError):
    """The frame cannot fit in the ring; use a bigger payload_size or split the data."""


class MetadataAlreadyWritten(TransportUsageError):
    """Metadata is written once per buffer; a new stream needs a new buffer (a new Reader)."""


class MetadataTooLarge(TransportUsageError, ValueError):
    """The metadata does not fit the metadata block; create the reader with a larger metadata_size."""


class ReservationError(TransportUsageError):
    """reserve() / commit() / abort() called out of order."""


# --- the peer or the bytes are bad ---------------------------------------------------------------


class PeerProtocolError(TransportError):
    """The shared buffer holds values no correct peer writes."""


class CorruptBuffer(PeerProtocolError):
    """An OIEB field or frame header is out of range; the buffer cannot be trusted any more."""


class IncompatibleBuffer(CorruptBuffer):
    """The buffer was made by an incompatible protocol version or layout."""


class SequenceError(PeerProtocolError):
    """A frame arrived with an unexpected sequence number (a frame was lost or written twice)."""


class MessagesLost(SequenceError):
    """Messages a peer sent to this reader never arrived (a connection broke and was re-made);
    `lost` of them, from `first` on, of writer `writer`. The message that showed the gap is
    kept for the next read."""

    lost: int = 0
    first: int = 0
    writer: int = 0


# --- the environment -----------------------------------------------------------------------------


class TransportEnvironmentError(TransportError):
    """The world around the call is not as needed (peers, time, memory, names)."""


class PeerDead(TransportEnvironmentError):
    """The process on the other side is gone."""


class WriterDead(PeerDead):
    """The writer closed or died; every frame it published has been read. Reconnect a writer."""


class ReaderDead(PeerDead):
    """The reader closed or died; the buffer is gone. Create a new reader, then reconnect."""


class Timeout(TransportEnvironmentError, TimeoutError):
    """Nothing happened within the timeout while the peer is alive; retry or raise the timeout."""


class BufferFull(Timeout):
    """No space within the timeout and the reader is alive: it holds or has not read the frames."""


class BufferNotFound(TransportEnvironmentError):
    """No buffer of that name exists; start the reader (which creates it) first."""


class BufferExists(TransportEnvironmentError):
    """A live reader already owns a buffer of that name; pick another name or close that reader."""


class NameInUse(BufferExists):
    """Something that is not a stale ZeroBuffer buffer of this user already has that name (another
    program's shared memory, a FIFO, a live buffer); pick another name."""


class ForeignResource(TransportEnvironmentError):
    """A buffer's shared memory, semaphore, lock file or lock directory belongs to another user
    or may be written by others, so it is refused; pick another name or remove it as its owner."""


class WriterAlreadyConnected(TransportEnvironmentError):
    """A live writer is already connected; one writer per buffer."""


class ShmFullError(TransportEnvironmentError):
    """Not enough free shared memory (/dev/shm) for the buffer."""


class AtomicsUnavailable(TransportEnvironmentError):
    """libatomic could not be loaded; install it (Debian/Ubuntu: apt-get install libatomic1)."""


__all__ = [
    "AtomicsUnavailable",
    "BufferExists",
    "BufferFull",
    "BufferNotFound",
    "CorruptBuffer",
    "ForeignResource",
    "FrameTooLarge",
    "IncompatibleBuffer",
    "InvalidConfig",
    "InvalidFrameSize",
    "InvalidName",
    "MessagesLost",
    "MetadataAlreadyWritten",
    "MetadataTooLarge",
    "NameInUse",
    "PeerDead",
    "PeerProtocolError",
    "ReaderDead",
    "ReservationError",
    "SequenceError",
    "ShmFullError",
    "Timeout",
    "TransportClosed",
    "TransportEnvironmentError",
    "TransportError",
    "TransportUsageError",
    "WriterAlreadyConnected",
    "WriterDead",
]


# --- snapshot files (transports.mmapfile; appended by the snapshot owner) -----------------------


class SnapshotFileError(PeerProtocolError):
    """A file cannot be used as it is on disk (empty, or it changed size while being read)."""


class FileSpaceError(TransportEnvironmentError):
    """Not enough disk space for the file being written; free some space or write elsewhere."""


__all__ += ["FileSpaceError", "SnapshotFileError"]
