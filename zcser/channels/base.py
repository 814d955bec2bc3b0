"""The two ends of every channel, and the registry that picks a transport by the name's scheme.

```
Sender(name)      -> ShmSender   (NAME or shm://NAME)    NetSender   (tcp://..., ipc://...)
Receiver(name)    -> ShmReceiver                          NetReceiver
```

`Sender` and `Receiver` are the classes users construct and check against. Constructing the
base looks the name's scheme up in the registry and builds the registered subclass, the way
`pathlib.Path(...)` builds a `PosixPath`: `isinstance(zcser.Sender("tcp://..."), zcser.Sender)`
holds, the object prints as what it is, and an option the chosen transport does not take is a
`UsageError` that names it. Each transport module registers its pair when it is imported
(`zcser.channels` imports them all).

Rules every subclass keeps:
- errors are `zcser.errors` classes; transport errors pass through `errors.translate` once, at
  the public method that called the transport;
- `close()` is idempotent and a closed end raises `Closed`; ends are not picklable (pass the
  name, or a `SenderFactory`);
- `for obj in receiver` yields messages until the stream ends (`Closed`).
"""

from __future__ import annotations

import inspect
import operator
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from zcser import errors
from zcser.channels import waiting

__all__ = ["Gate", "Receiver", "Receiving", "Sender", "register", "scheme_of"]

_SENDERS: dict[str, type[Sender]] = {}
_RECEIVERS: dict[str, type[Receiver]] = {}


def scheme_of(name: object) -> str:
    """The transport a channel name selects: "tcp", "ipc" or "shm" (a bare name is shm)."""
    if not isinstance(name, str):
        raise errors.UsageError(
            f"a channel name must be a str (a shared-memory name, shm://NAME, tcp://HOST:PORT "
            f"or ipc:///PATH), not {type(name).__name__}: {name!r}"
        )
    scheme, sep, _ = name.partition("://")
    return scheme if sep else "shm"


def register(scheme: str, sender: type[Sender], receiver: type[Receiver]) -> None:
    """Make `Sender(scheme://...)` and `Receiver(scheme://...)` build these classes."""
    _SENDERS[scheme] = sender
    _RECEIVERS[scheme] = receiver


def _chosen(table: dict[str, Any], role: str, name: object) -> Any:
    scheme = scheme_of(name)
    try:
        return table[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in sorted(table))
        raise errors.UsageError(
            f"no {role} for {scheme}:// names (known: {known}, or a bare shared-memory name)"
        ) from None


def _subclass(
    cls: type, role: type, table: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> type:
    """The class to build: `cls` itself, or for the base `role` the one registered for the
    name's scheme, after checking that the arguments fit its signature."""
    if cls is not role:
        return cls
    chosen: type = _chosen(table, role.__name__, args[0] if args else kwargs.get("name"))
    _check_call(chosen, args, kwargs)
    return chosen


def _check_call(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """UsageError naming the option when `cls(*args, **kwargs)` does not fit its signature."""
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as exc:
        raise errors.UsageError(
            f"{cls.__name__}: {exc} (see help({cls.__module__.split('.')[0]}.channels."
            f"{cls.__name__}) for its options)"
        ) from None


class BaseSignature:
    """The `__signature__` of a base class users construct (Sender, Receiver, Publisher,
    Subscriber), whose `__new__(*args, **kwargs)` picks the transport: the parameters of the
    class a bare name builds (the one registered for shm), so `help()` and `inspect.signature`
    show them. None on the subclasses and on instances: inspect then reads their own
    `__init__` (as `_check_call` does, so each transport's options stay its own)."""

    def __init__(self, table: dict[str, Any]) -> None:
        self._table = table
        self._owner: type | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self._owner = owner

    def __get__(self, obj: object, owner: type | None = None) -> inspect.Signature | None:
        built = self._table.get("shm")
        if obj is not None or owner is not self._owner or built is None:
            return None
        return inspect.signature(built).replace(return_annotation=inspect.Signature.empty)


class Sender:
    """The writing end of a channel: `Sender(name)` connects to the channel's receiver.

    NAME (or `shm://NAME`) is a shared-memory channel (`ShmSender`); `tcp://HOST:PORT` and
    `ipc:///PATH` are network channels (`NetSender`). See those classes for the options.
    """

    scheme: ClassVar[str] = ""
    name: str
    __signature__ = BaseSignature(_SENDERS)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(_subclass(cls, Sender, _SENDERS, args, kwargs))

    def send(self, obj: Any, timeout: float | None = None) -> None:
        """Send `obj` as one message."""
        raise NotImplementedError

    def empty(
        self, shape: int | tuple[int, ...], dtype: Any = float, *, timeout: float | None = None
    ) -> np.ndarray:
        """A new uninitialised array to fill and send in the next message."""
        raise NotImplementedError

    def stats(self) -> Any:
        """Counters of this end."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def close(self, timeout: float = 1.0) -> None:
        """Mark the end of the stream and detach."""
        raise NotImplementedError

    async def asend(self, obj: Any, timeout: float | None = None) -> None:
        """`send(obj, timeout)` for asyncio: while the channel is full the task waits, the
        event loop does not. Cancelled while waiting, the message is not sent (a try already
        under way in the worker thread, at most `waiting.ASEND_SLICE` s, may still send it)."""
        await waiting.asend(self, obj, timeout)

    def _check_open(self) -> None:
        if self.closed:
            raise errors.Closed(f"sender of {self.name!r} is closed; create a new Sender")

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Sender:  # `async with`: close() does not wait on the peer
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a {type(self).__name__} is connected to its channel and cannot be pickled: pass "
            "the SenderFactory from zcser.channel() (or the channel name) to the process that "
            "sends"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {'closed' if self.closed else 'open'}>"


class Receiving:
    """What every receiving end (Receiver, Subscriber) shares: iteration until the stream
    ends, and asyncio / `zcser.wait` built on the `_wait_*` hooks (channels/waiting.py).
    Subclasses provide `recv(timeout, copy)`, `recv_message(timeout)` and the hooks."""

    def recv(self, timeout: float | None = None, copy: bool = False) -> Any:
        raise NotImplementedError

    def recv_message(self, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        """Every message until the stream ends (then the loop ends)."""
        recv: Callable[[], Any] = self.recv
        while True:
            try:
                value = recv()
            except errors.Closed:
                return
            yield value

    # -- asyncio and zcser.wait (channels/waiting.py) --------------------------------------------

    async def arecv(self, timeout: float | None = None, copy: bool = False) -> Any:
        """`recv()` for asyncio: awaits a message with the event loop's readers on the
        channel (no thread, no polling). Cancelled, it has taken nothing: the next call gets
        the message."""
        return await self._await(self.recv, timeout, copy)

    async def arecv_message(self, timeout: float | None = None) -> Any:
        """`recv_message()` for asyncio (see arecv)."""
        return await self._await(self.recv_message, timeout)

    async def _await(self, take: Callable[..., Any], timeout: float | None, *args: Any) -> Any:
        limit = waiting._check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            if self._wait_ready():
                try:
                    return take(0, *args)
                except errors.Timeout:
                    pass  # taken by another thread first, or not whole yet: wait again
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return take(0, *args)  # the channel's own Timeout, in its words
            await waiting.wait_readable(self, remaining)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages_async()

    async def _messages_async(self) -> AsyncIterator[Any]:
        while True:
            try:
                value = await self.arecv()
            except errors.Closed:
                return
            yield value

    def _wait_ready(self) -> bool:
        raise NotImplementedError

    def _wait_fds(self) -> list[Any]:
        raise NotImplementedError

    def _wait_arm(self) -> bool | None:
        """Before a sleep; False: the end is closing (not armed; report it as ready)."""
        return None

    def _wait_disarm(self) -> None:
        pass

    def _wait_woken(self) -> None:
        pass

    def _wait_backstop(self) -> float | None:
        return None


class Receiver(Receiving):
    """The reading end of a channel: `Receiver(name)` creates the channel.

    NAME (or `shm://NAME`) is a shared-memory channel (`ShmReceiver`); `tcp://HOST:PORT` and
    `ipc:///PATH` are network channels (`NetReceiver`). See those classes for the options.
    """

    scheme: ClassVar[str] = ""
    name: str
    __signature__ = BaseSignature(_RECEIVERS)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(_subclass(cls, Receiver, _RECEIVERS, args, kwargs))

    def recv(self, timeout: float | None = None, copy: bool = False) -> Any:
        """The next object."""
        raise NotImplementedError

    def recv_message(self, timeout: float | None = None) -> Any:
        """The next message with an explicit lifetime."""
        raise NotImplementedError

    def stats(self) -> Any:
        """Counters of this end."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Stop receiving and give the channel's resources back."""
        raise NotImplementedError

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Receiver:  # `async with`: close() does not wait on the peer
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a {type(self).__name__} owns its channel and cannot be pickled: create it in the "
            "reading process and pass the name (or a zcser.channel() SenderFactory) to the "
            "writer"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {'closed' if self.closed else 'open'}>"


# --- arguments shared by every transport ----------------------------------------------------------


def array_shape(shape: Any) -> tuple[int, ...]:
    """`shape` as a tuple of sizes >= 0 (UsageError otherwise)."""
    try:
        if isinstance(shape, (tuple, list)):
            dims = tuple(operator.index(d) for d in shape)
        else:
            dims = (operator.index(shape),)
    except TypeError:
        raise errors.UsageError(f"empty() needs a shape of ints, not {shape!r}") from None
    if any(d < 0 for d in dims):
        raise errors.UsageError(f"empty() needs sizes >= 0, not {dims}")
    return dims


def plain_dtype(dtype: Any) -> np.dtype[Any]:
    """`dtype` as a numpy dtype without Python objects (UsageError otherwise): empty() memory
    is sent as bytes, and object pointers mean nothing in another process."""
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
    except TypeError as exc:
        raise errors.UsageError(f"empty() needs a numpy dtype, not {dtype!r} ({exc})") from None
    if dt.hasobject:
        raise errors.UsageError(f"empty() needs a plain dtype, not {dt} (objects hold pointers)")
    return dt


class Gate:
    """Serialises the calls of one channel end across threads, with no lock while only the
    thread that made the end uses it.

    Why not always a lock: releasing a lock is a call, and CPython runs signal handlers right
    after a call returns. A KeyboardInterrupt raised there would surface from `send()` after the
    message went out (the caller then sends it again) or from `recv()` after it was taken. The
    ends are written so that a signal can only land where it loses and duplicates nothing; the
    lock's release would add such a point after the work is done.

    Protocol (sequentially consistent under the GIL): the owner stores `busy = True`, then loads
    `shared`; another thread stores `shared = True`, then waits until `busy` is False. Either
    the owner sees `shared` and takes the lock, or the other thread waits for the owner's
    unlocked call to end. Once shared, every call takes the lock (and the window above exists
    for the main thread's calls in that mode only).
    """

    __slots__ = ("busy", "lock", "owner", "shared")

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.busy = False
        self.shared = False
        self.lock = threading.Lock()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` serialised with every other call through this gate."""
        if threading.get_ident() == self.owner:
            self.busy = True
            if not self.shared:
                try:
                    return fn(*args)
                finally:
                    self.busy = False
            self.busy = False
        with self.enter_shared():
            return fn(*args)

    def attempt(self, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """(True, `fn(*args)`) serialised as `run` does, or (False, None) at once when a call
        runs in another thread now (what `zcser.wait` does instead of waiting for it)."""
        if threading.get_ident() == self.owner:
            self.busy = True
            if not self.shared:
                try:
                    return True, fn(*args)
                finally:
                    self.busy = False
            self.busy = False
        self.shared = True
        if self.busy or not self.lock.acquire(blocking=False):
            return False, None
        try:
            return True, fn(*args)
        finally:
            self.lock.release()

    def hold(
        self, timeout: float | None, what: str, error: type[errors.Timeout] = errors.Timeout
    ) -> float | None:
        """Take the lock (locked mode) within `timeout` s (None: however long it takes); the
        time left of `timeout`. `error` (Timeout, or BufferFull for a send: nothing was sent)
        naming `what` when another thread's call kept the gate all that time: a call's timeout
        covers its wait for the gate too."""
        self.shared = True
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0001
        while self.busy:
            if deadline is not None and time.monotonic() >= deadline:
                raise _gate_timeout(error, what, timeout)
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        if deadline is None:
            self.lock.acquire()
            return None
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise _gate_timeout(error, what, timeout)
        return max(0.0, deadline - time.monotonic())

    def in_use(self) -> bool:
        """Whether a call is running now (in any thread)."""
        return self.busy or self.lock.locked()

    def enter_shared(self) -> threading.Lock:
        """Switch to (or stay in) locked mode; the lock, once no unlocked call is running."""
        self.shared = True
        pause = 0.0001
        while self.busy:
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        return self.lock


def _gate_timeout(error: type[errors.Timeout], what: str, timeout: float | None) -> errors.Timeout:
    return error(
        f"{what} within {timeout} s: another thread was using this end all that time (its "
        "calls are serialised; give that thread's call a timeout, or close the end to end it)"
    )
