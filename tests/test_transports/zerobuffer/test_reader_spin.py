"""The reader's spin before a blocking wait (reader.py wait_frame, _native.c wait_post): how the
first poll adapts, what the compiled spin counts, and the one sleep after an answer that came
from this core. Behaviour only: how long anything takes is measured in the bench, not here."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from transports.zerobuffer import BufferConfig, Reader, Writer
from transports.zerobuffer import posix as _shm
from transports.zerobuffer import reader as zb_reader
from transports.zerobuffer.common import _SPIN_BUSY_MAX, _SPIN_BUSY_MIN

pytestmark = pytest.mark.skipif(_shm.hotpath is None, reason="needs the compiled module")


def test_first_poll_grows_when_answers_come_from_another_core() -> None:
    busy = _SPIN_BUSY_MIN
    assert zb_reader._next_busy(1, busy, busy) > busy  # caught during the first poll
    assert zb_reader._next_busy(2, busy, busy) == 2 * busy  # after yields that ran nobody
    assert zb_reader._next_busy(1, _SPIN_BUSY_MAX, _SPIN_BUSY_MAX) == _SPIN_BUSY_MAX
    assert zb_reader._next_busy(2, _SPIN_BUSY_MAX, _SPIN_BUSY_MIN) == _SPIN_BUSY_MAX


def test_first_poll_shrinks_when_the_peer_shares_the_core_and_a_failed_probe_does_not_raise_it() -> (
    None
):
    assert zb_reader._next_busy(3, 8_000, 8_000) == 4_000
    assert zb_reader._next_busy(3, _SPIN_BUSY_MIN, _SPIN_BUSY_MIN) == _SPIN_BUSY_MIN
    # every 256th spin polls _SPIN_BUSY_MAX (a probe); answered only after a short switch, the
    # next first poll halves what it was before the probe, not the probe's length
    assert zb_reader._next_busy(3, _SPIN_BUSY_MAX, 2_000) == 1_000


def _reader_writer(shm_name: str) -> tuple[Reader, Writer]:
    r = Reader(shm_name, BufferConfig(0, 1 << 16), timeout=5.0)
    return r, Writer(shm_name)


def test_wait_post_takes_a_waiting_post_at_once_and_counts_it(shm_name: str) -> None:
    r, w = _reader_writer(shm_name)
    with r, w:
        core = r._core
        w.write(b"x")
        assert zb_reader._WAIT_POST is not None
        found = zb_reader._WAIT_POST(core.sem_handle, core.words, 1_000, 10, 2_000_000)
        assert found == 1
        assert core.words[zb_reader.POSTS] == 1
        assert bytes(r.read_small(64)) == b"x"  # the counted post is the frame's
        assert core.words[zb_reader.POSTS] == 0


def test_wait_post_without_a_post_gives_up_and_counts_nothing(shm_name: str) -> None:
    r, w = _reader_writer(shm_name)
    with r, w:
        core = r._core
        assert zb_reader._WAIT_POST is not None
        assert zb_reader._WAIT_POST(core.sem_handle, core.words, 0, 3, 2_000_000) == 0
        assert core.words[zb_reader.POSTS] == 0


def test_wait_post_releases_the_gil_and_catches_a_post_from_another_thread(shm_name: str) -> None:
    """The writer is a thread of this process: it can post only while the spin has released
    the GIL. The spin then takes that post (answer 1, 2 or 3, whichever poll saw it)."""
    r, w = _reader_writer(shm_name)
    with r, w:
        core = r._core
        go = threading.Event()

        def write() -> None:
            go.wait(5.0)
            w.write(b"y")

        t = threading.Thread(target=write)
        t.start()
        go.set()
        assert zb_reader._WAIT_POST is not None
        found = 0
        for _ in range(200):  # each spin up to 2 ms; the thread posts once it gets the GIL
            found = zb_reader._WAIT_POST(core.sem_handle, core.words, 20_000, 1_000, 2_000_000)
            if found:
                break
        t.join(5.0)
        assert found in (1, 2, 3)
        assert core.words[zb_reader.POSTS] == 1
        assert bytes(r.read_small(64)) == b"y"


def test_after_an_answer_from_this_core_the_next_wait_sleeps_once_instead_of_spinning(
    shm_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer that came right after a short switch (wait_post's 3) means the peer probably
    shares this core: the next wait skips the spin and blocks, so that the wake-up can put this
    process on another core; the one after spins again."""
    real = zb_reader._WAIT_POST
    assert real is not None
    spins: list[int] = []

    def counting(*args: Any) -> int:
        found: int = real(*args)
        spins.append(found)
        return found

    monkeypatch.setattr(zb_reader, "_WAIT_POST", counting)
    r, w = _reader_writer(shm_name)
    with r, w:
        core = r._core
        core.spin_shared = True

        def write_later(data: bytes) -> threading.Thread:
            t = threading.Timer(0.05, w.write, (data,))
            t.start()
            return t

        t = write_later(b"a")
        assert bytes(r.read_small(64)) == b"a"
        t.join()
        assert spins == []  # slept: no spin
        assert core.spin_shared is False
        t = write_later(b"b")
        assert bytes(r.read_small(64)) == b"b"
        t.join()
        assert spins  # spun again (the timer's 50 ms outlast a spin: it may have run out)


def test_a_read_with_timeout_zero_looks_once_and_does_not_spin(shm_name: str) -> None:
    """timeout=0 is a poll: a caller that polls in a loop spins by itself, so the reader
    must not add its spin to every empty look."""
    r, w = _reader_writer(shm_name)
    with r, w:
        core = r._core
        before = core.spins
        for _ in range(3):
            with pytest.raises(zb_reader.Timeout):
                r.read_small(64, timeout=0)
        assert core.spins == before
        with pytest.raises(zb_reader.Timeout):
            r.read_small(64, timeout=0.001)  # a wait, however short, spins first
        assert core.spins == before + 1
