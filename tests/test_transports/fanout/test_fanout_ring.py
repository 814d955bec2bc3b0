"""The fan-out ring's pure accounting (transports/fanout/ring.py)."""

from __future__ import annotations

import random

import pytest

from transports.fanout.layout import BLOCK, DROP, NONE
from transports.fanout.ring import Entries, Holds, fit, island_end, place


def test_fit_wraps_only_when_the_tail_is_too_short() -> None:
    assert fit(900, 100, 1000) == 900
    assert fit(950, 100, 1000) == 1000
    assert fit(1950, 50, 1000) == 1950
    assert fit(1960, 50, 1000) == 2000


def test_island_end_finds_the_image_of_a_pin_in_the_next_lap() -> None:
    P = 1000
    assert island_end(1000, 100, P, 950, 1050) == 1050  # same lap
    assert island_end(1000, 100, P, 1100, 1200) == 0  # after the frame
    assert island_end(2000, 100, P, 1050, 1150) == 2150  # one lap later
    assert island_end(2000, 100, P, 900, 1010) == 2010
    assert island_end(2000, 100, P, NONE, 5) == 0  # nothing held
    assert island_end(2000, 100, P, 500, 400) > 2000 + P  # nonsense blocks everything


def test_island_end_agrees_with_a_byte_map() -> None:
    rng = random.Random(5)
    P = 640
    for _ in range(2000):
        pin = rng.randrange(0, 5 * P)
        end = pin + rng.randrange(1, P)
        c = pin + rng.randrange(0, 3 * P)
        t = rng.randrange(1, P // 2)
        held = {(pin + k) % P for k in range(end - pin)}
        overlap = any((c + k) % P in held for k in range(t))
        got = island_end(c, t, P, pin, end)
        assert bool(got) == overlap, (c, t, pin, end)
        if got:
            assert got > c and (got - end) % P == 0


def test_entries_give_a_frame_start_at_or_after_x() -> None:
    e = Entries(6400)  # one start kept per 100 bytes
    for start in range(0, 3000, 64):
        e.add(start)
    b = e.boundary(1000, 3000)
    assert 1000 <= b <= 1100 and b % 64 == 0
    assert e.boundary(2999, 3000) == 3000
    e.forget_before(2000)
    assert e.boundary(0, 3000) >= 2000


def test_holds_release_in_any_order_moves_the_pin_with_the_oldest() -> None:
    h = Holds()
    assert h.pin == NONE and h.span_with(100) == 0
    h.take(0, 64)
    h.take(64, 192)
    h.take(192, 256)
    assert (h.pin, h.end, h.bytes, len(h)) == (0, 256, 256, 3)
    assert h.span_with(320) == 320
    assert not h.release(64)  # not the oldest: the pin stays
    assert h.release(0) and h.pin == 192
    h.untake(192, NONE, 0)
    assert h.pin == NONE and len(h) == 0 and h.bytes == 0
    with pytest.raises(ValueError):
        h.release(64)


class RacingSlot:
    """One subscriber's slot words as plain ints, with the subscriber taking the frame at its
    cursor (hold end, pin, then a compare-and-swap of the cursor: reader.py's order) right
    before the publisher's look number `take_at` at them."""

    def __init__(self, policy: int, read: int, total: int, take_at: int) -> None:
        self._policy = policy
        self.read = read
        self.pin = NONE
        self.end = 0
        self.total = total
        self.take_at = take_at
        self.looks = 0
        self.taken: tuple[int, int] | None = None

    def _look(self) -> None:
        if self.looks == self.take_at:
            r = self.read
            self.end = r + self.total
            self.pin = r
            if self.read == r:  # the swap succeeds: the subscriber holds [r, r + total)
                self.read = r + self.total
                self.taken = (r, r + self.total)
        self.looks += 1

    def cursor(self) -> int:
        self._look()
        return self.read

    def policy_code(self) -> int:
        return self._policy

    def held(self) -> tuple[int, int]:
        self._look()
        pin = self.pin
        self._look()  # the end is another word, read after the pin
        return pin, self.end

    def dead(self) -> bool:
        return False

    def move(self, frm: int, to: int) -> None:
        self._look()
        if self.read == frm:
            self.read = to


@pytest.mark.parametrize("policy", [BLOCK, DROP])
@pytest.mark.parametrize("take_at", range(12))
def test_place_never_overwrites_a_frame_taken_between_its_looks(policy: int, take_at: int) -> None:
    # A lap and a bit published; the frame about to be written overwrites [1024, 1536) of the
    # last lap, where a slow subscriber's cursor is. Whenever it takes that frame (before any
    # of the publisher's looks at its slot), the place given leaves the frame alone.
    P, t = 8192, 512
    w = P + 1024
    slot = RacingSlot(policy, read=1024, total=512, take_at=take_at)
    blockers: list[RacingSlot] = []
    c = place(w, t, P, [slot], lambda x: x, blockers)
    if c < 0:
        assert policy == BLOCK and blockers == [slot]  # waits for it to read on
        return
    assert c >= w and c + t - w <= P
    if slot.taken is not None:
        pin, end = slot.taken
        assert island_end(c, t, P, pin, end) == 0  # its image is outside [c, c + t)
