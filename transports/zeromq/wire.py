"""Pure logic of the ZeroMQ transport (no sockets): the envelope that starts every message,
per-writer sequence bookkeeping, and the connection count fed by socket monitor events.

Envelope, little endian, at the start of a message's first frame:
  0  4  magic b"ZCSN"
  4  1  u8  envelope version (2; a version 1 envelope, whose flags are 0, is read too)
  5  1  u8  kind: 0 data, 1 end of stream (the writer closed)
  6  2  u16 flags: bit 0 FLAG_ONE_READER, the other bits 0
  8  8  u64 writer id (random per writer)
  16 8  u64 sequence number (per writer, from 0)
  24 4  u32 number of buffer frames that follow the first frame
  28 4  u32 metadata length M (the writer's stream metadata, repeated in every message)
  32 M  metadata, then the head bytes (the rest of the frame)
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from transports import errors

ENVELOPE = struct.Struct("<4sBBHQQII")
MAGIC = b"ZCSN"
VERSION = 2
VERSIONS = (1, 2)
KIND_DATA = 0
KIND_END = 1
KINDS = (KIND_DATA, KIND_END)
FLAG_ONE_READER = 1
"""Every message of this writer goes to the one reader it connects to (push that connects):
a gap in its sequence is a loss, where a writer shared by several readers leaves gaps that are
the other readers' messages."""
FLAGS = FLAG_ONE_READER

OFF_MAGIC = 0
OFF_VERSION = 4
OFF_KIND = 5
OFF_FLAGS = 6
OFF_WRITER = 8
OFF_SEQUENCE = 16
OFF_COUNT = 24
OFF_META_LEN = 28
META_START = ENVELOPE.size


class Envelope(NamedTuple):
    """The parsed envelope; `head_start` is where the head bytes begin in the first frame."""

    kind: int
    writer: int
    sequence: int
    buffers: int
    meta_len: int
    flags: int = 0

    @property
    def head_start(self) -> int:
        return META_START + self.meta_len


def pack_envelope(
    kind: int, writer: int, sequence: int, count: int, meta_len: int, flags: int = 0
) -> bytes:
    """The 32-byte envelope."""
    return ENVELOPE.pack(MAGIC, VERSION, kind, flags, writer, sequence, count, meta_len)


def parse_envelope(first: memoryview, frames: int) -> Envelope:
    """Validate the envelope of a message of `frames` frames whose first frame is `first`."""
    if first.nbytes < ENVELOPE.size:
        raise errors.PeerProtocolError(
            f"first frame of {first.nbytes} bytes is shorter than the {ENVELOPE.size}-byte "
            "envelope: the peer is not a zcser ZeroMQ writer"
        )
    magic, version, kind, flags, writer, sequence, count, meta_len = ENVELOPE.unpack_from(first, 0)
    if magic != MAGIC:
        raise errors.PeerProtocolError(
            f"bad envelope magic {bytes(magic)!r} (expected {MAGIC!r}): the peer is not a zcser "
            "ZeroMQ writer"
        )
    if version not in VERSIONS:
        raise errors.IncompatibleBuffer(
            f"envelope version {version}, this reader speaks {VERSIONS}: use the same zcser "
            "version on both sides"
        )
    if kind not in KINDS or flags & ~FLAGS or (version == 1 and flags):
        raise errors.PeerProtocolError(f"unknown message kind {kind} or flags {flags:#x}")
    if count != frames - 1:
        raise errors.PeerProtocolError(
            f"the envelope announces {count} buffer frames but {frames - 1} arrived"
        )
    if META_START + meta_len > first.nbytes:
        raise errors.PeerProtocolError(
            f"metadata of {meta_len} bytes overruns the {first.nbytes}-byte first frame"
        )
    return Envelope(kind, writer, sequence, count, meta_len, flags)


class Writers:
    """What a reader knows about each writer it heard from: next sequence, ended or not.

    `count_gaps`: add every sequence gap to `lost` (subscribers). Otherwise only the gaps of
    writers that flag FLAG_ONE_READER count (a pull reader sharing a push writer with other
    readers sees gaps that are the other readers' messages, not losses).
    """

    def __init__(self, count_gaps: bool = True) -> None:
        self._next: dict[int, int] = {}
        self._ended: set[int] = set()
        self._count_gaps = count_gaps
        self.lost = 0

    def see(self, env: Envelope) -> int:
        """Record a message; returns how many of this writer's messages that were meant for
        this reader never came before it (0 where a gap may be other readers' messages)."""
        expected = self._next.get(env.writer)
        gap = env.sequence - expected if expected is not None and env.sequence > expected else 0
        self._next[env.writer] = env.sequence + 1
        if env.kind == KIND_END:
            self._ended.add(env.writer)
        else:
            self._ended.discard(env.writer)
        if not (self._count_gaps or env.flags & FLAG_ONE_READER):
            return 0
        self.lost += gap
        return gap

    @property
    def count(self) -> int:
        return len(self._next)

    @property
    def ended(self) -> bool:
        """True when at least one writer was heard and every one of them ended its stream."""
        return bool(self._next) and len(self._ended) == len(self._next)


class Peers:
    """Open connections of one socket, counted from monitor events (by file descriptor)."""

    def __init__(self) -> None:
        self._open: set[int] = set()
        self.ever = False
        self.disconnects = 0

    def opened(self, fd: int) -> None:
        self._open.add(fd)
        self.ever = True

    def closed(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            self.disconnects += 1

    @property
    def connected(self) -> int:
        return len(self._open)

    def fds(self) -> list[int]:
        """The descriptors of the open connections (libzmq's, as the monitor reported them)."""
        return list(self._open)

    @property
    def lost(self) -> bool:
        """True when there was a peer and none is connected now."""
        return self.ever and not self._open
