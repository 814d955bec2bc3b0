"""ZeroBuffer layout constants: every offset, size and struct format in one place (see docs/protocol.md).

```
0         OIEB, 128 bytes
128       metadata block, M = align64(metadata_size) bytes   (M may be 0)
128 + M   payload block (the ring), P = align64(payload_size) bytes
```
All integers little endian.
"""

from __future__ import annotations

import os
import re
import struct
import sys
from pathlib import Path

ALIGNMENT = 64
"""Every block starts at a multiple of this; so does any offset the channel layer aligns."""

OIEB_SIZE = 128
VERSION = (1, 0, 0, 0)
"""Major, minor, patch, reserved. A writer refuses a buffer whose major differs."""

OIEB_FORMAT = "<I4B11Q4Q"
OIEB_STRUCT = struct.Struct(OIEB_FORMAT)
assert OIEB_STRUCT.size == OIEB_SIZE

# Byte offsets of the OIEB fields.
OFF_OIEB_SIZE = 0x00  # u32
OFF_VERSION = 0x04  # 4 x u8
OFF_METADATA_SIZE = 0x08
OFF_METADATA_FREE = 0x10
OFF_METADATA_WRITTEN = 0x18
OFF_PAYLOAD_SIZE = 0x20
OFF_PAYLOAD_FREE = 0x28  # the only field both sides change: atomic add/sub only
OFF_WRITE_POS = 0x30
OFF_READ_POS = 0x38
OFF_WRITTEN_COUNT = 0x40
OFF_READ_COUNT = 0x48
OFF_WRITER_PID = 0x50
OFF_READER_PID = 0x58
OFF_RESERVED = 0x60

U64 = struct.Struct("<Q")
"""One OIEB field (or the metadata length prefix)."""
HEAD = struct.Struct("<I4B")
"""oieb_size and the four version bytes."""

HEADER_SIZE = 16
HEADER = struct.Struct("<QQ")
"""Frame header: data length N, sequence number. {0, 0} is a wrap marker."""
assert HEADER.size == HEADER_SIZE

METADATA_PREFIX = 8
"""The metadata block starts with a u64 length L, then L bytes."""

DEFAULT_TIMEOUT = 5.0
"""Seconds a blocking call waits by default (docs/protocol.md: the reference's default)."""

LOCK_DIR = Path("/tmp/zerobuffer")
"""The lock directory every ZeroBuffer implementation of the machine shares (zerobuffer-ipc
always uses this one)."""
LOCK_DIR_ENV = "ZEROBUFFER_LOCK_DIR"
"""Environment variable naming another lock directory (tests, private setups; see lock_dir)."""
SHM_DIR = Path("/dev/shm")
"""Where Linux shows POSIX shared memory and semaphores (free space; posix.py checks the files)."""

FILE_MODE = 0o600
"""Shared memory, semaphores and lock files: owner only (the reference uses 0666)."""

NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
NAME_MAX = 200 if sys.platform.startswith("linux") else 20
"""Linux allows 255 bytes per name ('sem.sem-w-' is prepended); macOS caps shm names at 31."""


def align(n: int) -> int:
    """Round up to the next multiple of ALIGNMENT."""
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


def shm_name(name: str) -> str:
    return "/" + name


def sem_w_name(name: str) -> str:
    """Data-available semaphore: the writer posts once per frame, the reader waits."""
    return "/sem-w-" + name


def sem_r_name(name: str) -> str:
    """Space-available semaphore: the reader posts on release, the writer waits when short."""
    return "/sem-r-" + name


def lock_dir() -> Path:
    """The lock directory: $ZEROBUFFER_LOCK_DIR when set, else LOCK_DIR. Every process that
    shares a buffer must use the same one; zerobuffer-ipc ignores the variable."""
    return Path(os.environ.get(LOCK_DIR_ENV) or LOCK_DIR)


def lock_path(name: str) -> Path:
    return lock_dir() / f"{name}.lock"


def total_size(metadata_block: int, payload_block: int) -> int:
    return OIEB_SIZE + metadata_block + payload_block
