"""zcser._copy: multi-threaded copies of large buffers."""

from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Any

import numpy as np
import pytest

from zcser.channels import Receiver, Sender, channel
from zcser.codec import memory as _copy
from zcser.errors import UsageError


def _pattern(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "n", [0, 1, _copy.PARALLEL_MIN - 1, _copy.PARALLEL_MIN, 3 * _copy.PARALLEL_MIN + 12345]
)
def test_copy_into_copies_every_byte(n: int, threads: int) -> None:
    src = _pattern(n)
    dst = np.zeros(n + 64, np.uint8)
    _copy.copy_into(memoryview(dst)[32 : 32 + n], memoryview(src), threads)
    assert np.array_equal(dst[32 : 32 + n], src)
    assert not dst[:32].any() and not dst[32 + n :].any()


@pytest.mark.parametrize("streaming", [True, False])
def test_large_copies_use_the_pool_threads(
    monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    """Each part goes through stream_copy (compiled), or np.copyto without the C extension."""
    seen: set[str] = set()
    real = _copy._stream_copy if streaming else np.copyto
    assert real is not None, "transports._hotpath was not built"

    def spy(dst: np.ndarray, src: np.ndarray) -> None:
        seen.add(threading.current_thread().name)
        real(dst, src)

    if streaming:
        monkeypatch.setattr(_copy, "_stream_copy", spy)
    else:
        monkeypatch.setattr(_copy, "_stream_copy", None)
        monkeypatch.setattr(_copy.np, "copyto", spy)
    src = _pattern(2 * _copy.PARALLEL_MIN)
    dst = np.empty_like(src)
    _copy.copy_into(memoryview(dst), memoryview(src), 2)
    assert np.array_equal(dst, src)
    assert threading.current_thread().name in seen
    assert any(name.startswith("zcser-copy") for name in seen)


def test_overlapping_buffers_are_copied_like_memmove() -> None:
    n = 2 * _copy.PARALLEL_MIN
    buf = _pattern(n + 4096)
    expected = buf[:n].copy()
    _copy.copy_into(memoryview(buf)[4096:], memoryview(buf)[:n], 4)
    assert np.array_equal(buf[4096:], expected)


def test_default_threads_is_bounded() -> None:
    assert 1 <= _copy.default_threads() <= _copy.MAX_THREADS


def _child_copies(out: mp.Queue) -> None:  # type: ignore[type-arg]
    src = _pattern(_copy.PARALLEL_MIN * 2)
    dst = np.empty_like(src)
    _copy.copy_into(memoryview(dst), memoryview(src), 2)
    out.put(bool(np.array_equal(dst, src)))


def test_the_pool_works_again_in_a_forked_child() -> None:
    _copy.copy_into(
        memoryview(np.empty(_copy.PARALLEL_MIN, np.uint8)),
        memoryview(np.ones(_copy.PARALLEL_MIN, np.uint8)),
        2,
    )  # the parent's pool exists before the fork
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_child_copies, args=(out,))
    proc.start()
    assert out.get(timeout=60) is True
    proc.join(60)
    assert proc.exitcode == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_sender_rejects_bad_copy_threads(shm_name: str, bad: object) -> None:
    with Receiver(shm_name, capacity=1 << 20), pytest.raises(UsageError, match="copy_threads"):
        Sender(shm_name, copy_threads=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("threads", [1, 2])
def test_large_copying_send_arrives_intact(shm_name: str, threads: int) -> None:
    make_tx, rx = channel(shm_name, capacity=64 << 20, copy_threads=threads)
    with rx, make_tx() as tx:
        arr = np.arange(3 * _copy.PARALLEL_MIN // 8, dtype=np.float64)
        tx.send({"a": arr})
        got = rx.recv(timeout=10)["a"]
        assert np.array_equal(got, arr)
        assert not np.shares_memory(got, arr)


def test_a_failed_submit_waits_for_the_copies_already_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No copy thread may still write into the target once copy_into has raised."""
    pool = _copy._executor(2)
    real = pool.submit
    calls: list[Any] = []

    def submit(fn: Any, *args: Any) -> Any:
        if calls:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        future = real(fn, *args)
        calls.append(future)
        return future

    monkeypatch.setattr(pool, "submit", submit)
    src = _pattern(3 * _copy.PARALLEL_MIN)
    dst = np.zeros_like(src)
    with pytest.raises(RuntimeError, match="cannot schedule"):
        _copy.copy_into(memoryview(dst), memoryview(src), 3)
    assert calls and calls[0].done()


@pytest.mark.parametrize("shift", [0, 1, 31, 32, 33, 127])
@pytest.mark.parametrize("n", [0, 1, 31, 128, 129, 4096 + 77, 3 * 1024 * 1024 + 5])
def test_stream_copy_copies_every_byte_at_any_alignment(n: int, shift: int) -> None:
    """The compiled streaming copy: unaligned heads, the 128-byte body and tails."""
    assert _copy._stream_copy is not None, "transports._hotpath was not built"
    src = _pattern(n + 128)[shift : shift + n]
    dst = np.zeros(n + 256, np.uint8)
    _copy._stream_copy(memoryview(dst)[shift + 64 : shift + 64 + n], memoryview(src))
    assert np.array_equal(dst[shift + 64 : shift + 64 + n], src)
    assert not dst[: shift + 64].any() and not dst[shift + 64 + n :].any()


def test_stream_copy_checks_its_arguments_and_handles_overlap() -> None:
    stream_copy = _copy._stream_copy
    assert stream_copy is not None
    with pytest.raises(ValueError, match="dst has 4 bytes, src 5"):
        stream_copy(bytearray(4), b"12345")
    with pytest.raises(BufferError, match="not writable"):
        stream_copy(b"read-only", b"read-only")
    with pytest.raises(TypeError, match="takes 2 arguments"):
        stream_copy(bytearray(1))  # type: ignore[call-arg]
    buf = _pattern(10_000)
    expected = buf[:9000].copy()
    stream_copy(memoryview(buf)[1000:], memoryview(buf)[:9000])  # overlapping: memmove
    assert np.array_equal(buf[1000:], expected)
