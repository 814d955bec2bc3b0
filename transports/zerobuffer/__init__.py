"""The ZeroBuffer shared-memory ring (docs/protocol.md), wire compatible with `zerobuffer-ipc`.

```
layout.py    the control block (OIEB) and frame header layouts (pure)
ring.py      ring accounting for reader and writer (pure)
posix.py     the operating system: shared memory, semaphores, lock files, liveness, atomics
common.py    what both share: config, stats, timeouts, name and attach checks
reader.py    Frame and Reader: the protocol's reading side over the above
writer.py    Writer: the protocol's writing side over the above
```
"""

from transports.zerobuffer import layout as _layout
from transports.zerobuffer.common import (
    DEFAULT_SPIN,
    POLL_INTERVAL,
    BufferConfig,
    ReaderStats,
    WriterStats,
    is_orphan,
)
from transports.zerobuffer.posix import shm_available
from transports.zerobuffer.reader import Frame, Reader
from transports.zerobuffer.writer import Writer

FRAME_HEADER_SIZE = _layout.HEADER_SIZE
"""Bytes of the header before each frame's payload in the ring (docs/protocol.md)."""

__all__ = [
    "DEFAULT_SPIN",
    "FRAME_HEADER_SIZE",
    "POLL_INTERVAL",
    "BufferConfig",
    "Frame",
    "Reader",
    "ReaderStats",
    "Writer",
    "WriterStats",
    "is_orphan",
    "shm_available",
]
