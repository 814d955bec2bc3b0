"""Snapshot files: any object the codec handles, saved crash-safely, loaded as zero-copy views.

A file is a snapshot header (magic, version, the codec's stream schema, per-segment xxh3-64
digests) followed by one codec message whose buffers sit at 64-byte-aligned file offsets, so a
page-aligned mmap gives aligned views. Loading maps the file and decodes in time independent of
its size; the mapping lives until the last view of it is collected. POSIX only (see
docs/format.md, "Snapshot files").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, NamedTuple

import xxhash

from transports.errors import SnapshotFileError
from transports.mmapfile import AtomicWriter, open_mapping, remove_stale_temp_files
from zcser import _message
from zcser.codec import Codec, _default_codec
from zcser.errors import (
    CorruptData,
    CorruptSnapshot,
    IncompatibleStream,
    UnsupportedVersion,
    UsageError,
    ZcserError,
)

__all__ = ["add_cli", "load", "save", "snapshot_info", "verify_file"]

MAGIC = b"ZCSNAP\r\n"
VERSION = 1
ALIGN = _message.ALIGN
FLAG_DIGESTS = 0x0001
KNOWN_FLAGS = FLAG_DIGESTS
ALGORITHMS = {0: None, 1: "xxh3_64"}
ALGO_XXH3_64 = 1

# magic, version, flags, header length, message offset, message length, file length,
# metadata JSON length, segment count, digest algorithm, 7 reserved bytes, header digest
HEADER = struct.Struct("<8sHHIQQQIIB7xQ")
OFF_HEADER_DIGEST = 56
META_START = HEADER.size
SEGMENT = struct.Struct("<QQQ")
MAX_META = 16 << 20

Mode = Literal["r", "c", "copy"]
MODES = ("r", "c", "copy")


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
    except ValueError as exc:
        raise CorruptSnapshot(f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("schema"), dict):
        raise CorruptSnapshot("metadata lacks the codec schema")
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


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _progress_bar(total: int, path: str) -> Any:
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError as exc:
        raise UsageError(
            "save(progress=True) needs tqdm: pip install 'zcser[progress]' (or tqdm)"
        ) from exc
    name = os.path.basename(path)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"save {name}")


def _digests(pieces: list[tuple[int, memoryview]]) -> list[int]:
    """xxh3-64 of every piece (xxhash drops the GIL: this runs beside the writes)."""
    return [xxhash.xxh3_64_intdigest(view) for _, view in pieces]


def save(
    obj: Any,
    path: str | os.PathLike[str],
    *,
    codec: Codec | None = None,
    checksum: bool = True,
    progress: bool = False,
) -> None:
    """Write `obj` to `path` as a snapshot: streamed from the source arrays, atomic, mode 0600.

    A crash at any moment leaves the old file or the new one under `path` (see mmapfile).
    checksum: store xxh3-64 digests of every segment (the head is checked on each load, every
    buffer with `load(verify=True)`). progress: show a tqdm bar.
    """
    codec = codec or _default_codec()
    plan = codec.plan(obj)
    meta = {"schema": codec.schema(), "root_type": _type_name(obj)}
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    _, msg_off = _header_layout(len(meta_bytes), 1 + len(plan.buffers))
    pieces = [(msg_off + off, view) for off, view in plan.segments(msg_off)]
    msg_len = plan.nbytes_at(msg_off)
    path = os.fspath(path)
    bar = _progress_bar(msg_off + msg_len, path) if progress else None
    try:
        with AtomicWriter(path, msg_off + msg_len) as writer, ThreadPoolExecutor(1) as pool:
            update = bar.update if bar is not None else None
            hashing = pool.submit(_digests, pieces) if checksum else None
            for off, view in pieces:
                writer.write_at(off, view, update)
            digests = hashing.result() if hashing is not None else [0] * len(pieces)
            segments = [
                Segment(off, view.nbytes, digest)
                for (off, view), digest in zip(pieces, digests, strict=True)
            ]
            header = pack_header(meta_bytes, segments, msg_off, msg_len, checksum)
            writer.write_at(0, memoryview(header), update)
            writer.commit()
    finally:
        if bar is not None:
            bar.close()


def _parse_file(mv: memoryview, path: str) -> Header:
    try:
        return parse_header(mv)
    except CorruptSnapshot as exc:
        raise CorruptSnapshot(f"{path}: {exc}") from None


def load(
    path: str | os.PathLike[str],
    *,
    mode: Mode = "r",
    verify: bool = False,
    codec: Codec | None = None,
) -> Any:
    """The object saved in `path`, its arrays zero-copy views over a memory map of the file.

    mode "r": read-only views of a shared read-only map; "c": writable views of a private
    copy-on-write map (writes never reach the file); "copy": writable views of a private
    in-memory copy of the file, which is closed (not mapped) on return. All modes give the
    same types; the memory lives until the last view is collected.
    verify: check the digest of every buffer (reads the whole file); the header and in-band
    bytes are always checked when the file has digests.
    """
    if mode not in MODES:
        raise UsageError(f'mode must be "r", "c" or "copy", got {mode!r}')
    codec = codec or _default_codec()
    path = os.fspath(path)
    return _decode(memoryview(_open(path, mode)), path, mode, verify, codec)


def _open(path: str, mode: Mode) -> Any:
    """The file's mapping (or private copy); its errors become CorruptSnapshot naming the file."""
    try:
        return open_mapping(path, mode)
    except SnapshotFileError as exc:
        raise CorruptSnapshot(f"{path}: {exc}") from None


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[tuple[memoryview, Header]]:
    """The file mapped read-only with its parsed header, for inspection; unmapped at the end."""
    mm = _open(path, "r")
    mv = memoryview(mm)
    try:
        yield mv, _parse_file(mv, path)
    finally:
        mv.release()
        mm.close()


def _verify(mv: memoryview, header: Header, segments: list[Segment], path: str) -> None:
    """verify_segments, with the file named in the error."""
    try:
        verify_segments(mv, header, segments)
    except CorruptSnapshot as exc:
        raise CorruptSnapshot(f"{path}: {exc}") from None


def _decode(mv: memoryview, path: str, mode: Mode, verify: bool, codec: Codec) -> Any:
    header = _parse_file(mv, path)
    codec.check_schema(header.meta["schema"])
    _verify(mv, header, header.segments if verify else header.segments[:1], path)
    message = mv[header.message_offset : header.file_len]
    try:
        return codec.decode(message, writable=mode != "r")
    except (UnsupportedVersion, IncompatibleStream):
        raise
    except CorruptData as exc:
        raise CorruptSnapshot(f"{path}: {type(exc).__name__}: {exc}") from exc


def snapshot_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a snapshot holds, read from its headers without decoding: versions, sizes, layout."""
    path = os.fspath(path)
    with _mapped(path) as (mv, header):
        message = mv[header.message_offset : header.file_len]
        try:
            msg = _message.parse(message)
        except CorruptData as exc:
            raise CorruptSnapshot(f"{path}: {exc}") from exc
        finally:
            message.release()
    base = header.message_offset
    return {
        "path": path,
        "format_version": header.version,
        "file_size": header.file_len,
        "header_size": header.header_len,
        "message_offset": base,
        "message_size": header.message_len,
        "message_format_version": _message.VERSION,
        "inband_size": msg.inband_end - msg.inband_start,
        "root_type": header.meta.get("root_type"),
        "schema": header.meta["schema"],
        "buffers": [{"offset": base + off, "length": n} for off, n in msg.buffers],
        "checksum": {
            "algorithm": header.algorithm,
            "segments": len(header.segments) if header.algorithm else 0,
            "message_digests": msg.checksum,
        },
    }


def verify_file(path: str | os.PathLike[str]) -> None:
    """Check the header and every segment digest of a snapshot without decoding it."""
    path = os.fspath(path)
    with _mapped(path) as (mv, header):
        if header.algorithm is None:
            raise CorruptSnapshot(f"{path}: saved with checksum=False, nothing to verify")
        _verify(mv, header, header.segments, path)


def _cmd(args: argparse.Namespace) -> int:
    """`snapshot info PATH [--verify]` prints JSON; `snapshot clean DIR` removes stale temps."""
    if args.action == "clean":
        for stale in remove_stale_temp_files(args.path):
            print(f"removed {stale}")
        return 0
    try:
        info = snapshot_info(args.path)
        if args.verify:
            verify_file(args.path)
            info["checksum"]["verified"] = True
    except (ZcserError, OSError) as exc:
        print(f"zcser snapshot: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    return 0


def add_cli(sub: argparse._SubParsersAction[Any]) -> None:
    """Register `python -m zcser snapshot {info,clean}` on the main parser's subcommands."""
    parser = sub.add_parser("snapshot", help="inspect snapshot files, clean stale temp files")
    parser.add_argument("action", choices=["info", "clean"], help="info PATH | clean DIR")
    parser.add_argument("path", help="snapshot file (info) or directory (clean)")
    parser.add_argument("--verify", action="store_true", help="info: check every digest too")
    parser.set_defaults(func=_cmd)
