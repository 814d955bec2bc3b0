"""Benchmark section "dataloader": zcser.torch.DataLoader next to torch.utils.data.DataLoader,
same dataset, workers (2) and batch size, measured in one run.

(a) stacked batches of 64 x 3 x 224 x 224 float32 from an in-memory dataset: batches/s;
(b) batches that are lists of 256 tensors of different sizes: batches/s, and the main
    process's open descriptors before and after;
(c) a snapshot dataset (1 GB; 128 MB with --quick) read whole by 2 spawn workers: each worker's
    private (anonymous) memory above that of a worker given a tiny dataset, next to the same
    data as a numpy dataset (pickled whole into each worker).
Rates skip the first batches (worker start-up); the ring's pages are reserved before timing.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

Row = dict[str, Any]
WORKERS = 2


class Images:
    """(a): samples of 3 x 224 x 224 float32 held in memory; item = (image, label)."""

    def __init__(self, n: int) -> None:
        import torch

        self.data = torch.rand(n, 3, 224, 224)

    def __len__(self) -> int:
        return int(self.data.shape[0]) * 64

    def __getitem__(self, i: int) -> Any:
        return self.data[i % self.data.shape[0]], i


class Targets:
    """(b): detection-style targets, one small tensor of a different size per sample."""

    def __len__(self) -> int:
        return 256 * 64

    def __getitem__(self, i: int) -> Any:
        import torch

        return torch.full((i % 50 + 1, 4), float(i))


def as_list(batch: list[Any]) -> list[Any]:
    return batch


class Rows:
    """(c): rows of a 2-D array (a snapshot's mapping, or a plain numpy array)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, i: int) -> Any:
        return float(self.data[i].sum())


def _rate(loader: Any, skip: int, count: int) -> float:
    it = iter(loader)
    for _ in range(skip):
        next(it)
    start = time.perf_counter()
    for _ in range(count):
        next(it)
    rate = count / (time.perf_counter() - start)
    del it
    return rate


def _fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def _loaders(**kwargs: Any) -> tuple[Any, Any]:
    import torch.utils.data

    from zcser.torch import DataLoader

    return torch.utils.data.DataLoader(**kwargs), DataLoader(**kwargs)


def _row(case: str, zcser: float, torch: float, unit: str, note: str = "") -> Row:
    return {
        "case": case,
        "zcser": zcser,
        "torch": torch,
        "ratio": zcser / torch if torch else None,
        "unit": unit,
        "note": note,
    }


def _bench_stacked(quick: bool) -> Row:
    count = 6 if quick else 20
    dataset = Images(64)
    torch_loader, zcser_loader = _loaders(dataset=dataset, batch_size=64, num_workers=WORKERS)
    return _row(
        "(a) 64x3x224x224 float32 stacked batches",
        _rate(zcser_loader, 2, count),
        _rate(torch_loader, 2, count),
        "batches/s",
    )


def _bench_ragged(quick: bool) -> list[Row]:
    count = 8 if quick else 40
    kwargs = dict(dataset=Targets(), batch_size=256, num_workers=WORKERS, collate_fn=as_list)
    torch_loader, zcser_loader = _loaders(**kwargs)
    torch_before = _fds()
    torch_rate = _rate(torch_loader, 2, count)
    torch_fds = _fds() - torch_before
    zcser_before = _fds()
    zcser_rate = _rate(zcser_loader, 2, count)
    zcser_fds = _fds() - zcser_before
    return [
        _row("(b) lists of 256 tensors of different sizes", zcser_rate, torch_rate, "batches/s"),
        {
            "case": "(b) main-process descriptors after the epoch, minus before",
            "zcser": zcser_fds,
            "torch": torch_fds,
            "unit": "fds",
            "note": "",
        },
    ]


def _anon_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def _worker_anon(loader_cls: Any, data: Any) -> list[int]:
    """RssAnon (KiB) of each spawn worker after it read all of its rows (the workers are
    persistent, so they are still there to be measured)."""
    loader = loader_cls(
        Rows(data),
        batch_size=16,
        num_workers=WORKERS,
        multiprocessing_context="spawn",
        persistent_workers=True,
    )
    it = iter(loader)
    for _ in it:
        pass
    sizes = [_anon_kib(w.pid) for w in it._workers]
    del it, loader
    return sizes


def _bench_snapshot_memory(quick: bool) -> list[Row]:
    import torch.utils.data

    import zcser
    from zcser.torch import DataLoader

    total = (128 if quick else 1024) << 20
    row_bytes = 1 << 20
    rows = []
    with tempfile.TemporaryDirectory(prefix="zcser-bench-") as tmp:
        path = Path(tmp) / "dataset.zcs"
        data = np.random.default_rng(0).random((total // row_bytes, row_bytes // 4), np.float32)
        zcser.save({"rows": data}, path, checksum=False)
        tiny = np.zeros((WORKERS * 16, 4), np.float32)
        mapped = zcser.load(path)["rows"]
        for name, loader_cls in (("zcser", DataLoader), ("torch", torch.utils.data.DataLoader)):
            base = max(_worker_anon(loader_cls, tiny))
            snapshot = max(_worker_anon(loader_cls, mapped)) - base
            plain = max(_worker_anon(loader_cls, data)) - base
            rows.append(
                {
                    "case": f"(c) {total >> 20} MB dataset, 2 spawn workers, {name} DataLoader: "
                    "worker private memory growth",
                    "snapshot_pct": 100 * snapshot * 1024 / total,
                    "numpy_pct": 100 * plain * 1024 / total,
                    "unit": "% of the dataset",
                    "note": "max over workers, RssAnon above a worker with a tiny dataset",
                }
            )
        del mapped
    return rows


def bench_dataloader(quick: bool) -> list[Row]:
    """(a), (b), (c): see the module docstring."""
    return [_bench_stacked(quick), *_bench_ragged(quick), *_bench_snapshot_memory(quick)]
