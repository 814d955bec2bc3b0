"""The ZeroBuffer payload ring as a pure state machine: positions, wrap decisions, free-space
accounting and in-order reclamation of frames released out of order. No OS calls, no shared
memory: `transports.zerobuffer` feeds it numbers read from the OIEB and applies what it decides.

Accounting (docs/protocol.md): one shared counter `free`. The writer subtracts `tail + 16 + N` when it
places a frame (`tail` = bytes wasted by wrapping, usually 0); the reader adds the wasted tail back
when it meets the wrap, and `16 + N` back when the frame is released. The writer assumes the free
bytes are the contiguous region from `write_pos` up to the oldest frame still in use, so the
reader only ever returns space *in ring order*: a frame (or tail) released while an older one is
still held is marked, and its bytes go back when every older entry has gone back too.
"""

from __future__ import annotations

from array import array

from transports.errors import CorruptBuffer
from transports.zerobuffer.layout import HEADER_SIZE

REWIND_MIN = 64 * 1024
"""Frames (header included) from this size go back to offset 0 when the ring is empty."""


WRITE_POS = 0
"""The writer's state word this ring keeps (the compiled Publisher advances it when it publishes;
transports/_native.c lists the writer's other words)."""


class WriterRing:
    """Where the writer puts the next frame. `write_pos` is in [0, size]; size means "at the end".
    It lives in `words[WRITE_POS]`, which the writer's commit advances."""

    __slots__ = ("size", "words")

    def __init__(self, size: int, write_pos: int = 0, words: array[int] | None = None) -> None:
        if size < HEADER_SIZE + 1:
            raise CorruptBuffer(f"payload size {size} cannot hold a frame")
        if not 0 <= write_pos <= size:
            raise CorruptBuffer(f"payload_write_pos {write_pos} outside the ring of {size} bytes")
        self.size = size
        self.words = words if words is not None else array("Q", bytes(8))
        self.words[WRITE_POS] = write_pos

    @property
    def write_pos(self) -> int:
        return self.words[WRITE_POS]

    @write_pos.setter
    def write_pos(self, value: int) -> None:
        self.words[WRITE_POS] = value

    def skip(self, total: int) -> int:
        """Bytes wasted before a frame of `total` bytes (header included): 0 when it fits at
        `write_pos`, else the whole tail `size - write_pos` (the frame wraps to offset 0; the tail
        may be 0 when `write_pos == size`). The space to wait for is `skip + total`."""
        tail = self.size - self.words[WRITE_POS]
        return 0 if tail >= total else tail

    def rewind(self, total: int, free: int) -> int:
        """Skip that sends a frame of `total` bytes back to offset 0 although it fits here, or 0.

        Taken when the ring is empty (`free == size`: every frame released) and the frame is
        large (`REWIND_MIN`): offset 0 is then where the last such frame went, so its memory is
        still in cache (docs/benchmarks.md). Any reader sees a normal wrap, marker included;
        nothing is waited for, since the whole ring is free."""
        write_pos = self.words[WRITE_POS]
        tail = self.size - write_pos
        if free == self.size and total >= REWIND_MIN and total <= write_pos and tail >= HEADER_SIZE:
            return tail
        return 0

    def limit(self) -> int:
        """Largest `total` placeable from the current position. A frame wrapping from here needs the
        tail *and* its own bytes free at once, so frames above `size // 2` only fit from some positions;
        every frame of at most `size // 2` bytes always fits eventually."""
        write_pos = self.words[WRITE_POS]
        return max(self.size - write_pos, write_pos)

    def offset(self, skip: int) -> int:
        """Header offset of the next frame given its `skip`."""
        pos = self.words[WRITE_POS] + skip
        return 0 if pos >= self.size else pos

    def advance(self, skip: int, total: int) -> tuple[int, int]:
        """Record a published frame. Returns (header offset, entries written: 1, or 2 with a wrap).
        A wrap counts as an entry only when it wastes bytes (skip > 0): with write_pos at the very
        end the reader's position is already back at 0 and it sees no wrap."""
        pos = self.offset(skip)
        self.words[WRITE_POS] = pos + total
        return pos, (2 if skip else 1)


def marker_needed(skip: int) -> bool:
    """A wrap writes a {0, 0} marker header only when the wasted tail can hold a header."""
    return skip >= HEADER_SIZE


# The reader's state words this ring keeps (shared with the compiled take_run, which advances
# them in the same call that takes a run of frames; transports/_native.c lists the rest):
READ_POS = 0  # ring offset of the next entry to read
COUNT = 1  # entries read, frames and wraps: the OIEB's payload_read_count
FIRST = 2  # token of the oldest entry not yet given back
RING_WORDS = 3


class ReaderRing:
    """The reader's position plus the queue of entries (frames and wrap tails) read but not yet
    returned to the writer, in ring order. Tokens are absolute entry numbers.

    Signal safety: every method that changes the ring makes its checks and plans first, then
    changes the state in straight-line stores with no call in between (`+=` on the list and the
    set, item stores on `words`): CPython runs a signal handler only at a call or a loop, so a
    KeyboardInterrupt lands either before a change or after it, never inside it. Keep it so."""

    __slots__ = ("_entries", "_released", "held", "held_bytes", "queued", "size", "words")

    def __init__(
        self, size: int, read_pos: int = 0, count: int = 0, words: array[int] | None = None
    ) -> None:
        if size < HEADER_SIZE + 1:
            raise CorruptBuffer(f"payload size {size} cannot hold a frame")
        if not 0 <= read_pos < size:
            raise CorruptBuffer(f"payload_read_pos {read_pos} outside the ring of {size} bytes")
        self.size = size
        self.words = words if words is not None else array("Q", bytes(8 * RING_WORDS))
        self.words[READ_POS] = read_pos
        self.words[COUNT] = count
        self.words[FIRST] = 0
        self._entries: list[int] = []  # sizes of unreturned entries, oldest first
        self.queued = 0  # len(_entries), kept so the stores need no call
        self._released: set[int] = set()  # tokens released while an older entry is still held
        self.held = 0  # frames read and not released
        self.held_bytes = 0  # their 16 + N bytes

    @property
    def read_pos(self) -> int:
        return self.words[READ_POS]

    @property
    def count(self) -> int:
        return self.words[COUNT]

    def implicit_wrap(self) -> bool:
        """A tail under one header cannot hold a marker: the writer jumped to 0 without one."""
        return self.size - self.words[READ_POS] < HEADER_SIZE

    def wrap(self) -> int:
        """Meet a wrap (marker or implicit) at `read_pos`. Returns bytes to give back now: the tail,
        unless an older frame is still held (then it goes back with that frame)."""
        if self.words[READ_POS] == 0:
            raise CorruptBuffer("wrap marker at ring offset 0: no writer wraps there")
        return self.read(True, 0, False)[1]

    def check(self, n: int, pos: int | None = None) -> None:
        """Validate a frame header's length against the ring before touching its bytes (the
        header at `pos`, by default `read_pos`)."""
        if pos is None:
            pos = self.words[READ_POS]
        if n <= 0 or n > self.size - pos - HEADER_SIZE:
            raise CorruptBuffer(
                f"frame header at ring offset {pos} claims {n} data bytes; at most "
                f"{self.size - pos - HEADER_SIZE} fit before the end of the "
                f"{self.size}-byte ring. The writer or something else corrupted the buffer."
            )

    def next_token(self, wrapped: bool) -> int:
        """The token read() will give the next frame (after a wrap, if `wrapped`)."""
        token = self.words[FIRST] + self.queued
        return token + 1 if wrapped and self.queued else token

    def read(self, wrapped: bool, total: int, hold: bool) -> tuple[int, int]:
        """Take the next entries in one step: a wrap first if `wrapped` (the tail goes back now,
        or behind held frames), then, if `total`, the checked frame of `total` bytes now at
        `read_pos`, held (`hold`: released later by its token) or given back at once.
        Returns (the frame's token, bytes to give back now)."""
        words = self.words
        size = self.size
        pos = words[READ_POS]
        freed = 0
        entries = 0  # entries read
        if wrapped:
            if self.queued:
                # Behind a held frame: queued as already released, back with that frame.
                self._released |= {words[FIRST] + self.queued}
                self._entries += (size - pos,)
                self.queued += 1
            else:
                freed = size - pos
            pos = 0
            entries = 1
        token = words[FIRST] + self.queued
        if total:
            pos += total
            entries += 1
            if hold:
                self._entries += (total,)
                self.queued += 1
                self.held += 1
                self.held_bytes += total
            elif self.queued:
                self._released |= {token}
                self._entries += (total,)
                self.queued += 1
            else:
                words[FIRST] += 1
                freed += total
        words[READ_POS] = 0 if pos >= size else pos
        words[COUNT] += entries
        return token, freed

    def push(self, total: int) -> int:
        """Take the (checked) frame of `total` bytes at `read_pos`. Returns its token."""
        return self.read(False, total, True)[0]

    def consume(self, total: int, frames: int = 1) -> int:
        """push() and release() of `frames` checked frames (`total` bytes) at `read_pos`, when
        nothing is held; returns the bytes to give back."""
        if self.held or self.queued:
            raise ValueError("consume() needs a ring with nothing held; use push() and release()")
        words = self.words
        pos = words[READ_POS] + total
        words[READ_POS] = 0 if pos >= self.size else pos
        words[COUNT] += frames
        words[FIRST] += frames
        return total

    def release(self, token: int) -> int:
        """Release a frame by token (any order). Returns bytes to give back now (in ring order)."""
        words = self.words
        entries = self._entries
        released = self._released
        first = words[FIRST]
        index = token - first
        if index < 0 or index >= self.queued or token in released:
            raise ValueError(f"frame token {token} is not held")
        size = entries[index]
        if index:
            released |= {token}
            self.held -= 1
            self.held_bytes -= size
            return 0
        # The oldest entry: it goes back with every released one right behind it. Plan first...
        k = 1
        freed = size
        while first + k in released:
            freed += entries[k]
            k += 1
        gone = set(range(first + 1, first + k)) if k > 1 else None
        # ... then change everything at once.
        del entries[:k]
        if gone is not None:
            released -= gone
        self.queued -= k
        words[FIRST] = first + k
        self.held -= 1
        self.held_bytes -= size
        return freed

    @property
    def pending(self) -> int:
        """Bytes read but not yet given back (held frames plus tails waiting behind them)."""
        return sum(self._entries)
