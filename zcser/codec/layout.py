"""The zcser message layout: constants, header packing, placement and validation (pure, no I/O).

Layout (little endian, offsets relative to the message start, see docs/format.md):
  header   32 bytes  magic, version, flags, buffer count, reserved, in-band length, total length
  table    16 bytes per buffer: (offset, length)
  digests  8 bytes x (count + 1), only with FLAG_CHECKSUM: xxh3-64 of metadata+in-band, then
           of each buffer
  in-band  pyfory bytes
  buffers  each at an absolute ALIGN-aligned address, so all offsets agree modulo ALIGN
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise
from typing import NamedTuple

from zcser.errors import BufferTooSmall, CorruptMessage, UnsupportedVersion, UsageError

MAGIC = b"ZCSR"
VERSION = 1
ALIGN = 64
FLAG_CHECKSUM = 0x0001
KNOWN_FLAGS = FLAG_CHECKSUM

HEADER = struct.Struct("<4sHHIIQQ")
ENTRY = struct.Struct("<QQ")
DIGEST = struct.Struct("<Q")

OFF_MAGIC = 0
OFF_VERSION = 4
OFF_FLAGS = 6
OFF_COUNT = 8
OFF_RESERVED = 12
OFF_INBAND_LEN = 16
OFF_TOTAL_LEN = 24
TABLE_START = HEADER.size

_HEADER_SIZE = HEADER.size
_ENTRY_SIZE = ENTRY.size
_DIGEST_SIZE = DIGEST.size
_unpack_header = HEADER.unpack_from
_unpack_entry = ENTRY.unpack_from


class MessageLayout(NamedTuple):
    """A validated message: where each part lies inside the memory it was parsed from."""

    flags: int
    inband_start: int
    inband_end: int
    buffers: list[tuple[int, int]]
    digests: list[int] | None
    total: int

    @property
    def checksum(self) -> bool:
        return bool(self.flags & FLAG_CHECKSUM)

    @property
    def meta_end(self) -> int:
        """End of header + table (the start of the digests, or of the in-band bytes)."""
        return TABLE_START + ENTRY.size * len(self.buffers)


def align_up(value: int, align: int = ALIGN) -> int:
    """The smallest multiple of `align` that is >= value."""
    return (value + align - 1) // align * align


def meta_size(count: int, checksum: bool) -> int:
    """Bytes before the in-band data: header, table and (optional) digests."""
    digests = DIGEST.size * (count + 1) if checksum else 0
    return TABLE_START + ENTRY.size * count + digests


def upper_bound(inband_len: int, lengths: Sequence[int], checksum: bool) -> int:
    """A message size valid at any base address (ALIGN - 1 bytes of slack included)."""
    data = sum(align_up(n) for n in lengths)
    return align_up(meta_size(len(lengths), checksum) + inband_len) + data + (ALIGN - 1)


def place(
    base: int,
    inband_len: int,
    lengths: Sequence[int],
    checksum: bool,
    fixed: dict[int, int] | None = None,
    reserved: Sequence[tuple[int, int]] = (),
) -> tuple[list[int], int]:
    """Offsets of each buffer and the total size when the message starts at absolute `base`.

    `fixed` maps a buffer index to the offset where it already lies (it is not moved);
    `reserved` lists [start, end) offsets that must not be written (in-target sources).
    Other buffers go after the in-band bytes and every fixed/reserved region, ALIGN-aligned.
    """
    head = meta_size(len(lengths), checksum) + inband_len
    if not fixed and not reserved:
        offsets: list[int] = []
        cursor = head
        for n in lengths:
            off = (base + cursor + ALIGN - 1) // ALIGN * ALIGN - base
            offsets.append(off)
            cursor = off + n
        return offsets, cursor
    fixed = fixed or {}
    taken = list(reserved)
    for i, off in fixed.items():
        taken.append((off, off + lengths[i]))
    cursor = head
    for start, end in taken:
        if start < head:
            raise UsageError(
                f"memory already inside the target starts at offset {start}, inside the "
                f"{head}-byte header and in-band area: leave at least {head} bytes free "
                "at the start of the target"
            )
        if end > cursor:
            cursor = end
    offsets = []
    for i, n in enumerate(lengths):
        kept = fixed.get(i)
        if kept is not None:
            offsets.append(kept)
            continue
        off = (base + cursor + ALIGN - 1) // ALIGN * ALIGN - base
        offsets.append(off)
        cursor = off + n
    return offsets, cursor


@lru_cache(maxsize=256)
def _u64s(count: int) -> struct.Struct:
    """A Struct for `count` little-endian u64 (cached: building one costs a microsecond)."""
    return struct.Struct(f"<{count}Q")


@lru_cache(maxsize=256)
def _meta_struct(count: int) -> struct.Struct:
    """Header plus a `count`-entry table as one Struct."""
    return struct.Struct(HEADER.format + f"{2 * count}Q")


_META_ONE = _meta_struct(1)


def pack_meta(
    flags: int, inband_len: int, total: int, offsets: list[int], lengths: list[int]
) -> bytes:
    """Header and buffer table in one call (the encode hot path)."""
    count = len(offsets)
    if count == 1:
        return _META_ONE.pack(
            MAGIC, VERSION, flags, 1, 0, inband_len, total, offsets[0], lengths[0]
        )
    flat = [0] * (2 * count)
    flat[0::2] = offsets
    flat[1::2] = lengths
    return _meta_struct(count).pack(MAGIC, VERSION, flags, count, 0, inband_len, total, *flat)


def pack_header(flags: int, count: int, inband_len: int, total: int) -> bytes:
    """The fixed 32-byte header."""
    return HEADER.pack(MAGIC, VERSION, flags, count, 0, inband_len, total)


def pack_table(entries: Sequence[tuple[int, int]]) -> bytes:
    """The buffer table: (offset, length) per buffer."""
    flat = [v for entry in entries for v in entry]
    return _u64s(len(flat)).pack(*flat)


def pack_digests(digests: Sequence[int]) -> bytes:
    """The digest array (metadata+in-band first, then one per buffer)."""
    return _u64s(len(digests)).pack(*digests)


def check_room(total: int, available: int) -> None:
    """Raise BufferTooSmall unless `available` bytes hold a `total`-byte message."""
    if total > available:
        raise BufferTooSmall(
            f"the message needs {total} bytes but the target holds {available}: "
            "allocate plan.nbytes (or plan.nbytes_at(address)) bytes"
        )


def parse(mv: memoryview) -> MessageLayout:
    """Validate header, table and digest area against `mv` (a byte memoryview) before any use."""
    return _parse(mv, whole=True)


def parse_head(mv: memoryview) -> MessageLayout:
    """Validate a message head sent apart from its buffers (network frames): `mv` holds exactly
    header, table, digests and in-band bytes; offsets are checked as if the message were whole."""
    return _parse(mv, whole=False)


def check_parts(msg: MessageLayout, lengths: Sequence[int]) -> None:
    """Raise CorruptMessage unless the separate buffers match the table in number and size."""
    if len(lengths) != len(msg.buffers):
        raise CorruptMessage(
            f"the table lists {len(msg.buffers)} buffers but {len(lengths)} were received"
        )
    for i, ((_, n), got) in enumerate(zip(msg.buffers, lengths, strict=True)):
        if n != got:
            raise CorruptMessage(f"buffer {i} has {got} bytes, the table says {n}")


def _parse(mv: memoryview, whole: bool) -> MessageLayout:
    size = mv.nbytes
    if size < _HEADER_SIZE:
        raise CorruptMessage(f"{size} bytes is shorter than the {_HEADER_SIZE}-byte header")
    magic, version, flags, count, reserved, inband_len, total = _unpack_header(mv, 0)
    if magic != MAGIC:
        raise CorruptMessage(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a message")
    if version != VERSION:
        raise UnsupportedVersion(
            f"message format version {version}; this zcser reads version {VERSION}: "
            "upgrade zcser on the reader (or downgrade the writer)"
        )
    if flags & ~KNOWN_FLAGS or reserved:
        raise CorruptMessage(f"unknown flags 0x{flags:04x} or reserved field {reserved} set")
    checksum = flags & FLAG_CHECKSUM
    if count > (size - _HEADER_SIZE) // _ENTRY_SIZE:
        raise CorruptMessage(f"buffer count {count} does not fit in {size} bytes")
    table_end = TABLE_START + _ENTRY_SIZE * count
    inband_start = table_end + _DIGEST_SIZE * (count + 1) if checksum else table_end
    inband_end = inband_start + inband_len
    fits = total <= size if whole else inband_end == size
    if not (inband_end <= total and fits):
        raise CorruptMessage(
            f"in-band end {inband_end} / total length {total} inconsistent with the "
            f"{size} bytes given (truncated message?)"
        )
    buffers: list[tuple[int, int]]
    if count == 0:
        buffers = []
    elif count == 1:
        off, n = _unpack_entry(mv, TABLE_START)
        if off < inband_end or off + n > total:
            raise _outside(off, n, inband_end, total)
        buffers = [(off, n)]
    else:
        flat = _u64s(2 * count).unpack_from(mv, TABLE_START)
        buffers = list(zip(flat[0::2], flat[1::2], strict=True))
        _check_buffers(buffers, inband_end, total)
    digests = list(_u64s(count + 1).unpack_from(mv, table_end)) if checksum else None
    return MessageLayout(flags, inband_start, inband_end, buffers, digests, total)


def _outside(off: int, n: int, inband_end: int, total: int) -> CorruptMessage:
    return CorruptMessage(
        f"buffer [{off}, {off + n}) lies outside the data area [{inband_end}, {total})"
    )


def _check_buffers(buffers: list[tuple[int, int]], inband_end: int, total: int) -> None:
    """Buffers lie in [inband_end, total), do not overlap and share one alignment base."""
    phase = None
    for off, n in buffers:
        if off < inband_end or off + n > total:
            raise _outside(off, n, inband_end, total)
        if phase is None:
            phase = off % ALIGN
        elif off % ALIGN != phase:
            raise CorruptMessage(
                f"buffer offset {off} is misaligned relative to the others "
                f"(all must agree modulo {ALIGN})"
            )
    ordered = sorted(b for b in buffers if b[1])
    for (a_off, a_len), (b_off, _) in pairwise(ordered):
        if a_off + a_len > b_off:
            raise CorruptMessage(f"buffers at offsets {a_off} and {b_off} overlap")
