"""The loader's one transport seam: a shared-memory channel per worker, read in order or by
whichever worker is ready.

Rules of this file:
- the main process owns every ring (one `Receiver` per worker, senders=1); a worker gets the
  picklable `SenderFactory` of its own ring and nothing else;
- `recv(worker, timeout)` reads the next message of one worker (torch hands batch indices to
  workers round-robin, so reading the owner of the next index gives torch's in_order order);
  `recv_any(workers, timeout)` reads the first ready one (in_order=False);
- a worker that died or closed its end raises `WorkerGone` here, one class for the iterator to
  turn into torch's error; the iterator, not this file, knows processes and exit codes;
- `close()` removes every ring's names: nothing stays in /dev/shm, live views stay valid.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from zcser.channels import Receiver, SenderFactory, channel, wait
from zcser.codec import Codec
from zcser.errors import Closed, PeerDead, Timeout

__all__ = ["WorkerChannels", "WorkerGone"]


class WorkerGone(Exception):
    """The worker's end of its channel is gone (died or closed)."""

    def __init__(self, worker: int, cause: BaseException) -> None:
        super().__init__(worker, cause)
        self.worker = worker
        self.cause = cause


class WorkerChannels:
    """One ring per worker; messages are `(kind, idx, payload)` tuples (see worker.py)."""

    def __init__(self, count: int, capacity: int | None, codec: Codec | None, copy: bool) -> None:
        self.copy = copy
        self.factories: list[SenderFactory] = []
        self.receivers: list[Receiver] = []
        try:
            for _ in range(count):
                factory, receiver = channel(capacity=capacity, codec=codec)
                self.factories.append(factory)
                self.receivers.append(receiver)
        except BaseException:
            self.close()
            raise

    def recv(self, worker: int, timeout: float) -> Any:
        """The next message of `worker`; zcser's Timeout after `timeout` s."""
        try:
            return self.receivers[worker].recv(timeout=timeout, copy=self.copy)
        except (PeerDead, Closed) as exc:
            raise WorkerGone(worker, exc) from exc

    def recv_any(self, workers: Sequence[int], timeout: float) -> tuple[int, Any]:
        """(worker, message) from the first of `workers` with a message ready."""
        deadline = time.monotonic() + timeout
        receivers = [self.receivers[worker] for worker in workers]
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            ready = wait(receivers, timeout=remaining)  # one sleep on every worker's ring
            if not ready:
                raise Timeout(f"no worker of {list(workers)} sent within {timeout} s")
            for receiver in ready:
                worker = workers[receivers.index(receiver)]
                try:
                    return worker, self.recv(worker, 0)
                except Timeout:
                    continue

    def pinned(self, worker: int) -> tuple[int, int]:
        """(bytes held by live views of `worker`'s ring, its capacity)."""
        stats = self.receivers[worker].stats()
        return stats.bytes_pinned, stats.capacity

    def close(self) -> None:
        for receiver in self.receivers:
            receiver.close()
