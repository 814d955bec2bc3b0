"""The ZeroBuffer payload ring as a pure state machine: positions, wrap decisions, free-space
accounting and in-order reclamation of frames released out of order. No OS calls, no shared
memory: `transports.zerobuffer` feeds it numbers read from the OIEB and applies what it decides.

Accounting (PROTOCOL.md): one shared counter `free`. The writer subtracts `tail + 16 + N` when it
places a frame (`tail` = bytes wasted by wrapping, usually 0); the reader adds the wasted tail back
when it meets the wrap, and `16 + N` back when the frame is released. The writer assumes the free
bytes are the contiguous region from `write_pos` up to the oldest frame still in use, so the
reader only ever returns space *in ring order*: a frame (or tail) released while an older one is
still held is marked, and its bytes go back when every older entry has gone back too.
"""

from __future__ import annotations

from collections import deque

from transports.errors import CorruptBuffer
from transports.zerobuffer.layout import HEADER_SIZE

REWIND_MIN = 64 * 1024
"""Frames (header included) from this size go back to offset 0 when the ring is empty."""


class WriterRing:
    """Where the writer puts the next frame. `write_pos` is in [0, size]; size means "at the end"."""

    __slots__ = ("size", "write_pos")

    def __init__(self, size: int, write_pos: int = 0) -> None:
        if size < HEADER_SIZE + 1:
            raise CorruptBuffer(f"payload size {size} cannot hold a frame")
        if not 0 <= write_pos <= size:
            raise CorruptBuffer(f"payload_write_pos {write_pos} outside the ring of {size} bytes")
        self.size = size
        self.write_pos = write_pos

    def skip(self, total: int) -> int:
        """Bytes wasted before a frame of `total` bytes (header included): 0 when it fits at
        `write_pos`, else the whole tail `size - write_pos` (the frame wraps to offset 0; the tail
        may be 0 when `write_pos == size`). The space to wait for is `skip + total`."""
        tail = self.size - self.write_pos
        return 0 if tail >= total else tail

    def rewind(self, total: int, free: int) -> int:
        """Skip that sends a frame of `total` bytes back to offset 0 although it fits here, or 0.

        Taken when the ring is empty (`free == size`: every frame released) and the frame is
        large (`REWIND_MIN`): offset 0 is then where the last such frame went, so its memory is
        still in cache (8 MiB copying sends in the demo: 1.39 -> 0.93 ms). Any reader sees a normal
        wrap, marker included; nothing is waited for, since the whole ring is free."""
        tail = self.size - self.write_pos
        if (
            free == self.size
            and total >= REWIND_MIN
            and total <= self.write_pos
            and tail >= HEADER_SIZE
        ):
            return tail
        return 0

    def limit(self) -> int:
        """Largest `total` placeable from the current position. A frame wrapping from here needs the
        tail *and* its own bytes free at once, so frames above `size // 2` only fit from some positions;
        every frame of at most `size // 2` bytes always fits eventually."""
        return max(self.size - self.write_pos, self.write_pos)

    def offset(self, skip: int) -> int:
        """Header offset of the next frame given its `skip`."""
        pos = self.write_pos + skip
        return 0 if pos >= self.size else pos

    def advance(self, skip: int, total: int) -> tuple[int, int]:
        """Record a published frame. Returns (header offset, entries written: 1, or 2 with a wrap).
        A wrap counts as an entry only when it wastes bytes (skip > 0): with write_pos at the very
        end the reader's position is already back at 0 and it sees no wrap."""
        pos = self.offset(skip)
        self.write_pos = pos + total
        return pos, (2 if skip else 1)


def marker_needed(skip: int) -> bool:
    """A wrap writes a {0, 0} marker header only when the wasted tail can hold a header."""
    return skip >= HEADER_SIZE


class ReaderRing:
    """The reader's position plus the queue of entries (frames and wrap tails) read but not yet
    returned to the writer, in ring order. Tokens are absolute entry numbers."""

    __slots__ = (
        "_entries",
        "_first",
        "_released",
        "count",
        "held",
        "held_bytes",
        "read_pos",
        "size",
    )

    def __init__(self, size: int, read_pos: int = 0, count: int = 0) -> None:
        if size < HEADER_SIZE + 1:
            raise CorruptBuffer(f"payload size {size} cannot hold a frame")
        if not 0 <= read_pos < size:
            raise CorruptBuffer(f"payload_read_pos {read_pos} outside the ring of {size} bytes")
        self.size = size
        self.read_pos = read_pos
        self.count = count  # entries read (frames + wraps): the OIEB's payload_read_count
        self._entries: deque[int] = deque()  # sizes of unreturned entries, oldest first
        self._first = 0  # token of _entries[0]
        self._released: set[int] = set()  # tokens released while an older entry is still held
        self.held = 0  # frames read and not released
        self.held_bytes = 0  # their 16 + N bytes

    def implicit_wrap(self) -> bool:
        """A tail under one header cannot hold a marker: the writer jumped to 0 without one."""
        return self.size - self.read_pos < HEADER_SIZE

    def wrap(self) -> int:
        """Meet a wrap (marker or implicit) at `read_pos`. Returns bytes to give back now: the tail,
        unless an older frame is still held (then it goes back with that frame)."""
        tail = self.size - self.read_pos
        if self.read_pos == 0:
            raise CorruptBuffer("wrap marker at ring offset 0: no writer wraps there")
        self.read_pos = 0
        self.count += 1
        if not self._entries:
            return tail
        token = self._first + len(self._entries)
        self._entries.append(tail)
        self._released.add(token)
        return 0

    def check(self, n: int) -> None:
        """Validate a frame header's length against the ring before touching its bytes."""
        if n <= 0 or n > self.size - self.read_pos - HEADER_SIZE:
            raise CorruptBuffer(
                f"frame header at ring offset {self.read_pos} claims {n} data bytes; at most "
                f"{self.size - self.read_pos - HEADER_SIZE} fit before the end of the "
                f"{self.size}-byte ring. The writer or something else corrupted the buffer."
            )

    def push(self, total: int) -> int:
        """Take the (checked) frame of `total` bytes at `read_pos`. Returns its token."""
        pos = self.read_pos + total
        self.read_pos = 0 if pos >= self.size else pos
        self.count += 1
        token = self._first + len(self._entries)
        self._entries.append(total)
        self.held += 1
        self.held_bytes += total
        return token

    def consume(self, total: int, frames: int = 1) -> int:
        """push() and release() of `frames` checked frames (`total` bytes) at `read_pos`, when
        nothing is held; returns the bytes to give back."""
        if self.held or self._entries:
            raise ValueError("consume() needs a ring with nothing held; use push() and release()")
        pos = self.read_pos + total
        self.read_pos = 0 if pos >= self.size else pos
        self.count += frames
        self._first += frames
        return total

    def release(self, token: int) -> int:
        """Release a frame by token (any order). Returns bytes to give back now (in ring order)."""
        entries = self._entries
        index = token - self._first
        if index < 0 or index >= len(entries) or token in self._released:
            raise ValueError(f"frame token {token} is not held")
        self.held -= 1
        self.held_bytes -= entries[index]
        if index:
            self._released.add(token)
            return 0
        freed = entries.popleft()
        self._first += 1
        released = self._released
        while released and self._first in released:
            released.discard(self._first)
            freed += entries.popleft()
            self._first += 1
        return freed

    @property
    def pending(self) -> int:
        """Bytes read but not yet given back (held frames plus tails waiting behind them)."""
        return sum(self._entries)
