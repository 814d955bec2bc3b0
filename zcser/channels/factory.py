"""`zcser.channel()`: a receiver here and a picklable recipe for its sender elsewhere."""

from __future__ import annotations

import os
import secrets
import warnings
from typing import Any

from zcser.channels.base import Receiver, Sender
from zcser.codec import Codec

__all__ = ["SenderFactory", "channel"]


class SenderFactory:
    """A picklable recipe for the Sender of one channel: pass it to a process (any start
    method), call it there. Carries the name and the codec's configuration, not the codec."""

    def __init__(self, name: str, codec: Codec | None = None, **options: Any) -> None:
        self.name = name
        self.options = options
        self._codec: tuple[Any, ...] | None = None
        if codec is not None:
            self._codec = (
                codec.threshold,
                codec.trusted,
                codec.checksum,
                codec.ref,
                dict(codec._types),
            )

    def codec(self) -> Codec:
        """A fresh Codec configured like the one given (same classes under the same names)."""
        if self._codec is None:
            return Codec()
        threshold, trusted, checksum, ref, types = self._codec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the trusted-mode warning was shown at creation
            codec = Codec(threshold=threshold, trusted=trusted, checksum=checksum, ref=ref)
        for type_name, cls in types.items():
            codec.register(cls, name=type_name)
        return codec

    def __call__(self) -> Sender:
        sender: Sender = Sender(self.name, self.codec(), **self.options)
        return sender

    def __repr__(self) -> str:
        return f"<SenderFactory {self.name!r}>"


def channel(
    name: str | None = None,
    capacity: int | None = None,
    codec: Codec | None = None,
    *,
    senders: int = 1,
    **sender_options: Any,
) -> tuple[SenderFactory, Receiver]:
    """Create a channel here (the Receiver) and a picklable factory for its Sender:

    ```
    make_tx, rx = zcser.channel()
    Process(target=producer, args=(make_tx,)).start()   # producer: tx = make_tx(); tx.send(...)
    obj = rx.recv()
    ```

    `senders=N`: a pool; call the factory in up to N processes at once (see ShmReceiver). The
    stream, and `for obj in rx`, ends once N senders have closed (or died).
    """
    if name is None:
        name = f"zcser-{os.getpid()}-{secrets.token_hex(4)}"
    if senders == 1:
        receiver = Receiver(name, capacity, codec)
    else:
        receiver = Receiver(name, capacity, codec, senders=senders)
    return SenderFactory(receiver.name, codec, **sender_options), receiver
