"""Waiting on many receiving ends at once, and awaiting one: `zcser.wait`, `arecv`, `asend`.

```
ready = zcser.wait([rx1, rx2, sub], timeout=None)   # those with a message (or an end) waiting
obj = await rx.arecv(timeout=None)                  # the event loop runs while it waits
await tx.asend(obj)                                  # waits for room without blocking the loop
```

Rules every waitable end keeps (its `_wait_*` methods, see `Waitable`):
- `_wait_ready()` says, without taking anything, whether `recv(timeout=0)` would return at once
  (a message, or the end-of-stream or peer-dead error). It is cheap and never blocks.
- `_wait_fds()` names what becomes readable when that may have changed: bell FIFOs of shared
  memory channels (a sender writes a byte when a waiter is armed), ZeroMQ sockets.
- `_wait_arm()` / `_wait_disarm()` bracket a sleep: armed, the peers ring the bells. A waiter
  arms, checks `_wait_ready()` again, then sleeps: a message committed after the check rings.
- `_wait_woken()` runs after a sleep (drains bells, notices senders that came or went).
- `_wait_backstop()` is the longest sleep before checking again (peer liveness, a writer that
  does not ring bells), or None.

Nothing here takes a message: `wait` only reports, and `arecv` takes with `recv(timeout=0)`
after the loop woke it, so a cancelled `arecv` loses nothing (the next call gets the message).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from zcser import errors

__all__ = ["Waitable", "asend", "wait", "wait_readable"]


@runtime_checkable
class Waitable(Protocol):
    """What `zcser.wait` and `arecv` need from a receiving end."""

    def _wait_ready(self) -> bool: ...

    def _wait_fds(self) -> Sequence[Any]: ...

    def _wait_arm(self) -> None: ...

    def _wait_disarm(self) -> None: ...

    def _wait_woken(self) -> None: ...

    def _wait_backstop(self) -> float | None: ...


BUSY_RECHECK = 0.05
"""Longest sleep (s) of `zcser.wait` / `arecv` before looking again at an end that another
thread is receiving from: that thread owns the end's bells and sockets meanwhile, so the waiter
neither sleeps on them nor waits for that call to end (it takes whatever comes; the waiter
reports the end once a message waits while no call runs, or returns [] at its timeout)."""


def _check(ends: Iterable[Any]) -> list[Any]:
    # A receiver is iterable itself (`for obj in rx`): listing it would receive from it, and
    # block, so one end given alone is refused before anything iterates it.
    if isinstance(ends, (str, bytes, Waitable)) or not isinstance(ends, Iterable):
        hint = ": put one end in a list, zcser.wait([rx])" if isinstance(ends, Waitable) else ""
        raise errors.UsageError(
            f"zcser.wait takes a list of receivers or subscribers, not {type(ends).__name__}{hint}"
        )
    out = list(ends)
    for end in out:
        if not isinstance(end, Waitable):
            raise errors.UsageError(
                f"zcser.wait can wait on zcser receivers and subscribers, not {end!r}"
            )
    return out


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise errors.UsageError(f"timeout must be None or seconds >= 0, not {timeout!r}")
    return float(timeout)


def _sleep_limit(ends: Sequence[Any], remaining: float | None) -> float | None:
    limit = remaining
    for end in ends:
        backstop = end._wait_backstop()
        if backstop is not None and (limit is None or backstop < limit):
            limit = backstop
    return limit


def _poll(fds: list[Any], limit: float | None) -> None:
    """Sleep until one of `fds` (ints, or ZeroMQ sockets) is readable or `limit` s passed."""
    if any(not isinstance(fd, int) for fd in fds):
        import zmq  # only network ends give sockets, and they need pyzmq already

        zpoller = zmq.Poller()
        for fd in fds:
            zpoller.register(fd, zmq.POLLIN)
        zpoller.poll(None if limit is None else max(0, int(limit * 1000 + 0.999)))
        return
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.poll(None if limit is None else max(0, int(limit * 1000 + 0.999)))


def wait(ends: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """The ends (receivers, subscribers; shared memory and network mixed) that have a message
    waiting, or whose stream ended, in the order given. Sleeps (no CPU) until one has, or
    `timeout` s passed (then []). Takes nothing: follow with `recv()` on those returned."""
    chosen = _check(ends)
    limit = _check_timeout(timeout)
    deadline = None if limit is None else time.monotonic() + limit
    while True:
        ready = [end for end in chosen if end._wait_ready()]
        if ready:
            return ready
        armed: list[Any] = []
        try:
            for end in chosen:
                if end._wait_arm() is False:  # closing: its recv says so at once
                    return [end]
                armed.append(end)
            ready = [end for end in chosen if end._wait_ready()]
            if ready:
                return ready
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            fds = [fd for end in chosen for fd in end._wait_fds()]
            try:
                _poll(fds, _sleep_limit(chosen, remaining))
            except Exception:
                closed = [end for end in chosen if end.closed]
                if closed:  # closed by another thread under the poll: its recv says Closed
                    return closed
                raise
        finally:
            for end in armed:
                end._wait_disarm()
        for end in chosen:
            end._wait_woken()


async def wait_readable(end: Any, timeout: float | None) -> bool:
    """Await until `end` has a message (True) or `timeout` s passed (False), with the running
    loop's readers on its bells (no thread, no polling)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    while True:
        if end._wait_ready():
            return True
        woke = loop.create_future()

        def ring(woke: asyncio.Future[None] = woke) -> None:
            if not woke.done():
                woke.set_result(None)

        if end._wait_arm() is False:  # closing: its recv says so at once
            return True
        try:
            fds = [_fileno(fd) for fd in end._wait_fds()]
        except BaseException:
            end._wait_disarm()
            raise
        try:
            for fd in fds:
                loop.add_reader(fd, ring)
            try:
                if end._wait_ready():
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                limit = _sleep_limit([end], remaining)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woke, limit)
            finally:
                for fd in fds:
                    loop.remove_reader(fd)
        finally:
            end._wait_disarm()
        end._wait_woken()


def _fileno(fd: Any) -> int:
    """A descriptor the event loop can watch: ints as they are; a ZeroMQ socket's FD (edge
    triggered: `_wait_ready` reads its EVENTS, which re-arms it, before every sleep)."""
    if isinstance(fd, int):
        return fd
    import zmq

    return int(fd.getsockopt(zmq.FD))


ASEND_SLICE = 0.05
"""Seconds each blocking try of `asend` waits in its worker thread before looking whether the
awaiting task was cancelled (a cancelled asend sends nothing after the cancellation)."""


async def asend(end: Any, obj: Any, timeout: float | None) -> None:
    """`end.send(obj, timeout)` without blocking the event loop: one non-blocking try in the
    loop's thread; while the channel is full, tries of `ASEND_SLICE` s in a worker thread, so
    backpressure holds the task, not the loop."""
    limit = _check_timeout(timeout)
    try:
        end.send(obj, timeout=0)
        return
    except errors.BufferFull:
        if limit == 0:
            raise
    deadline = None if limit is None else time.monotonic() + limit
    cancelled = threading.Event()

    def blocking() -> None:
        while not cancelled.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            piece = ASEND_SLICE if remaining is None else max(0.0, min(ASEND_SLICE, remaining))
            try:
                end.send(obj, timeout=piece)
                return
            except errors.BufferFull:
                if remaining is not None and remaining <= piece:
                    raise
        raise asyncio.CancelledError

    try:
        await asyncio.to_thread(blocking)
    except asyncio.CancelledError:
        cancelled.set()
        raise
