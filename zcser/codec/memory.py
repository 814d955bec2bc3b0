"""Memory helpers: the address of a buffer, and copies of large buffers split over threads.

One thread's copy does not reach the memory bandwidth. The parts are copied with streaming
(non-temporal) stores by the compiled `stream_copy` (`transports.native`), which releases the
GIL: glibc's memcpy streams only above about 3/4 of the cache per thread, so a part below that
would go through the cache and two threads would be no faster than one. Small buffers are
copied inline: a thread hand-off costs more than their copy. (Measured effects:
docs/benchmarks.md, channel section.)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from transports import native

PARALLEL_MIN = 8 << 20
"""Buffers smaller than this (bytes) are copied by the calling thread alone."""

_stream_copy = native.module.stream_copy if native.module is not None else None

MAX_THREADS = 4
"""Default thread count ceiling: memory bandwidth is shared, more threads stop helping."""

_CHUNK_ALIGN = 4096
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0
_pool_lock = threading.Lock()


def _address_via_arrow(mv: memoryview) -> int:
    """Absolute address of the first byte of a (read-only or writable) buffer; 0 if empty."""
    if mv.nbytes == 0:
        return 0
    return int(pa.py_buffer(mv).address)


address: Callable[[memoryview], int] = (
    _address_via_arrow if native.module is None else native.module.address
)
"""The absolute address of a contiguous buffer's first byte (0 if empty): the compiled lookup
when `transports._native` was built, else through Arrow (about twenty times slower)."""


def default_threads() -> int:
    """Threads a copy uses by default: the CPUs this process may run on, at most MAX_THREADS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


def _executor(workers: int) -> ThreadPoolExecutor:
    """The shared pool, rebuilt after fork (a forked child inherits no threads) or to grow."""
    global _pool, _pool_size, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid() or _pool_size < workers:
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)  # a smaller one: its idle threads exit
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="zcser-copy")
            _pool_size = workers
            _pool_pid = os.getpid()
        return _pool


def copy_into(dst: memoryview, src: memoryview, threads: int = 1) -> None:
    """dst[:] = src for flat byte views of equal size, split over `threads` threads when large."""
    n = src.nbytes
    if threads <= 1 or n < PARALLEL_MIN:
        dst[:] = src
        return
    target = np.frombuffer(dst, np.uint8)
    source = np.frombuffer(src, np.uint8)
    if np.may_share_memory(target, source):  # chunks could read bytes another chunk wrote
        dst[:] = src
        return
    chunk = -(-n // threads // _CHUNK_ALIGN) * _CHUNK_ALIGN
    pool = _executor(threads - 1)
    copy = np.copyto if _stream_copy is None else _stream_copy
    futures: list[Future[None]] = []
    try:
        for start in range(chunk, n, chunk):
            futures.append(
                pool.submit(copy, target[start : start + chunk], source[start : start + chunk])
            )
        copy(target[:chunk], source[:chunk])
    finally:  # every started copy ends before the caller can reuse or abort the target
        for future in futures:
            future.result()
