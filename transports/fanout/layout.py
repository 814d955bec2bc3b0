"""The fan-out segment's layout: every offset, size and name in one place (docs/protocol.md,
"Fan-out"). All integers are little-endian u64.

```
0                header, 256 bytes
256              subscriber slots, S x 64 bytes
256 + 64 S       skip table, SKIPS x 16 bytes (from, to): where the ring's next entry is not
                 right after the previous one (a wrap to the next lap, a gap around pins)
T                metadata block: u64 length L, then L bytes (the stream schema), M bytes
T + M            payload ring, P bytes (page aligned), frames in the ZeroBuffer frame format
```
Positions in the ring are absolute byte counts (they only grow); the ring offset of position
`a` is `a % P`. Every frame starts at a multiple of 64 and takes `align64(16 + N)` bytes.
"""

from __future__ import annotations

import struct

MAGIC = b"ZCFANOUT"
VERSION = 1
ALIGNMENT = 64
PAGE = 4096

HEADER_SIZE = 256
SLOT_SIZE = 64
SKIP_ENTRIES = 1024
SKIP_SIZE = 16
MAX_SUBSCRIBERS = 64
"""Slots a segment may have. Every lap of the ring records at most one skip per subscriber's
pins plus one wrap, so SKIP_ENTRIES covers every position a subscriber may be at."""

# header fields
OFF_MAGIC = 0x00
OFF_VERSION = 0x08
OFF_SLOTS = 0x10
OFF_META_SIZE = 0x18
OFF_META_LEN = 0x20
OFF_PAYLOAD_SIZE = 0x28
OFF_PUB_PID = 0x30  # the publisher; 0 once it closed
OFF_HEAD = 0x38  # end of the published frames (absolute)
OFF_LAST = 0x40  # start of the newest frame (absolute)
OFF_SEQ = 0x48  # sequence number of the newest frame (1, 2, ...)
OFF_CLOSED = 0x50  # 1: the publisher closed after its last frame
OFF_JOINS = 0x58  # bumped (atomic add) by every subscriber that asks to join
OFF_PUB_ARMED = 0x60  # non-zero while the publisher sleeps waiting for room
OFF_SKIPS = 0x68  # skip entries ever written
OFF_READY = 0x70  # 1 once the segment is fully initialised

# slot fields (slot i at HEADER_SIZE + i * SLOT_SIZE)
S_PID = 0x00  # owner pid, claimed by compare-and-swap; 0 = free
S_STATE = 0x08
S_POLICY = 0x10
S_READ = 0x18  # next entry to read (absolute); the publisher may move it for drop/latest
S_PIN = 0x20  # start of the oldest frame held (absolute), NONE when nothing is held
S_HOLD_END = 0x28  # end of the newest frame held
S_ARMED = 0x30  # non-zero while the subscriber sleeps: the publisher writes its bell
S_LAST_SEQ = 0x38  # sequence of the last frame this subscriber took

FREE, JOINING, ACTIVE, CLOSING = 0, 1, 2, 3
"""Slot states: JOINING until the publisher places its cursor at its next message; CLOSING
after close() while received views still pin frames (the cursor no longer counts)."""

BLOCK, DROP, LATEST = 0, 1, 2
POLICIES = {"block": BLOCK, "drop": DROP, "latest": LATEST}

NONE = (1 << 64) - 1
"""S_PIN when nothing is held."""

FRAME_HEADER = struct.Struct("<QQ")
"""u64 N (data bytes), u64 sequence: the ZeroBuffer frame header."""
FRAME_HEADER_SIZE = FRAME_HEADER.size
U64 = struct.Struct("<Q")

FILE_MODE = 0o600


def align(n: int, to: int = ALIGNMENT) -> int:
    return (n + to - 1) // to * to


def frame_total(n: int) -> int:
    """Ring bytes a frame of n data bytes takes."""
    return align(FRAME_HEADER_SIZE + n)


def slot_offset(i: int) -> int:
    return HEADER_SIZE + i * SLOT_SIZE


def skip_offset(slots: int) -> int:
    return HEADER_SIZE + slots * SLOT_SIZE


def meta_offset(slots: int) -> int:
    return align(skip_offset(slots) + SKIP_ENTRIES * SKIP_SIZE)


def payload_offset(slots: int, meta_size: int) -> int:
    return align(meta_offset(slots) + meta_size, PAGE)


def total_size(slots: int, meta_size: int, payload: int) -> int:
    return payload_offset(slots, meta_size) + payload


def lock_stem(name: str) -> str:
    """The stem of the publisher's lock file (NAME.fanout.lock in the lock directory); the dot
    keeps ZeroBuffer's stale-lock sweep away from it."""
    return f"{name}.fanout"


def sub_bell(name: str, slot: int) -> str:
    """The FIFO the publisher writes a byte to when subscriber `slot` sleeps."""
    return f"{name}.fanout.{slot}.bell"


def pub_bell(name: str) -> str:
    """The FIFO subscribers write a byte to when the publisher waits for room."""
    return f"{name}.fanout.pub.bell"
