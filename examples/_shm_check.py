"""Helpers shared by the examples: where a buffer lives, and a check that exits non-zero."""

from __future__ import annotations

import os
import sys


def mapping_of(path: str) -> tuple[int, int] | None:
    """(start, end) addresses of this process's memory map of `path`, from /proc/self/maps.

    `/dev/shm/NAME` for a channel's ring, a file path for a snapshot. None where there is no
    /proc (macOS) or the file is not mapped.
    """
    if not os.path.exists("/proc/self/maps"):
        return None
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == real:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                return start, end
    return None


def inside(address: int, path: str) -> bool | None:
    """True if `address` lies in this process's mapping of `path`, False if not (or if `path` is
    not mapped at all); None without /proc (macOS), where it cannot be told."""
    if not os.path.exists("/proc/self/maps"):
        return None
    span = mapping_of(path)
    return span is not None and span[0] <= address < span[1]


def check(condition: bool, what: str) -> None:
    """Print one verified claim, or exit with status 1 naming it."""
    if not condition:
        sys.exit(f"FAILED: {what}")
    print(f"  ok: {what}")
