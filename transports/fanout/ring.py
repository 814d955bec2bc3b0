"""The fan-out ring's accounting, pure (no OS calls, no shared memory): where the publisher may
put the next frame, and what a subscriber holds. `transports.fanout` feeds it numbers read from
the segment and applies what it decides.

Rules (docs/protocol.md, "Fan-out"):
- Positions are absolute and only grow. A frame never crosses the ring's end: when the tail
  is too short the publisher wraps to the next lap and records a skip (from, to).
- The publisher may overwrite the ring bytes of old positions [c - P, c + t - P) for a frame
  at [c, c + t) only when every "block" subscriber has read past c + t - P, every other
  subscriber's cursor has been moved past it (its unread frames there are missed), and no
  subscriber's held interval [pin, hold_end) has an image in [c, c + t) modulo P.
- A held interval in the way is an island: the publisher skips over it (a recorded gap) and
  places the frame after it, so one subscriber's pins never stop the others.
- Skip + frame span at most one lap (c + t - w <= P); otherwise there is no room yet.
- Cursors are looked at before pins, in every round of `place`: a subscriber announces a hold
  (hold end, pin) before it moves its cursor past the frame, so a cursor seen past the
  overwritten bytes means its hold is seen by the look that follows. Looking at pins first
  lets a frame be taken between the two looks: its pin missed, its cursor already past.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from transports.fanout.layout import BLOCK, NONE, align


def fit(c: int, t: int, size: int) -> int:
    """The first position >= c where a frame of t ring bytes fits before the ring's end."""
    if size - c % size < t:
        return (c // size + 1) * size
    return c


def island_end(c: int, t: int, size: int, pin: int, end: int) -> int:
    """0 if the held interval [pin, end) leaves the ring bytes of [c, c + t) alone; else the
    absolute end of its image that overlaps them (the frame must go after it). An interval
    that is not one (end < pin, or longer than the ring) is in the way of everything."""
    if pin == NONE:
        return 0
    length = end - pin
    if length < 0 or length > size:
        return c + size + 1  # nonsense from the peer: never overwrite anything for it
    if length == 0:
        return 0
    # the smallest k with pin + k*size + length > c
    k = (c - pin - length) // size + 1
    start = pin + k * size
    if start < c + t:
        return start + length
    return 0


SAMPLES = 64
"""Frame starts the publisher remembers per lap (about one every size / SAMPLES bytes)."""


class Entries:
    """The publisher's record of some frame starts of the last lap, oldest first: where a
    skipped subscriber's cursor may be put (a frame start, never the middle of one). One
    start per `size / SAMPLES` bytes is kept, so a skipped subscriber misses at most that
    many bytes of messages more than it had to."""

    __slots__ = ("_starts", "_step", "next_sample", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._step = max(1, size // SAMPLES)
        self._starts: deque[int] = deque()
        self.next_sample = 0
        """Frame starts below this one need not be given to add() (it would not keep them)."""

    def add(self, start: int) -> None:
        starts = self._starts
        if not starts or start - starts[-1] >= self._step:
            starts.append(start)
            self.next_sample = start + self._step

    def forget_before(self, position: int) -> None:
        starts = self._starts
        while starts and starts[0] < position:
            starts.popleft()

    def boundary(self, x: int, write_pos: int) -> int:
        """The first frame start >= x, or `write_pos` when none is."""
        for start in self._starts:
            if start >= x:
                return start
        return write_pos


class Holds:
    """A subscriber's held frames, oldest first: `pin` is where the oldest starts (NONE when
    nothing is held), `end` where the newest ends. Release in any order; the pin moves when
    the oldest goes."""

    __slots__ = ("_held", "bytes", "end", "pin")

    def __init__(self) -> None:
        self._held: dict[int, tuple[int, int]] = {}  # start -> (start, end), oldest first
        self.pin = NONE
        self.end = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, start: object) -> bool:
        return start in self._held

    def span_with(self, end: int) -> int:
        """Ring bytes from the oldest held frame to `end` (0 when nothing is held)."""
        return 0 if self.pin == NONE else end - self.pin

    def take(self, start: int, end: int) -> None:
        if not self._held:
            self.pin = start
        self._held[start] = (start, end)
        self.end = end
        self.bytes += end - start

    # untake and release make their calls (and loops) before their first change: CPython runs
    # a signal handler right after a call returns, and its exception (KeyboardInterrupt) must
    # find the record as it was or as it ends, never a frame gone with the pin still at it.

    def untake(self, start: int, pin: int, end: int) -> None:
        """Undo the last take (its claim failed): back to the given pin and end."""
        held = self._held
        got = held.get(start)
        if got is not None:
            del held[start]
            self.bytes -= got[1] - got[0]
        self.pin = pin
        self.end = end

    def release(self, start: int) -> bool:
        """Drop the frame held at `start`; True if the pin moved (the publisher may gain room)."""
        held = self._held
        got = held.get(start)
        if got is None:
            raise ValueError(f"no frame held at {start}")
        after = NONE  # the oldest frame held but this one
        for other in held:
            if other != start:
                after = other
                break
        del held[start]
        self.bytes -= got[1] - got[0]
        if start != self.pin:
            return False
        self.pin = after
        return True


class Subscriber(Protocol):
    """What `place` looks at in one subscriber's slot, each call one fresh look at shared
    words written concurrently by the subscriber."""

    def cursor(self) -> int:
        """Its cursor, or NONE when the cursor does not count (not active)."""
        ...

    def policy_code(self) -> int:
        """BLOCK, DROP or LATEST (layout.py)."""
        ...

    def held(self) -> tuple[int, int]:
        """(pin, hold end): the pin first, then the end (a subscriber writes them the other
        way round when it starts holding)."""
        ...

    def dead(self) -> bool: ...

    def move(self, frm: int, to: int) -> None:
        """Compare-and-swap its cursor from `frm` to `to` (a "drop" or "latest" skip)."""
        ...


S = TypeVar("S", bound=Subscriber)


def place(
    w: int,
    t: int,
    size: int,
    subs: Sequence[S],
    boundary: Callable[[int], int],
    blockers: list[S],
) -> int:
    """The position for a frame of t ring bytes written after `w`, or -1 (`blockers` says
    who is in the way). Each round looks at every cursor (moving those of "drop" and
    "latest" subscribers past the bytes the frame overwrites, to `boundary(x)`: the first
    frame start >= x), then at every pin; the position is given only after a round in which
    nothing moved: no cursor, no island."""
    c = fit(w, t, size)
    for _ in range(4 * len(subs) + 8):
        moved = False
        x = c + t - size
        for s in subs:
            r = s.cursor()
            if r == NONE or r >= x:
                continue
            if s.policy_code() == BLOCK:
                blockers.append(s)
                continue
            s.move(r, boundary(x))
            moved = True  # look again: it may have taken a frame before the swap
        if blockers:
            return -1
        for s in subs:
            pin, end = s.held()
            if pin == NONE:
                continue
            after = island_end(c, t, size, pin, end)
            if after:
                if s.dead():
                    blockers.append(s)
                    return -1
                c = fit(align(after), t, size)
                moved = True
        if c + t - w > size:
            blockers.extend(s for s in subs if s.held()[0] != NONE)
            return -1
        if not moved:
            return c
    return -1
