"""The pure ring state machine (`transports._ring`): unit cases and a hypothesis model.

The model drives a real writer placement (`WriterRing`) and a real reader (`ReaderRing`) over a
bytearray standing in for the payload block, with the shared free counter as a plain int. It reads
and releases frames in random order and checks, independently of the implementation's accounting,
that a placement never touches a byte that is unread, held, or waiting to be returned.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from transports.errors import CorruptBuffer
from transports.zerobuffer.layout import HEADER, HEADER_SIZE
from transports.zerobuffer.ring import REWIND_MIN, ReaderRing, WriterRing, marker_needed

# --- WriterRing ----------------------------------------------------------------------------------


def test_writer_places_in_place_when_the_tail_fits() -> None:
    w = WriterRing(256)
    assert w.skip(100) == 0
    assert w.offset(0) == 0
    assert w.advance(0, 100) == (0, 1)
    assert w.write_pos == 100


def test_writer_wraps_with_marker_when_the_tail_is_too_short() -> None:
    w = WriterRing(256, write_pos=200)
    skip = w.skip(100)
    assert skip == 56 and marker_needed(skip)
    assert w.advance(skip, 100) == (0, 2)
    assert w.write_pos == 100


def test_writer_tail_under_a_header_wraps_without_marker() -> None:
    w = WriterRing(256, write_pos=250)
    skip = w.skip(20)
    assert skip == 6 and not marker_needed(skip)
    assert w.advance(skip, 20) == (0, 2)


def test_writer_at_the_very_end_wraps_without_counting_a_wrap() -> None:
    w = WriterRing(256, write_pos=256)
    assert w.skip(17) == 0
    assert w.offset(0) == 0
    assert w.advance(0, 17) == (0, 1)  # the reader's position is already 0: no wrap to count


def test_writer_exact_fit_leaves_write_pos_at_the_end() -> None:
    w = WriterRing(256, write_pos=128)
    assert w.skip(128) == 0
    w.advance(0, 128)
    assert w.write_pos == 256


def test_writer_rewinds_large_frames_only_into_an_empty_ring() -> None:
    big = REWIND_MIN
    w = WriterRing(4 * big, write_pos=2 * big)
    assert w.rewind(big, free=4 * big) == 2 * big  # empty ring, fits before write_pos
    assert w.rewind(big, free=4 * big - 1) == 0  # something unreleased
    assert w.rewind(big - 1, free=4 * big) == 0  # small frames stay put
    assert w.rewind(2 * big + 1, free=4 * big) == 0  # would not fit below write_pos
    assert WriterRing(4 * big, write_pos=0).rewind(big, free=4 * big) == 0  # at 0 already
    pos, entries = w.advance(w.rewind(big, 4 * big), big)
    assert (pos, entries, w.write_pos) == (0, 2, big)


@given(
    st.integers(min_value=HEADER_SIZE + 1, max_value=1 << 20),
    st.integers(min_value=0, max_value=1 << 20),
    st.integers(min_value=HEADER_SIZE + 1, max_value=1 << 20),
)
def test_writer_rewind_never_needs_more_than_the_free_space(
    size: int, pos: int, total: int
) -> None:
    w = WriterRing(size, write_pos=min(pos, size))
    skip = w.rewind(total, free=size)
    if skip:
        assert skip + total <= size and skip == size - w.write_pos >= HEADER_SIZE
        assert total >= REWIND_MIN and w.offset(skip) == 0


def test_writer_limit_is_position_dependent_but_at_least_half() -> None:
    assert WriterRing(256, 0).limit() == 256
    assert WriterRing(256, 100).limit() == 156
    assert WriterRing(256, 200).limit() == 200
    assert min(WriterRing(256, p).limit() for p in range(257)) == 128


@pytest.mark.parametrize("pos", [-1, 257])
def test_writer_rejects_positions_outside_the_ring(pos: int) -> None:
    with pytest.raises(CorruptBuffer):
        WriterRing(256, pos)


# --- ReaderRing ----------------------------------------------------------------------------------


def test_reader_in_order_release_returns_space_at_once() -> None:
    r = ReaderRing(256)
    a = r.push(50)
    b = r.push(60)
    assert (r.read_pos, r.count, r.held, r.held_bytes) == (110, 2, 2, 110)
    assert r.release(a) == 50
    assert r.release(b) == 60
    assert r.held == 0 and r.pending == 0


@given(st.lists(st.integers(min_value=HEADER_SIZE + 1, max_value=300), min_size=1, max_size=40))
def test_reader_consume_is_push_then_release(totals: list[int]) -> None:
    a, b = ReaderRing(1000), ReaderRing(1000)
    for total in totals:
        if a.size - a.read_pos < total:
            assert a.wrap() == b.wrap()
            continue
        assert a.consume(total) == b.release(b.push(total)) == total
        assert (a.read_pos, a.count, a.held, a.pending) == (b.read_pos, b.count, b.held, b.pending)
    token = a.push(HEADER_SIZE + 1)
    assert token == b.push(HEADER_SIZE + 1)  # the same token numbering afterwards
    with pytest.raises(ValueError, match="nothing held"):
        a.consume(HEADER_SIZE + 1)


@given(
    st.lists(
        st.lists(st.integers(min_value=HEADER_SIZE + 1, max_value=120), min_size=1, max_size=6),
        min_size=1,
        max_size=30,
    )
)
def test_reader_consume_of_a_run_is_consuming_each_frame(runs: list[list[int]]) -> None:
    """consume(sum, frames=k) (read_small's runs) ends where k single consumes end, as long as
    the run fits before the ring's end (take_run stops at the end)."""
    a, b = ReaderRing(1000), ReaderRing(1000)
    for run in runs:
        if a.size - a.read_pos < sum(run):
            assert a.wrap() == b.wrap()
            continue
        assert a.consume(sum(run), frames=len(run)) == sum(b.consume(t) for t in run)
        assert (a.read_pos, a.count, a.held, a.pending) == (b.read_pos, b.count, b.held, b.pending)
    assert a.push(HEADER_SIZE + 1) == b.push(HEADER_SIZE + 1)


def test_reader_out_of_order_release_is_deferred_until_older_frames_go() -> None:
    r = ReaderRing(256)
    a, b, c = r.push(30), r.push(40), r.push(50)
    assert r.release(c) == 0
    assert r.release(b) == 0
    assert r.pending == 120
    assert r.release(a) == 120
    assert r.pending == 0


def test_reader_wrap_tail_waits_behind_held_frames() -> None:
    r = ReaderRing(256, read_pos=200)
    a = r.push(40)  # 200..240
    assert r.wrap() == 0  # tail 16 bytes, behind a
    b = r.push(30)
    assert r.release(b) == 0
    assert r.release(a) == 40 + 16 + 30


def test_reader_wrap_with_nothing_held_returns_the_tail_now() -> None:
    r = ReaderRing(256, read_pos=250)
    assert r.implicit_wrap()
    assert r.wrap() == 6
    assert r.read_pos == 0 and r.count == 1


def test_reader_frame_ending_at_the_end_resets_position() -> None:
    r = ReaderRing(256, read_pos=128)
    r.check(128 - HEADER_SIZE)
    r.push(128)
    assert r.read_pos == 0


@pytest.mark.parametrize("n", [0, -1, 256 - 16 - 100 + 1, 1 << 63])
def test_reader_check_rejects_lengths_outside_the_ring(n: int) -> None:
    r = ReaderRing(256, read_pos=100)
    with pytest.raises(CorruptBuffer):
        r.check(n)


def test_reader_rejects_marker_at_offset_zero() -> None:
    with pytest.raises(CorruptBuffer):
        ReaderRing(256).wrap()


def test_reader_rejects_unknown_or_double_release() -> None:
    r = ReaderRing(256)
    a = r.push(20)
    r.push(20)
    with pytest.raises(ValueError):
        r.release(a + 5)
    r.release(a + 1)
    with pytest.raises(ValueError):
        r.release(a + 1)
    r.release(a)
    with pytest.raises(ValueError):
        r.release(a)


# --- the model -----------------------------------------------------------------------------------


def _pattern(seq: int, n: int) -> bytes:
    return bytes((seq * 7 + i) & 0xFF for i in range(n))


class RingModel(RuleBasedStateMachine):
    """Writer + reader over one bytearray, the free counter shared as docs/protocol.md says."""

    @initialize(size=st.sampled_from([64, 128, 192, 256, 448]))
    def setup(self, size: int) -> None:
        self.P = size
        self.mem = bytearray(b"\xee" * size)
        self.free = size
        self.w = WriterRing(size)
        self.r = ReaderRing(size)
        self.seq = 1
        self.expected = 1
        self.published = 0  # frames written, not read
        # Everything the writer must not touch, in ring order: [start, end) regions of unread
        # frames, wasted tails, held frames, and released ones still waiting behind a held one.
        self.claimed: list[tuple[int, int]] = []
        self.held: dict[
            int, tuple[int, int, int, int]
        ] = {}  # token -> (seq, start, n, claimed idx)

    def _overlaps(self, start: int, end: int) -> bool:
        return any(start < e and s < end for s, e in self.claimed)

    @rule(n=st.integers(min_value=1, max_value=448))
    def write(self, n: int) -> None:
        total = n + HEADER_SIZE
        if total > self.P:
            return
        skip = self.w.skip(total)
        if skip + total > self.P:
            assert self.w.limit() < total  # the only frames that can never be placed from here
            return
        if self.free < skip + total:
            return  # the writer would wait
        old = self.w.write_pos
        pos = self.w.offset(skip)
        if skip:
            assert not self._overlaps(old, self.P), "wrap tail overlaps a live region"
        assert not self._overlaps(pos, pos + total), "frame placed over a live region"
        if marker_needed(skip):
            HEADER.pack_into(self.mem, old, 0, 0)
        HEADER.pack_into(self.mem, pos, n, self.seq)
        self.mem[pos + HEADER_SIZE : pos + total] = _pattern(self.seq, n)
        if skip:
            self.claimed.append((old, self.P))
        self.claimed.append((pos, pos + total))
        self.w.advance(skip, total)
        self.free -= skip + total
        self.seq += 1
        self.published += 1

    @precondition(lambda self: self.published > 0)
    @rule()
    def read(self) -> None:
        r = self.r
        freed = 0
        if r.implicit_wrap():
            freed += r.wrap()
        n, seq = HEADER.unpack_from(self.mem, r.read_pos)
        if n == 0:
            assert seq == 0
            freed += r.wrap()
            n, seq = HEADER.unpack_from(self.mem, 0)
        r.check(n)
        start = r.read_pos + HEADER_SIZE
        assert seq == self.expected
        assert bytes(self.mem[start : start + n]) == _pattern(seq, n)
        token = r.push(HEADER_SIZE + n)
        self.held[token] = (seq, start, n, 0)
        self.expected += 1
        self.published -= 1
        self._give_back(freed)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        token = data.draw(st.sampled_from(sorted(self.held)))
        seq, start, n, _ = self.held.pop(token)
        assert bytes(self.mem[start : start + n]) == _pattern(seq, n), "held frame overwritten"
        self._give_back(self.r.release(token))

    def _give_back(self, freed: int) -> None:
        """Returned bytes must be exactly the oldest claimed regions, in ring order."""
        self.free += freed
        while freed:
            s, e = self.claimed.pop(0)
            freed -= e - s
            assert freed >= 0, "returned part of a region"

    @precondition(lambda self: self.published == 0 and not self.held)
    @rule()
    def everything_returned(self) -> None:
        assert self.free == self.P
        assert self.claimed == []

    @invariant()
    def free_is_conserved(self) -> None:
        if hasattr(self, "P"):
            assert 0 <= self.free <= self.P
            assert self.free + sum(e - s for s, e in self.claimed) == self.P
            assert self.r.held == len(self.held)


RingModel.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_ring_model = RingModel.TestCase


@settings(max_examples=200, deadline=None)
@given(
    size=st.sampled_from([64, 128, 256]),
    sizes=st.lists(st.integers(1, 100), min_size=1, max_size=40),
    order=st.randoms(use_true_random=False),
)
def test_drain_in_any_order_returns_everything(size: int, sizes: list[int], order: object) -> None:
    """Write until full, read everything, release in a random order: free ends at P."""
    import random

    assert isinstance(order, random.Random)
    w, r, free = WriterRing(size), ReaderRing(size), size
    mem = bytearray(size)
    published = 0
    for n in sizes:
        total = n + HEADER_SIZE
        if total > size:
            continue
        skip = w.skip(total)
        if skip + total > free:
            break
        if marker_needed(skip):
            HEADER.pack_into(mem, w.write_pos, 0, 0)
        pos, _ = w.advance(skip, total)
        HEADER.pack_into(mem, pos, n, 1)
        free -= skip + total
        published += 1
    tokens = []
    for _ in range(published):
        if r.implicit_wrap():
            free += r.wrap()
        n, _seq = HEADER.unpack_from(mem, r.read_pos)
        if n == 0:
            free += r.wrap()
            n, _seq = HEADER.unpack_from(mem, 0)
        r.check(n)
        tokens.append(r.push(n + HEADER_SIZE))
    order.shuffle(tokens)
    for token in tokens:
        free += r.release(token)
    assert free == size
    assert r.held == 0 and r.pending == 0
