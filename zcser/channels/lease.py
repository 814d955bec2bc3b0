"""Frame leases: a received frame stays pinned while any view decoded from it is alive.

Every zero-copy view the codec hands out keeps its lease alive through its base chain (the
codec's `owner`); when the last view dies the lease dies and releases the frame, so the writer
can never overwrite memory a live view can see. `Message` adds explicit release on top.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Protocol

from zcser.errors import UsageError


class _Releasable(Protocol):
    def release(self) -> None: ...


class Lease:
    """Pins one transport frame; releases it when garbage-collected (no views left)."""

    __slots__ = ("__weakref__", "_frame")

    def __init__(self, frame: _Releasable | None) -> None:
        self._frame: _Releasable | None = frame

    def __del__(self) -> None:
        frame = getattr(self, "_frame", None)  # None too when __init__ was interrupted
        self._frame = None
        if frame is not None:
            with contextlib.suppress(BufferError):
                frame.release()  # if it is still exported, the frame's own GC release applies


_RELEASED: Any = object()


class Message:
    """One received message with an explicit lifetime: `value` is the decoded object.

    `release()` (or leaving the `with` block) frees the frame at once; it raises BufferError while
    any view taken from `value` is still alive, and the frame is then freed when the last one
    dies. After release, `value` is gone from the message (use copy=True for private objects).
    `missed`: messages a "drop" or "latest" subscriber skipped right before this one (0 on
    channels).
    """

    __slots__ = ("_lease", "_value", "missed", "nbytes", "sender", "sequence")

    def __init__(
        self,
        value: Any,
        lease: Lease | None,
        sequence: int,
        nbytes: int,
        sender: int = 0,
        missed: int = 0,
    ) -> None:
        self._value = value
        self.missed = missed
        self._lease = weakref.ref(lease) if lease is not None else None
        self.sequence = sequence
        self.nbytes = nbytes
        self.sender = sender
        """Which sender sent it: its place in the receiver (0 .. senders-1), the same for
        every message of a sender while it is connected; a later sender may reuse it."""

    @property
    def value(self) -> Any:
        if self._value is _RELEASED:
            raise UsageError(
                f"message {self.sequence} was released; read msg.value inside the `with` block"
            )
        return self._value

    @property
    def released(self) -> bool:
        return self._value is _RELEASED

    @property
    def pinned(self) -> bool:
        """True while the frame is held (by this message or by views taken from it)."""
        return self._lease is not None and self._lease() is not None

    def release(self) -> None:
        """Free the frame now. BufferError if views taken from `value` are still alive."""
        self._value = _RELEASED
        if self._lease is not None and self._lease() is not None:
            raise BufferError(
                f"message {self.sequence} is still in use: an array or view taken from its value "
                "is alive. Drop it (or receive with copy=True); its frame is freed when the last "
                "view is garbage-collected."
            )

    def __enter__(self) -> Message:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.release()
        else:
            with contextlib.suppress(BufferError):  # never mask the exception in flight
                self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else f"{self.nbytes} bytes"
        return f"<Message seq={self.sequence} {state}>"
