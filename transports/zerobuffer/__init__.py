"""The ZeroBuffer shared-memory ring (docs/protocol.md), wire compatible with `zerobuffer-ipc`.

```
layout.py    the control block (OIEB) and frame header layouts (pure)
ring.py      ring accounting for reader and writer (pure)
posix.py     the operating system: shared memory, semaphores, lock files, liveness, atomics
core.py      Reader and Writer: the protocol over the above
```
"""

from transports.zerobuffer import layout as _layout
from transports.zerobuffer.core import (
    DEFAULT_SPIN,
    POLL_INTERVAL,
    BufferConfig,
    Frame,
    Reader,
    ReaderStats,
    Writer,
    WriterStats,
    is_orphan,
)
from transports.zerobuffer.posix import shm_available

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
