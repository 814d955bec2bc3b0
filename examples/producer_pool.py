"""A pool of producer processes feeding one consumer with batches of torch tensors.

ZeroBuffer rings have exactly one writer, so each producer gets its own channel; the consumer
owns every Receiver and takes batches round-robin. Producers build each batch directly inside
the next shared-memory frame (`Sender.empty` + `torch.from_numpy`), so a batch crosses the
process boundary with no copy at all; the consumer's tensors are read-only views into shared
memory, and each frame goes back to its producer once the consumer drops the batch.
Run: python examples/producer_pool.py [--producers 3] [--batches 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
import torch
from _shm_check import check, inside

import zcser

BATCH, CHANNELS, SIDE = 32, 3, 64
TIMEOUT = 30.0


def producer(rank: int, make_sender: zcser.SenderFactory, batches: int) -> None:
    """Fill `batches` batches in place and send them; every value encodes (rank, batch)."""
    with make_sender() as tx:
        for b in range(batches):
            x = torch.from_numpy(tx.empty((BATCH, CHANNELS, SIDE, SIDE), np.float32))
            x.fill_(rank * 1000 + b)  # stands in for decoding and augmenting images
            y = torch.from_numpy(tx.empty(BATCH, np.int64))
            y.fill_(rank)
            tx.send({"x": x, "y": y, "rank": rank, "batch": b})


def consume(receivers: list[zcser.Receiver], batches: int) -> int:
    """Round-robin over the producers' channels until every one has closed; returns the count."""
    live = list(receivers)
    seen = 0
    bad = 0
    outside = 0
    while live:
        for rx in list(live):
            try:
                msg = rx.recv(timeout=TIMEOUT)
            except zcser.errors.Closed:
                live.remove(rx)
                continue
            x, rank = msg["x"], msg["rank"]
            ok = isinstance(x, torch.Tensor) and x.shape == (BATCH, CHANNELS, SIDE, SIDE)
            ok = ok and float(x.min()) == float(x.max()) == rank * 1000 + msg["batch"]
            bad += not (ok and bool((msg["y"] == rank).all()))
            outside += inside(x.data_ptr(), f"/dev/shm/{rx.name}") is False
            seen += 1
            del msg, x  # the frame goes back to the producer here
    check(bad == 0, "every batch holds the values its producer wrote")
    check(outside == 0, "every batch is read in place, inside its channel's shared memory")
    check(seen == len(receivers) * batches, f"all {len(receivers) * batches} batches arrived")
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    pairs = [zcser.channel(capacity=16 << 20) for _ in range(args.producers)]
    procs = [
        ctx.Process(target=producer, args=(rank, make_sender, args.batches))
        for rank, (make_sender, _) in enumerate(pairs)
    ]
    receivers = [rx for _, rx in pairs]
    try:
        for proc in procs:
            proc.start()
        start = time.perf_counter()
        seen = consume(receivers, args.batches)
        elapsed = time.perf_counter() - start
        mib = seen * BATCH * CHANNELS * SIDE * SIDE * 4 / (1 << 20)
        print(
            f"{seen} batches ({mib:.0f} MiB) from {args.producers} producers in {elapsed:.2f} s (with start-up)"
        )
        for rank, rx in enumerate(receivers):
            s = rx.stats()
            print(f"  producer {rank}: {s.messages} messages, {s.frames_pinned} frames pinned")
    finally:
        for proc in procs:
            proc.join(TIMEOUT)
            if proc.is_alive():
                proc.kill()
        for rx in receivers:
            rx.close()
    check(all(proc.exitcode == 0 for proc in procs), "every producer exited cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
