"""The message layout: placement arithmetic and validation of header and buffer table."""

from __future__ import annotations

import struct

import pytest

from zcser.codec import layout as m
from zcser.errors import BufferTooSmall, CorruptMessage, UnsupportedVersion, UsageError


def _build(base: int, inband: bytes, lengths: list[int], checksum: bool = False) -> bytearray:
    """A structurally valid message (digests zero) laid out as if written at `base`."""
    offsets, total = m.place(base, len(inband), lengths, checksum)
    out = bytearray(total)
    flags = m.FLAG_CHECKSUM if checksum else 0
    out[: m.HEADER.size] = m.pack_header(flags, len(lengths), len(inband), total)
    table = m.pack_table(list(zip(offsets, lengths, strict=True)))
    out[m.TABLE_START : m.TABLE_START + len(table)] = table
    start = m.meta_size(len(lengths), checksum)
    out[start : start + len(inband)] = inband
    return out


def test_header_is_32_bytes_and_fields_at_documented_offsets() -> None:
    header = m.pack_header(m.FLAG_CHECKSUM, 3, 100, 5000)
    assert len(header) == 32
    assert header[m.OFF_MAGIC : m.OFF_MAGIC + 4] == m.MAGIC
    assert struct.unpack_from("<H", header, m.OFF_VERSION)[0] == m.VERSION
    assert struct.unpack_from("<H", header, m.OFF_FLAGS)[0] == m.FLAG_CHECKSUM
    assert struct.unpack_from("<I", header, m.OFF_COUNT)[0] == 3
    assert struct.unpack_from("<Q", header, m.OFF_INBAND_LEN)[0] == 100
    assert struct.unpack_from("<Q", header, m.OFF_TOTAL_LEN)[0] == 5000


@pytest.mark.parametrize("base", [0, 1, 17, 63, 64, 4096 + 5])
def test_place_aligns_every_buffer_to_absolute_addresses(base: int) -> None:
    lengths = [100, 1, 64, 4096]
    offsets, total = m.place(base, 50, lengths, checksum=False)
    assert all((base + off) % m.ALIGN == 0 for off in offsets)
    assert offsets[0] >= m.meta_size(4, False) + 50
    for (a, n), b in zip(zip(offsets, lengths, strict=True), offsets[1:], strict=False):
        assert a + n <= b
    assert total == offsets[-1] + lengths[-1]
    assert total <= m.upper_bound(50, lengths, checksum=False)


def test_upper_bound_holds_at_every_alignment() -> None:
    lengths = [1, 63, 65, 1000]
    bound = m.upper_bound(7, lengths, checksum=True)
    worst = max(m.place(base, 7, lengths, True)[1] for base in range(m.ALIGN))
    assert worst <= bound


def test_place_keeps_fixed_buffers_and_avoids_reserved_regions() -> None:
    offsets, total = m.place(0, 10, [128, 64, 64], False, fixed={0: 1024}, reserved=[(2048, 2100)])
    assert offsets[0] == 1024
    assert offsets[1] >= 2100 and offsets[1] % m.ALIGN == 0
    assert offsets[2] >= offsets[1] + 64
    assert total == offsets[2] + 64


def test_place_refuses_in_target_memory_over_the_header() -> None:
    with pytest.raises(UsageError, match="leave at least"):
        m.place(0, 500, [64], False, fixed={0: 64})


def test_check_room() -> None:
    m.check_room(10, 10)
    with pytest.raises(BufferTooSmall, match=r"plan\.nbytes"):
        m.check_room(11, 10)


@pytest.mark.parametrize("checksum", [False, True])
def test_parse_round_trip(checksum: bool) -> None:
    msg = _build(0, b"inband", [10, 200], checksum)
    parsed = m.parse(memoryview(msg))
    assert parsed.checksum is checksum
    assert bytes(msg[parsed.inband_start : parsed.inband_end]) == b"inband"
    offsets, total = m.place(0, 6, [10, 200], checksum)
    assert parsed.buffers == list(zip(offsets, [10, 200], strict=True))
    assert parsed.total == total
    assert (parsed.digests is not None) is checksum


def test_parse_accepts_a_larger_frame_than_the_message() -> None:
    msg = _build(0, b"x", [10]) + bytes(1000)
    assert m.parse(memoryview(msg)).total == len(msg) - 1000


def _edit(msg: bytearray, fmt: str, offset: int, value: int) -> memoryview:
    struct.pack_into(fmt, msg, offset, value)
    return memoryview(msg)


def test_parse_rejects_short_and_foreign_data() -> None:
    with pytest.raises(CorruptMessage, match="shorter"):
        m.parse(memoryview(b"ZCSR"))
    with pytest.raises(CorruptMessage, match="magic"):
        m.parse(memoryview(b"PK\x03\x04" + bytes(60)))


def test_parse_rejects_other_versions() -> None:
    with pytest.raises(UnsupportedVersion, match="version 2"):
        m.parse(_edit(_build(0, b"x", [8]), "<H", m.OFF_VERSION, 2))


def test_parse_rejects_unknown_flags_and_reserved() -> None:
    with pytest.raises(CorruptMessage, match="flags"):
        m.parse(_edit(_build(0, b"x", [8]), "<H", m.OFF_FLAGS, 0x80))
    with pytest.raises(CorruptMessage, match="reserved"):
        m.parse(_edit(_build(0, b"x", [8]), "<I", m.OFF_RESERVED, 1))


def test_parse_rejects_truncation_and_impossible_sizes() -> None:
    msg = _build(0, b"x" * 10, [100])
    with pytest.raises(CorruptMessage, match="truncated"):
        m.parse(memoryview(msg)[:-1])
    with pytest.raises(CorruptMessage, match="does not fit"):
        m.parse(_edit(_build(0, b"x", [8]), "<I", m.OFF_COUNT, 2**31))
    with pytest.raises(CorruptMessage, match="inconsistent"):
        m.parse(_edit(_build(0, b"x", [8]), "<Q", m.OFF_INBAND_LEN, 2**63))


def test_parse_rejects_buffer_out_of_range() -> None:
    msg = _build(0, b"x", [100])
    with pytest.raises(CorruptMessage, match="outside"):
        m.parse(_edit(msg, "<Q", m.TABLE_START + 8, 10**6))
    msg = _build(0, b"x", [100])
    with pytest.raises(CorruptMessage, match="outside"):
        m.parse(_edit(msg, "<Q", m.TABLE_START, 0))


def test_parse_rejects_overlapping_buffers() -> None:
    msg = _build(0, b"x", [128, 128])
    first = struct.unpack_from("<Q", msg, m.TABLE_START)[0]
    with pytest.raises(CorruptMessage, match="overlap"):
        m.parse(_edit(msg, "<Q", m.TABLE_START + 16, first + 64))


def test_parse_rejects_buffers_with_different_alignment_bases() -> None:
    msg = _build(0, b"x", [128, 128])
    second = struct.unpack_from("<Q", msg, m.TABLE_START + 16)[0]
    with pytest.raises(CorruptMessage, match="misaligned"):
        m.parse(_edit(msg, "<Q", m.TABLE_START + 16, second - 8))
