"""The snapshot file layout (pure): header, stream schema, segment table, digests.

Everything here packs or checks bytes; nothing opens a file. The layout is drawn in
docs/format.md ("Snapshot files").
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

import xxhash

from zcser.codec import layout as message_layout
from zcser.codec.core import schema_problem
from zcser.errors import CorruptSnapshot, UnsupportedVersion

MAGIC = b"ZCSNAP\r\n"
VERSION = 1
ALIGN = message_layout.ALIGN
FLAG_DIGESTS = 0x0001
KNOWN_FLAGS = FLAG_DIGESTS
ALGORITHMS = {0: None, 1: "xxh3_64"}
ALGO_XXH3_64 = 1
MODES = ("r", "c", "copy")

# magic, version, flags, header length, message offset, message length, file length,
# metadata JSON length, segment count, digest algorithm, 7 reserved bytes, header digest
HEADER = struct.Struct("<8sHHIQQQIIB7xQ")
OFF_HEADER_DIGEST = 56
META_START = HEADER.size
SEGMENT = struct.Struct("<QQQ")
MAX_META = 16 << 20


class Segment(NamedTuple):
    """A checksummed byte range of the file: the message head, or one out-of-band buffer."""

    offset: int
    length: int
    digest: int


class Header(NamedTuple):
    """A validated snapshot header."""

    version: int
    flags: int
    header_len: int
    message_offset: int
    message_len: int
    file_len: int
    meta: dict[str, Any]
    algorithm: str | None
    segments: list[Segment]


def _align(value: int) -> int:
    return (value + ALIGN - 1) // ALIGN * ALIGN


def _header_layout(meta_len: int, count: int) -> tuple[int, int]:
    """(header length, message offset) for metadata of `meta_len` bytes and `count` segments."""
    table_at = (META_START + meta_len + 7) // 8 * 8
    header_len = table_at + SEGMENT.size * count
    return header_len, _align(header_len)


def _header_digest(data: memoryview | bytearray, header_len: int) -> int:
    """xxh3-64 of the header bytes, the digest field itself excluded."""
    hasher = xxhash.xxh3_64()
    hasher.update(data[:OFF_HEADER_DIGEST])
    hasher.update(data[OFF_HEADER_DIGEST + 8 : header_len])
    return int(hasher.intdigest())


def pack_header(
    meta: bytes, segments: list[Segment], message_offset: int, message_len: int, digests: bool
) -> bytes:
    """The header bytes (fixed part, metadata JSON, segment table), digest filled in."""
    header_len, expected_offset = _header_layout(len(meta), len(segments))
    if message_offset != expected_offset:
        raise ValueError(f"message offset {message_offset} != {expected_offset}")
    flags = FLAG_DIGESTS if digests else 0
    algo = ALGO_XXH3_64 if digests else 0
    out = bytearray(header_len)
    HEADER.pack_into(
        out,
        0,
        MAGIC,
        VERSION,
        flags,
        header_len,
        message_offset,
        message_len,
        message_offset + message_len,
        len(meta),
        len(segments),
        algo,
        0,
    )
    out[META_START : META_START + len(meta)] = meta
    table_at = header_len - SEGMENT.size * len(segments)
    for i, seg in enumerate(segments):
        SEGMENT.pack_into(out, table_at + i * SEGMENT.size, *seg)
    struct.pack_into("<Q", out, OFF_HEADER_DIGEST, _header_digest(out, header_len))
    return bytes(out)


def parse_header(mv: memoryview) -> Header:
    """Validate the header of a whole snapshot file in `mv` (pure; raises CorruptSnapshot)."""
    size = mv.nbytes
    if size < HEADER.size or bytes(mv[: len(MAGIC)]) != MAGIC:
        if bytes(mv[: len(MAGIC)]) == MAGIC[:size]:
            raise CorruptSnapshot(
                f"truncated: {size} bytes, shorter than the {HEADER.size}-byte header"
            )
        raise CorruptSnapshot(f"not a zcser snapshot (magic {bytes(mv[:8])!r}, want {MAGIC!r})")
    (_, version, flags, header_len, msg_off, msg_len, file_len, meta_len, count, algo, digest) = (
        HEADER.unpack_from(mv, 0)
    )
    if version != VERSION:
        raise UnsupportedVersion(
            f"snapshot format version {version}; this zcser reads version {VERSION}: "
            "load it with the zcser that wrote it, or upgrade zcser"
        )
    if file_len != size:
        raise CorruptSnapshot(
            f"truncated or extended: the file has {size} bytes, its header says {file_len}; "
            "restore it from a good copy"
        )
    if meta_len > MAX_META or header_len != _header_layout(meta_len, count)[0]:
        raise CorruptSnapshot(f"bad header length {header_len} (metadata {meta_len} bytes)")
    if msg_off != _align(header_len) or msg_off + msg_len != file_len:
        raise CorruptSnapshot(f"message [{msg_off}, +{msg_len}) does not fit the header/file")
    if _header_digest(mv, header_len) != digest:
        raise CorruptSnapshot("header checksum mismatch: the file header was altered")
    if flags & ~KNOWN_FLAGS or algo not in ALGORITHMS or bool(flags & FLAG_DIGESTS) != bool(algo):
        raise CorruptSnapshot(f"unknown flags 0x{flags:04x} or digest algorithm {algo}")
    try:
        meta = json.loads(bytes(mv[META_START : META_START + meta_len]))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python goes
        raise CorruptSnapshot(f"metadata is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("schema"), dict):
        raise CorruptSnapshot("metadata lacks the codec schema")
    problem = schema_problem(meta["schema"])
    if problem is None and not isinstance(meta.get("root_type", ""), str):
        problem = "field 'root_type' is not a string"
    if problem is not None:
        raise CorruptSnapshot(f"metadata holds a malformed codec schema: {problem}")
    table_at = header_len - SEGMENT.size * count
    segments = [
        Segment(*SEGMENT.unpack_from(mv, table_at + i * SEGMENT.size)) for i in range(count)
    ]
    _check_segments(segments, msg_off, file_len)
    return Header(
        version, flags, header_len, msg_off, msg_len, file_len, meta, ALGORITHMS[algo], segments
    )


def _check_segments(segments: list[Segment], msg_off: int, file_len: int) -> None:
    if not segments or segments[0].offset != msg_off:
        raise CorruptSnapshot("the segment table does not start at the message")
    for seg in segments:
        if seg.offset < msg_off or seg.offset + seg.length > file_len:
            raise CorruptSnapshot(f"segment [{seg.offset}, +{seg.length}) lies outside the file")


def verify_segments(mv: memoryview, header: Header, segments: list[Segment]) -> None:
    """Raise CorruptSnapshot unless each segment's bytes match its stored digest."""
    if header.algorithm is None:
        return
    for i, seg in enumerate(segments):
        got = xxhash.xxh3_64_intdigest(mv[seg.offset : seg.offset + seg.length])
        if got != seg.digest:
            what = (
                "message header/in-band bytes"
                if seg.offset == header.message_offset
                else "a buffer"
            )
            raise CorruptSnapshot(
                f"checksum mismatch in segment {i} ({what} at file offset {seg.offset}, "
                f"{seg.length} bytes): the file was altered after it was written"
            )
