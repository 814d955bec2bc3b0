"""A pool reader's spin before it sleeps (pool.py _poll, _native.c pool_poll): it looks at the
rings in use and at nothing else, finds the ring with a frame, takes nothing, and a ring whose
words a peer wrote nonsense into is only looked at (the read path then says what is wrong)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from transports.errors import Timeout
from transports.zerobuffer import BufferConfig, Writer
from transports.zerobuffer import layout as L
from transports.zerobuffer import pool as pool_module
from transports.zerobuffer import posix as _shm
from transports.zerobuffer.pool import Place, PoolReader

pytestmark = pytest.mark.skipif(_shm.hotpath is None, reason="needs the compiled module")


@pytest.fixture
def pool(shm_name: str) -> Iterator[tuple[PoolReader, list[tuple[Place, Writer]]]]:
    reader = PoolReader(shm_name, BufferConfig(0, 1 << 16), places=4)
    ends: list[tuple[Place, Writer]] = []
    try:
        for _ in range(2):
            place = Place.claim(shm_name, Place.open(shm_name))  # type: ignore[arg-type]
            writer = Writer(place.ring)
            place.reserve(writer)
            ends.append((place, writer))
        assert reader.take(1 << 10) is None  # looks for writers: two places in use
        yield reader, ends
    finally:
        for place, writer in ends:
            place.leave()
            writer.close()
        reader.close()


def _poll(reader: PoolReader) -> int:
    assert _shm.hotpath is not None
    return int(_shm.hotpath.pool_poll(reader._poll_words, 0, 0))


def _index_of(reader: PoolReader, place: Place) -> int:
    """Where pool_poll lists `place` (places in use, in order)."""
    in_use = [i for i in range(reader.places) if reader.active[i]]
    return in_use.index(int(place.ring.rsplit("--", 1)[1]))


def test_the_poll_lists_only_the_rings_in_use(pool: tuple[PoolReader, list]) -> None:
    reader, _ = pool
    assert sum(reader.active) == 2
    assert len(reader._poll_words) == 2 * 2  # (OIEB address, size) for each


def test_the_poll_finds_the_ring_with_a_frame_and_takes_nothing(
    pool: tuple[PoolReader, list],
) -> None:
    reader, ends = pool
    assert _poll(reader) == -1
    place, writer = ends[1]
    writer.write(b"hello")
    assert _poll(reader) == _index_of(reader, place)
    assert _poll(reader) == _index_of(reader, place)  # still there: the poll took nothing
    assert reader.take(1 << 10) == b"hello"
    assert _poll(reader) == -1


def test_nonsense_written_into_a_rings_words_is_looked_at_not_trusted(
    pool: tuple[PoolReader, list],
) -> None:
    reader, ends = pool
    place, _writer = ends[0]
    core = reader.cores[int(place.ring.rsplit("--", 1)[1])]
    size = core.ring.size
    word = struct.Struct("<Q")
    word.pack_into(core.mm, L.OFF_WRITE_POS, size + 4096)  # past the ring: no frame there
    assert _poll(reader) == -1
    word.pack_into(core.mm, L.OFF_WRITE_POS, 256)  # a frame that was never published
    assert _poll(reader) == _index_of(reader, place)  # looked at...
    assert reader.take(1 << 10) is None  # ...but no frame is read without its sem-w post


def test_after_an_answer_from_a_shared_core_the_next_wait_sleeps_once(
    pool: tuple[PoolReader, list],
) -> None:
    """As the 1:1 reader: an answer that came right after a short switch means a writer
    probably shares this core, so the next wait goes to sleep at once (the wake-up lets the
    scheduler move us) and the one after polls again."""
    reader, ends = pool
    _place, writer = ends[0]
    writer.write(b"waiting")
    reader._shared = True
    assert reader._poll(1 << 10) is None  # did not look, although a frame waits
    assert reader._shared is False
    assert reader._poll(1 << 10) == b"waiting"


def test_a_read_with_timeout_zero_looks_once_and_does_not_spin(
    pool: tuple[PoolReader, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, _ = pool
    polls: list[int] = []
    real = pool_module._POLL
    assert real is not None

    def counted(words: object, busy: int, rounds: int) -> int:
        polls.append(busy)
        return int(real(words, busy, rounds))

    monkeypatch.setattr(pool_module, "_POLL", counted)
    with pytest.raises(Timeout):
        reader.read_small(1 << 10, 0)
    assert polls == []
    with pytest.raises(Timeout):
        reader.read_small(1 << 10, 0.001)  # a wait, however short, spins first
    assert len(polls) == 1
