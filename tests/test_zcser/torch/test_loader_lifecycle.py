"""zcser.torch.DataLoader: dead workers, timeouts, errors, shutdown, descriptors and /dev/shm."""

from __future__ import annotations

import gc
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from fixtures.loader_data import Dying, Failing, Many, Samples, Slow
from torch.utils.data import DataLoader as TorchDataLoader

from zcser.torch import DataLoader

RING = 8 << 20


def _our_shm() -> set[str]:
    mine = f"zcser-{os.getpid()}-"  # the rings this process made (other runs make theirs)
    return {n for n in os.listdir("/dev/shm") if n.startswith(mine)}


def _fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_killed_worker_raises_naming_it(sig: int) -> None:
    before = _our_shm()
    loader = DataLoader(Dying(at=21, sig=sig), batch_size=2, num_workers=2, capacity=RING)
    seen = 0
    with pytest.raises(RuntimeError, match="DataLoader worker exited unexpectedly") as info:
        for _ in loader:
            seen += 1
    text = str(info.value)
    assert re.search(
        rf"worker 0 \(pid \d+\) killed by signal {sig} \({signal.Signals(sig).name}\)", text
    ), text
    assert 0 < seen <= 10
    gc.collect()
    assert _our_shm() - before == set()


def test_timeout_raises_like_torch() -> None:
    # Item 5 takes 3 s: without a working timeout, list() returns all 8 and nothing raises.
    loader = DataLoader(Slow(), batch_size=1, num_workers=1, timeout=1, capacity=RING)
    with pytest.raises(RuntimeError, match="DataLoader timed out after 1 seconds"):
        list(loader)


def test_worker_exceptions_are_reraised_like_torch() -> None:
    def first_error(cls: type) -> BaseException:
        kwargs = {"capacity": RING} if cls is DataLoader else {}
        with pytest.raises(Exception) as info:
            list(cls(Failing(), batch_size=2, num_workers=2, **kwargs))
        return info.value

    want, got = first_error(TorchDataLoader), first_error(DataLoader)
    assert type(got) is type(want) is KeyError
    assert "Caught KeyError in DataLoader worker process 0" in str(got)
    assert "no sample 13" in str(got)


def test_breaking_out_and_deleting_stop_everything() -> None:
    before_shm, before_children = _our_shm(), _children()
    loader = DataLoader(Samples(), batch_size=2, num_workers=2, capacity=RING)
    for i, _batch in enumerate(loader):
        if i == 3:
            break
    del _batch
    gc.collect()
    deadline = time.monotonic() + 10
    while _children() - before_children and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children() - before_children == set()
    assert _our_shm() - before_shm == set()

    persistent = DataLoader(Samples(), batch_size=4, num_workers=2, capacity=RING,
                            persistent_workers=True)  # fmt: skip
    assert len(list(persistent)) == len(list(persistent)) == 13
    rings = {n for n in _our_shm() - before_shm if not n.endswith("--pool")}
    assert len(rings) == 2  # one ring per worker, kept between epochs
    del persistent
    gc.collect()
    assert _our_shm() - before_shm == set()


def test_no_descriptor_growth_over_many_epochs() -> None:
    loader = DataLoader(Many(fields=256, n=16), batch_size=4, num_workers=2, capacity=RING,
                        persistent_workers=True)  # fmt: skip
    list(loader)
    fds = _fds()
    shm = _our_shm()
    for _ in range(5):
        for batch in loader:
            assert len(batch) == 256
    del batch
    assert _fds() == fds
    assert _our_shm() - shm == set()
    del loader
    gc.collect()


def test_batches_are_writable_and_copy_gives_private_tensors() -> None:
    loader = DataLoader(Samples(shape=(3, 64, 64)), batch_size=8, num_workers=1, capacity=RING)
    for batch in loader:
        batch["x"].mul_(2).add_(1)  # in place: the batch's own frame
        assert batch["x"].min() >= 1
    private = DataLoader(Samples(shape=(3, 64, 64)), batch_size=8, num_workers=1,
                         capacity=RING, copy=True)  # fmt: skip
    kept = [b["x"] for b in private]  # keeping private batches holds no ring
    assert len(kept) == 7


def test_pin_memory_without_accelerator_is_handled_as_torch() -> None:
    if torch.accelerator.is_available():
        pytest.skip("an accelerator is present")
    with pytest.warns(UserWarning, match="no accelerator is found"):
        batches = list(DataLoader(Samples(8), batch_size=4, num_workers=1, pin_memory=True,
                                  capacity=RING))  # fmt: skip
    assert len(batches) == 2 and not batches[0]["x"].is_pinned()


def test_arguments_are_checked_like_torch() -> None:
    for bad in (dict(num_workers=-1), dict(timeout=-1), dict(prefetch_factor=2),
                dict(persistent_workers=True), dict(shuffle=True, sampler=range(3))):  # fmt: skip
        with pytest.raises(ValueError) as want:
            TorchDataLoader(Samples(), **bad)
        with pytest.raises(ValueError) as got:
            DataLoader(Samples(), **bad)
        assert str(got.value) == str(want.value)
    assert isinstance(DataLoader(Samples()), TorchDataLoader)
    assert len(DataLoader(Samples(), batch_size=8)) == 7


def test_unlinked_rings_are_in_dev_shm_only_while_iterating(tmp_path: Path) -> None:
    before = _our_shm()
    it = iter(DataLoader(Samples(), batch_size=4, num_workers=2, capacity=RING))
    next(it)
    assert len({n for n in _our_shm() - before if not n.endswith("--pool")}) == 2
    list(it)  # the end of the epoch shuts the workers down
    assert _our_shm() - before == set()


def test_holding_a_rings_worth_of_batches_raises_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zcser.torch import loader as loader_module

    monkeypatch.setattr(loader_module, "_STUCK_WARN", 1.0)
    monkeypatch.setattr(loader_module, "_STUCK_SECONDS", 3.0)
    loader = DataLoader(Samples(64, shape=(48, 64, 64)), batch_size=4, num_workers=1,
                        capacity=8 << 20)  # fmt: skip
    kept = []
    with (
        pytest.warns(RuntimeWarning, match="an error after 3 s"),
        pytest.raises(RuntimeError, match=r"still holds .* MiB of earlier batches"),
    ):
        for batch in loader:
            kept.append(batch)  # 3 MiB a batch in an 8 MiB ring: the third one cannot come
    assert len(kept) == 2  # it raised (a hang would never get here), after two batches
    kept.clear()
    copies = [b["x"] for b in DataLoader(Samples(64, shape=(48, 64, 64)), batch_size=4,
                                         num_workers=1, capacity=8 << 20, copy=True)]  # fmt: skip
    assert len(copies) == 16


def test_dropping_batches_in_time_never_raises() -> None:
    loader = DataLoader(Samples(64, shape=(48, 64, 64)), batch_size=4, num_workers=2,
                        capacity=8 << 20, prefetch_factor=4)  # fmt: skip
    previous = None
    for batch in loader:  # one batch kept back, as a loop keeping `prev` does
        previous = batch
    assert previous is not None
