"""Plan: one encoded object, ready to be written into any memory (a ring frame, a file).

The codec serializes once (`Codec.plan`); the plan then places the header, the buffer table,
the in-band bytes and every out-of-band buffer at a 64-byte-aligned absolute address of the
target (`write_into`), or hands the same message out as pieces for streamed writes
(`segments`). The layout itself is `zcser.codec.layout`.
"""

from __future__ import annotations

from typing import Any

import xxhash

from zcser.codec import layout as _message
from zcser.codec import memory as _copy
from zcser.codec import oob as _oob
from zcser.codec.memory import address as _address
from zcser.errors import UsageError

__all__ = ["Plan"]


def _byte_view(data: Any) -> memoryview:
    """A flat unsigned-byte view over any C-contiguous buffer object (UsageError otherwise)."""
    try:
        return _oob.as_bytes_view(data)
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"expected a C-contiguous bytes-like object, got {type(data).__name__}"
        ) from exc


class Plan:
    """One serialized object, ready to be written into memory any number of times.

    `buffers` are the out-of-band source buffers (byte memoryviews over the caller's objects,
    not copies), `inband` the pyfory bytes. A buffer that already lies inside the target memory
    at a 64-byte-aligned address after the header area is left where it is (not copied); see
    `write_into`.
    """

    __slots__ = ("buffers", "checksum", "inband")

    def __init__(self, inband: bytes, buffers: list[memoryview], checksum: bool) -> None:
        self.inband = inband
        self.buffers = buffers
        self.checksum = checksum

    @property
    def nbytes(self) -> int:
        """An upper bound on the message size, valid at any base address."""
        lengths = [b.nbytes for b in self.buffers]
        return _message.upper_bound(len(self.inband), lengths, self.checksum)

    def nbytes_at(self, address: int) -> int:
        """The exact message size when written at absolute `address` (nothing in place)."""
        lengths = [b.nbytes for b in self.buffers]
        return _message.place(address, len(self.inband), lengths, self.checksum)[1]

    def segments(self, base_address: int) -> list[tuple[int, memoryview]]:
        """The message at absolute `base_address` as (offset, bytes) pieces for streamed writes.

        The first piece (header, table, digests, in-band) is small and private; the others are
        the source buffers themselves (no copy). Bytes between pieces are zeros. Used by
        `zcser.snapshot` to write files without building the message in memory.
        """
        lengths = [b.nbytes for b in self.buffers]
        offsets, total = _message.place(base_address, len(self.inband), lengths, self.checksum)
        count = len(self.buffers)
        table_end = _message.TABLE_START + _message.ENTRY.size * count
        inband_at = _message.meta_size(count, self.checksum)
        head = bytearray(inband_at + len(self.inband))
        flags = _message.FLAG_CHECKSUM if self.checksum else 0
        head[: _message.TABLE_START] = _message.pack_header(flags, count, len(self.inband), total)
        head[_message.TABLE_START : table_end] = _message.pack_table(
            list(zip(offsets, lengths, strict=True))
        )
        head[inband_at:] = self.inband
        if self.checksum:
            digests = [_meta_digest(memoryview(head), table_end, inband_at, len(head))]
            digests.extend(xxhash.xxh3_64_intdigest(b) for b in self.buffers)
            head[table_end:inband_at] = _message.pack_digests(digests)
        return [(0, memoryview(head)), *zip(offsets, self.buffers, strict=True)]

    def packed(self) -> bytes:
        """The whole message as bytes, for plans without out-of-band buffers (whose layout does
        not depend on the address): the channel's small-message path, one copy into the frame."""
        if self.buffers:
            raise UsageError("packed() needs a plan without out-of-band buffers: use write_into")
        inband = self.inband
        n = len(inband)
        if not self.checksum:
            return (
                _message.HEADER.pack(
                    _message.MAGIC, _message.VERSION, 0, 0, 0, n, _message.TABLE_START + n
                )
                + inband
            )
        head = _message.pack_header(
            _message.FLAG_CHECKSUM, 0, n, _message.TABLE_START + _message.DIGEST.size + n
        )
        hasher = xxhash.xxh3_64(head)
        hasher.update(inband)
        return head + _message.DIGEST.pack(hasher.intdigest()) + inband

    def write_into(
        self, target: Any, base_address: int | None = None, *, copy_threads: int = 1
    ) -> int:
        """Write the message at the start of `target`; returns the bytes used.

        `base_address` is the absolute address of target[0] (computed when None). A source
        buffer lying entirely inside the target at a 64-aligned address past the header area
        stays in place and is not copied (the channel's zero-copy send); other sources inside
        the target are copied out, and nothing is written over them. Buffers of 8 MiB and more
        are copied by `copy_threads` threads, with streaming stores (see zcser.codec.memory).
        """
        mv = _byte_view(target)
        if mv.readonly:
            raise UsageError("write_into needs writable memory (got a read-only buffer)")
        base = _address(mv) if base_address is None else base_address
        lengths = [b.nbytes for b in self.buffers]
        fixed, reserved = self._in_target(base, mv.nbytes)
        offsets, total = _message.place(
            base, len(self.inband), lengths, self.checksum, fixed, reserved
        )
        _message.check_room(total, mv.nbytes)
        count = len(self.buffers)
        flags = _message.FLAG_CHECKSUM if self.checksum else 0
        meta = _message.pack_meta(flags, len(self.inband), total, offsets, lengths)
        pos = len(meta)
        mv[:pos] = meta
        inband_at = _message.meta_size(count, self.checksum)
        end = inband_at + len(self.inband)
        mv[inband_at:end] = self.inband
        for i, (off, buf) in enumerate(zip(offsets, self.buffers, strict=True)):
            if i not in fixed:
                _copy.copy_into(mv[off : off + buf.nbytes], buf, copy_threads)
        if self.checksum:
            digests = [_meta_digest(mv, pos, inband_at, end)]
            digests.extend(xxhash.xxh3_64_intdigest(b) for b in self.buffers)
            mv[pos:inband_at] = _message.pack_digests(digests)
        _zero_gaps(mv, end, offsets, lengths)
        return total

    def _in_target(self, base: int, size: int) -> tuple[dict[int, int], list[tuple[int, int]]]:
        """Buffers already inside the target: those kept in place and those only reserved."""
        fixed: dict[int, int] = {}
        reserved: list[tuple[int, int]] = []
        taken: list[tuple[int, int]] = []
        for i, buf in enumerate(self.buffers):
            start = _address(buf) - base
            end = start + buf.nbytes
            if end <= 0 or start >= size:
                continue
            if start < 0 or end > size:
                raise UsageError(
                    "a buffer straddles the end of the target memory: "
                    "allocate it wholly inside the frame or wholly outside"
                )
            clash = False
            for t_start, t_end in taken:
                if start < t_end and t_start < end:
                    clash = True
                    break
            if (base + start) % _message.ALIGN == 0 and not clash:
                fixed[i] = start
                taken.append((start, end))
            else:
                reserved.append((start, end))
        return fixed, reserved


def _meta_digest(mv: memoryview, meta_end: int, inband_at: int, inband_end: int) -> int:
    """xxh3-64 of header + table + in-band bytes (the digest area itself excluded)."""
    hasher = xxhash.xxh3_64()
    hasher.update(mv[:meta_end])
    hasher.update(mv[inband_at:inband_end])
    return hasher.intdigest()


def _zero_gaps(mv: memoryview, start: int, offsets: list[int], lengths: list[int]) -> None:
    """Zero the alignment padding after the in-band bytes (no stale memory leaks out)."""
    if len(offsets) == 1:
        off = offsets[0]
        if start < off < start + _message.ALIGN:
            mv[start:off] = _ZEROS[: off - start]
        return
    cursor = start
    pairs = zip(offsets, lengths, strict=True)
    for off, n in pairs if offsets == sorted(offsets) else sorted(pairs):
        if cursor < off < cursor + _message.ALIGN:
            mv[cursor:off] = _ZEROS[: off - cursor]
        cursor = max(cursor, off + n)


_ZEROS = bytes(_message.ALIGN)
