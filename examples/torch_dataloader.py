"""`zcser.torch.DataLoader` on a dataset kept in a zcser snapshot, with spawn workers.

The dataset holds arrays from `zcser.load(path)`: they go to the spawn workers as references to
the file (each worker maps it; nothing is copied), the workers stack each batch straight into
their shared-memory ring, and the training loop gets tensors over that memory. The batches are
checked against `torch.utils.data.DataLoader` with the same arguments and seed, and the script
checks that the main process opens no descriptor per batch and leaves nothing in /dev/shm.
Run: `python examples/torch_dataloader.py [--samples 2048] [--epochs 3]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from _shm_check import check

import zcser
from zcser.torch import DataLoader


class SnapshotImages(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Images and labels from a snapshot; pickles (for spawn workers) as a file reference."""

    def __init__(self, path: str) -> None:
        data = zcser.load(path)
        self.images, self.labels = data["images"], data["labels"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[i]).float().div_(255)
        return image, int(self.labels[i])


def _fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd")) if os.path.isdir("/proc") else 0


def _ring_of(address: int) -> str | None:
    if not os.path.exists("/proc/self/maps"):
        return None
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5].strip() if len(fields) == 6 else ""
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024, help="images in the dataset")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to run (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "images.zcs")
        rng = np.random.default_rng(0)
        zcser.save(
            {
                "images": rng.integers(0, 256, (args.samples, 3, 64, 64), dtype=np.uint8),
                "labels": rng.integers(0, 10, args.samples, dtype=np.int64),
            },
            path,
        )
        dataset = SnapshotImages(path)
        options = dict(batch_size=32, shuffle=True, num_workers=args.workers,
                       multiprocessing_context="spawn", persistent_workers=True)  # fmt: skip
        ours = DataLoader(dataset, generator=torch.Generator().manual_seed(7), **options)
        theirs = torch.utils.data.DataLoader(
            dataset, generator=torch.Generator().manual_seed(7), **options
        )
        start = time.perf_counter()
        batches = 0
        for epoch in range(args.epochs):
            # torch's batches, cloned: each of torch's own keeps a descriptor while alive
            want = [(x.clone(), y.clone()) for x, y in theirs]
            fds = _fds()
            for i, (images, labels) in enumerate(ours):
                if i == 0 and epoch == 0:
                    where = _ring_of(images.data_ptr())
                    print(f"first batch: {tuple(images.shape)} {images.dtype} in {where}")
                    if where is not None:
                        check(where.startswith("/dev/shm/"), "batches are tensors in shared memory")
                w_images, w_labels = want[i]
                assert torch.equal(images, w_images) and torch.equal(labels, w_labels), (epoch, i)
                batches += 1
            check(i + 1 == len(want), f"epoch {epoch}: the same {i + 1} batches as torch's")
            if epoch:  # the first epoch starts the workers: their rings and pipes stay open
                check(_fds() == fds, f"epoch {epoch}: no new descriptors in the main process")
        print(f"{batches} batches in {time.perf_counter() - start:.2f} s (both loaders)")
        del ours, theirs, images, labels, want
    mine = f"zcser-{os.getpid()}-"  # the rings this process made
    left = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    check(not [n for n in left if n.startswith(mine)], "nothing left in /dev/shm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
