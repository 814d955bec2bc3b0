"""A pool of producer processes feeding one consumer with batches of torch tensors.

One Receiver takes every producer: `zcser.channel(senders=N)` gives each connected Sender a
shared-memory ring of its own, and `recv` takes the next batch of whichever producer has one,
in turn (`msg.sender` says whose). Producers build each batch directly inside the next
shared-memory frame (`Sender.empty` + `torch.from_numpy`), so a batch crosses the process
boundary with no copy at all; the consumer's tensors are read-only views into its producer's
ring, and each frame goes back to that producer once the consumer drops the batch. The stream
ends once all N producers have closed.
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
    with make_sender() as tx:  # takes a free place (a ring) of the receiver
        for b in range(batches):
            x = torch.from_numpy(tx.empty((BATCH, CHANNELS, SIDE, SIDE), np.float32))
            x.fill_(rank * 1000 + b)  # stands in for decoding and augmenting images
            y = torch.from_numpy(tx.empty(BATCH, np.int64))
            y.fill_(rank)
            tx.send({"x": x, "y": y, "rank": rank, "batch": b})


def ring_path(rx: zcser.Receiver, sender: int) -> str:
    """Where sender `sender`'s ring lives: NAME--i, or NAME itself for senders=1
    (docs/protocol.md, "Pools")."""
    return f"/dev/shm/{rx.name}" if rx.senders == 1 else f"/dev/shm/{rx.name}--{sender}"


def consume(rx: zcser.Receiver, producers: int, batches: int) -> int:
    """Every batch of every producer, until the stream ends; returns the count."""
    seen = bad = outside = out_of_order = moved = 0
    last: dict[int, int] = {}  # rank -> last batch number
    place: dict[int, int] = {}  # rank -> its place (msg.sender; a later producer may reuse it)
    while True:
        try:
            msg = rx.recv_message(timeout=TIMEOUT)
        except zcser.errors.Closed:  # every producer closed and every batch was read
            break
        with msg:
            batch = msg.value
            x, rank = batch["x"], batch["rank"]
            ok = isinstance(x, torch.Tensor) and x.shape == (BATCH, CHANNELS, SIDE, SIDE)
            ok = ok and float(x.min()) == float(x.max()) == rank * 1000 + batch["batch"]
            bad += not (ok and bool((batch["y"] == rank).all()))
            outside += inside(x.data_ptr(), ring_path(rx, msg.sender)) is False
            out_of_order += batch["batch"] != last.get(rank, -1) + 1
            last[rank] = batch["batch"]
            moved += place.setdefault(rank, msg.sender) != msg.sender
            seen += 1
            del batch, x  # the frame goes back to the producer as the block ends
    check(bad == 0, "every batch holds the values its producer wrote")
    check(outside == 0, "every batch is read in place, inside its sender's ring")
    check(out_of_order == 0, "each producer's batches arrive in the order it sent them")
    check(moved == 0, "msg.sender stays the same for every batch of a producer")
    check(seen == producers * batches, f"all {producers * batches} batches arrived")
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    # One receiver, a 16 MiB ring per producer (reserved when it connects).
    make_sender, rx = zcser.channel(senders=args.producers, capacity=16 << 20)
    procs = [
        ctx.Process(target=producer, args=(rank, make_sender, args.batches))
        for rank in range(args.producers)
    ]
    try:
        for proc in procs:
            proc.start()
        start = time.perf_counter()
        seen = consume(rx, args.producers, args.batches)
        elapsed = time.perf_counter() - start
        mib = seen * BATCH * CHANNELS * SIDE * SIDE * 4 / (1 << 20)
        print(
            f"{seen} batches ({mib:.0f} MiB) from {args.producers} producers in {elapsed:.2f} s "
            "(with start-up)"
        )
        s = rx.stats()
        print(
            f"  {s.messages} messages, {s.senders_closed} senders closed, {s.senders_lost} lost, "
            f"{s.frames_pinned} frames pinned"
        )
        check(s.senders_lost == 0 and s.frames_pinned == 0, "no producer lost, no frame pinned")
    finally:
        for proc in procs:
            proc.join(TIMEOUT)
            if proc.is_alive():
                proc.kill()
        rx.close()
    check(all(proc.exitcode == 0 for proc in procs), "every producer exited cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
