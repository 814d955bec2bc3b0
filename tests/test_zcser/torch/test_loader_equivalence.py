"""zcser.torch.DataLoader gives torch's DataLoader's batches, element for element, in the same
order, over many argument combinations and every start method."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from fixtures.loader_data import Counting, Ragged, Samples, list_collate, seed_worker
from torch.utils.data import BatchSampler, SubsetRandomSampler
from torch.utils.data import DataLoader as TorchDataLoader

from zcser.torch import DataLoader

SMALL_RING = 8 << 20


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _epochs(cls: type, dataset: Any, epochs: int = 1, **kwargs: Any) -> list[list[Any]]:
    generator = torch.Generator().manual_seed(1234)
    if cls is DataLoader and kwargs.get("num_workers", 0) > 0:
        kwargs["capacity"] = SMALL_RING
    loader = cls(dataset, generator=generator, **kwargs)
    return [list(loader) for _ in range(epochs)]


def _check_same(dataset: Any, epochs: int = 1, **kwargs: Any) -> list[list[Any]]:
    torch.manual_seed(0)
    np.random.seed(0)
    want = _epochs(TorchDataLoader, dataset, epochs, **kwargs)
    torch.manual_seed(0)
    np.random.seed(0)
    got = _epochs(DataLoader, dataset, epochs, **kwargs)
    for e, (w, g) in enumerate(zip(want, got, strict=True)):
        assert len(w) == len(g), (e, len(w), len(g))
        for i, (wb, gb) in enumerate(zip(w, g, strict=True)):
            assert _same(wb, gb), (e, i, wb, gb)
    return got


CASES = [
    dict(batch_size=8, num_workers=2),
    dict(batch_size=8, shuffle=True, num_workers=2),
    dict(batch_size=5, shuffle=True, num_workers=2, drop_last=True, prefetch_factor=1),
    dict(batch_size=4, shuffle=True, num_workers=1, prefetch_factor=4),
    dict(batch_size=6, num_workers=2, worker_init_fn=seed_worker),
    dict(batch_size=None, num_workers=2),
    dict(batch_size=8, shuffle=True, num_workers=0),
    dict(sampler=SubsetRandomSampler(range(0, 50, 3)), batch_size=3, num_workers=2),
    dict(batch_sampler=BatchSampler(range(50), 7, drop_last=False), num_workers=2),
    dict(batch_size=8, shuffle=True, num_workers=2, persistent_workers=True),
]


@pytest.mark.parametrize(
    "kwargs", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items())
)
def test_map_style_same_batches(kwargs: dict[str, Any]) -> None:
    epochs = 2 if kwargs.get("persistent_workers") else 1
    _check_same(Samples(), epochs=epochs, **kwargs)


def test_default_collate_stacks_into_the_ring() -> None:
    batch = next(iter(DataLoader(Samples(shape=(3, 64, 64)), batch_size=8, num_workers=1,
                                 capacity=SMALL_RING)))  # fmt: skip
    x = batch["x"]
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    ptr = x.data_ptr()
    inside = [
        line for line in maps
        if int(line.split()[0].split("-")[0], 16) <= ptr < int(line.split()[0].split("-")[1], 16)
    ]  # fmt: skip
    assert inside and "/dev/shm/" in inside[0], inside


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_iterable_dataset_sharded_by_workers(workers: int) -> None:
    _check_same(Counting(), batch_size=4, num_workers=workers)


def test_iterable_without_batching_and_persistent() -> None:
    _check_same(Counting(), batch_size=None, num_workers=2)
    _check_same(Counting(), epochs=3, batch_size=5, num_workers=2, persistent_workers=True)


def test_custom_collate_lists_of_ragged_tensors() -> None:
    got = _check_same(Ragged(), batch_size=8, shuffle=True, num_workers=2, collate_fn=list_collate)
    assert got[0][0]["tag"] == "det" and len(got[0][0]["boxes"]) == 8


def test_out_of_order_gives_the_same_batches() -> None:
    kwargs = dict(batch_size=4, shuffle=True, num_workers=2, in_order=False, capacity=SMALL_RING)
    want = list(TorchDataLoader(Samples(), generator=torch.Generator().manual_seed(3),
                                **{k: v for k, v in kwargs.items() if k != "capacity"}))  # fmt: skip
    got = list(DataLoader(Samples(), generator=torch.Generator().manual_seed(3), **kwargs))
    key = lambda b: tuple(b["y"].tolist())  # noqa: E731
    assert Counter(map(key, want)) == Counter(map(key, got))


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_start_methods(method: str) -> None:
    if method == "fork" and sys.platform == "darwin":
        pytest.skip("fork is unsafe on macOS")
    _check_same(Samples(20), batch_size=4, shuffle=True, num_workers=2,
                multiprocessing_context=method)  # fmt: skip


def test_persistent_workers_after_a_break_resume_like_torch() -> None:
    def run(cls: type) -> list[Any]:
        torch.manual_seed(0)
        np.random.seed(0)
        kwargs = {"capacity": SMALL_RING} if cls is DataLoader else {}
        loader = cls(Samples(), batch_size=4, shuffle=True, num_workers=2, persistent_workers=True,
                     generator=torch.Generator().manual_seed(9), **kwargs)  # fmt: skip
        for i, _ in enumerate(loader):
            if i == 2:
                break
        return list(loader) + list(loader)

    want, got = run(TorchDataLoader), run(DataLoader)
    assert len(want) == len(got) == 26
    assert all(_same(w, g) for w, g in zip(want, got, strict=True))


def test_custom_collate_numpy_and_arrow() -> None:
    from fixtures.loader_data import numpy_arrow_collate

    want = list(TorchDataLoader(Samples(), batch_size=8, collate_fn=numpy_arrow_collate))
    got = list(DataLoader(Samples(), batch_size=8, num_workers=2, capacity=SMALL_RING,
                          collate_fn=numpy_arrow_collate))  # fmt: skip
    assert len(want) == len(got) == 7
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w["y"], g["y"])
        assert g["table"].equals(w["table"])
