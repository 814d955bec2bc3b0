"""Several producer processes feed a training loop with torch batches: zcser vs DataLoader.

Both pipelines use the same dataset code, batch size and number of worker processes:

- zcser: each producer owns one channel. It allocates the batch *inside the next shared-memory
  frame* (`Sender.empty`), writes every sample straight into it, and sends: no copy on either
  side. The training loop receives tensors that view shared memory (checked by address).
- `torch.utils.data.DataLoader(num_workers=N)`: workers build samples, collate them into a
  shared-memory batch (one copy) and pass it back through a queue.

The training loop is identical: read the batch, run a small model forward/backward, step.
Reported, from the same run: time to the first batch (zcser's producers are `spawn`ed and import
torch; DataLoader forks), then batches/s, how long the loop waited for data per batch and how long
a training step took (medians). On a small machine both are bound by *making* the samples; the
transport shows in the wait per batch. Run: `python examples/ml_handoff.py [--batches 60]`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from _shm_check import check, inside
from torch.utils.data import DataLoader, Dataset

import zcser

TIMEOUT = 60.0
CLASSES = 10


class Synthetic(Dataset[tuple[torch.Tensor, int]]):
    """Deterministic images: sample i is (i % 251) / 251 plus one of 16 fixed noise patterns."""

    def __init__(self, size: int, hw: int) -> None:
        self.size = size
        self.shape = (3, hw, hw)
        self.noise = torch.rand((16, *self.shape), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.size

    def fill(self, out: torch.Tensor, i: int) -> int:
        """Write sample i into `out` (the 'decode + augment' step) and return its label."""
        torch.add(self.noise[i % 16], (i % 251) / 251, out=out)
        return i % CLASSES

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        out = torch.empty(self.shape)
        return out, self.fill(out, i)


def expected_first_pixel(dataset: Synthetic, indices: range) -> torch.Tensor:
    """x[:, 0, 0, 0] of the batch holding `indices`, computed here for the checks."""
    return torch.tensor([float(dataset.noise[i % 16, 0, 0, 0]) + (i % 251) / 251 for i in indices])


def producer(
    make_tx: zcser.SenderFactory, worker: int, workers: int, batches: int, batch: int, hw: int
) -> None:
    """Build batches worker, worker + workers, ... directly in shared memory and send them."""
    torch.set_num_threads(1)
    dataset = Synthetic(batches * batch, hw)
    with make_tx() as tx:
        for b in range(worker, batches, workers):
            x = torch.from_numpy(tx.empty((batch, *dataset.shape), np.float32))
            y = torch.empty(batch, dtype=torch.int64)
            for j, i in enumerate(range(b * batch, (b + 1) * batch)):
                y[j] = dataset.fill(x[j], i)
            tx.send({"batch": b, "x": x, "y": y})


def zcser_batches(args: argparse.Namespace) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Start one producer per channel and yield their batches in order."""
    ctx = mp.get_context("spawn")
    batch_bytes = args.batch * 3 * args.hw * args.hw * 4
    receivers, procs = [], []
    try:
        for w in range(args.workers):
            name = f"{args.name}-{w}"
            # Two batches in flight per producer, like DataLoader's default prefetch_factor=2.
            make_tx, rx = zcser.channel(name, capacity=2 * batch_bytes + (1 << 20))
            receivers.append(rx)
            proc = ctx.Process(
                target=producer,
                args=(make_tx, w, args.workers, args.batches, args.batch, args.hw),
            )
            proc.start()
            procs.append(proc)
        for b in range(args.batches):
            rx = receivers[b % args.workers]
            msg = rx.recv(timeout=TIMEOUT)
            if msg["batch"] != b:
                raise SystemExit(f"FAILED: expected batch {b}, got {msg['batch']}")
            if b == 0:
                where = inside(msg["x"].data_ptr(), f"/dev/shm/{rx.name}")
                if where is not None:
                    check(where, "zcser: the batch tensor lives in the channel's shared memory")
            yield msg["x"], msg["y"]
            del msg
        for rx in receivers:
            try:
                rx.recv(timeout=TIMEOUT)
            except zcser.errors.Closed:
                continue
            raise SystemExit("FAILED: a producer sent more batches than asked")
    finally:
        for proc in procs:
            proc.join(TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for rx in receivers:
            rx.close()
    check(all(p.exitcode == 0 for p in procs), "zcser: every producer exited cleanly")


def loader_batches(args: argparse.Namespace) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The same dataset through torch's DataLoader with worker processes."""
    dataset = Synthetic(args.batches * args.batch, args.hw)
    return DataLoader(dataset, batch_size=args.batch, num_workers=args.workers, shuffle=False)


def train(
    name: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], args: Any
) -> dict[str, float]:
    """The training loop both pipelines feed; returns timings, checks every batch's content."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(3 * 16, CLASSES)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reference = Synthetic(args.batches * args.batch, args.hw)
    waits: list[float] = []
    steps: list[float] = []
    bad = 0
    start = time.perf_counter()
    first = 0.0
    ready = start
    for b, (x, y) in enumerate(batches):
        got = time.perf_counter()
        if b == 0:
            first = got - start
        else:
            waits.append(got - ready)
        indices = range(b * args.batch, (b + 1) * args.batch)
        bad += int(not torch.equal(y, torch.tensor([i % CLASSES for i in indices])))
        bad += int(not torch.allclose(x[:, 0, 0, 0], expected_first_pixel(reference, indices)))
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(time.perf_counter() - t0)
        del x, y
        ready = time.perf_counter()
    # `ready` is when the last step ended: producer shutdown after it is not counted.
    check(bad == 0, f"{name}: every batch has the expected labels and pixels")
    check(len(waits) == args.batches - 1, f"{name}: all {args.batches} batches arrived")
    steady = ready - start - first
    return {
        "first_batch_s": first,
        "batches_per_s": (args.batches - 1) / steady if steady > 0 else float("nan"),
        "median_wait_ms": statistics.median(waits) * 1e3 if waits else float("nan"),
        "median_step_ms": statistics.median(steps) * 1e3,
        "loss": float(loss.detach()),
    }


def main() -> int:
    """Run both pipelines one after the other and print their numbers side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="batches per pipeline")
    parser.add_argument("--batch", type=int, default=32, help="samples per batch")
    parser.add_argument("--hw", type=int, default=128, help="image height and width")
    parser.add_argument("--workers", type=int, default=2, help="producer / worker processes")
    parser.add_argument("--name", default=f"zcex-ml-{os.getpid()}", help="channel name prefix")
    args = parser.parse_args()
    # The loop shares the CPUs with the producers: more torch threads than free cores makes
    # every step wait on busy cores (same setting for both pipelines).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - args.workers))
    mb = args.batch * 3 * args.hw * args.hw * 4 / 1e6
    print(
        f"{args.batches} batches of {args.batch} x 3 x {args.hw} x {args.hw} float32 ({mb:.1f} MB)"
    )
    ours = train("zcser", zcser_batches(args), args)
    theirs = train("DataLoader", loader_batches(args), args)
    print(f"{'':24}{'zcser':>12}{'DataLoader':>12}")
    for key in ("first_batch_s", "batches_per_s", "median_wait_ms", "median_step_ms"):
        print(f"{key:24}{ours[key]:12.3f}{theirs[key]:12.3f}")
    ratio = ours["batches_per_s"] / theirs["batches_per_s"]
    print(f"steady-state throughput zcser / DataLoader: {ratio:.2f}x (one run, noisy machine)")
    check(abs(ours["loss"] - theirs["loss"]) < 1e-4, "both pipelines trained the same model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
