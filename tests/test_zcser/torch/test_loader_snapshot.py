"""A dataset built on a zcser snapshot goes to spawn workers by reference: each worker maps the
file, its private memory does not grow with the dataset (a numpy dataset is copied whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures.loader_data import SnapshotRows

import zcser
from zcser.torch import DataLoader

MB = 1 << 20
SIZE = 64 * MB


def _anon_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def _worker_memory(rows: Any) -> tuple[list[float], list[int]]:
    """(every item, each spawn worker's RssAnon in KiB after reading all of its rows)."""
    loader = DataLoader(SnapshotRows(rows), batch_size=8, num_workers=2, capacity=8 * MB,
                        multiprocessing_context="spawn", persistent_workers=True)  # fmt: skip
    it = iter(loader)
    items = [float(x) for batch in it for x in batch]
    sizes = [_anon_kib(w.pid) for w in it._workers]
    del it, loader
    return items, sizes


@pytest.mark.parametrize("kind", ["snapshot", "numpy"])
def test_snapshot_dataset_is_not_copied_into_spawn_workers(tmp_path: Path, kind: str) -> None:
    data = np.random.default_rng(0).random((SIZE // MB, MB // 4), np.float32)
    rows = data
    if kind == "snapshot":
        zcser.save({"rows": data}, tmp_path / "rows.zcs")
        rows = zcser.load(tmp_path / "rows.zcs")["rows"]
    _, base = _worker_memory(np.zeros((16, 4), np.float32))
    items, sizes = _worker_memory(rows)
    want = torch.from_numpy(data).double().sum(dim=1)
    np.testing.assert_allclose(items, want.numpy(), rtol=1e-4)
    growth = [(kib - max(base)) * 1024 / SIZE for kib in sizes]
    if kind == "snapshot":
        assert max(growth) < 0.05, growth
    else:  # the control: pickled whole into each worker
        assert min(growth) > 0.9, growth
