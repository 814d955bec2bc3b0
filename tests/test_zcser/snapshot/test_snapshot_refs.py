"""Arrays and tensors of zcser.load() pickle by reference for multiprocessing (spawn, Queue,
ProcessPoolExecutor): each process maps the same file; a changed file is refused."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures.maps import mappings

import zcser
from zcser.errors import CorruptSnapshot

MB = 1 << 20


def _mp_bytes(obj: Any) -> bytes:
    return bytes(ForkingPickler.dumps(obj))


def _saved(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "data.zcs"
    zcser.save(
        {
            "x": np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024),
            "t": torch.arange(1 << 18, dtype=torch.bfloat16),
            "p": torch.nn.Parameter(torch.ones(64, 1024)),
            **extra,
        },
        path,
    )
    return path


def test_loaded_arrays_and_tensors_pickle_as_small_references(tmp_path: Path) -> None:
    data = zcser.load(_saved(tmp_path))
    for value in (
        data["x"],
        data["x"][::-3, 5:900:2],  # strided views, negative steps
        data["x"].T,
        data["t"],
        data["t"][10:5000:7],
        data["p"],
    ):
        blob = _mp_bytes(value)
        assert len(blob) < 1000, (type(value), len(blob))
        back = pickle.loads(blob)
        assert type(back) is type(value)
        if isinstance(value, np.ndarray):
            assert back.dtype == value.dtype and back.strides == value.strides
            np.testing.assert_array_equal(back, value)
        else:
            assert back.dtype == value.dtype and back.stride() == value.stride()
            assert torch.equal(back, value) and back.requires_grad == value.requires_grad
    # an object holding them: still small
    assert len(_mp_bytes(data)) < 2000


def test_plain_pickle_and_private_memory_stay_by_value(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = zcser.load(path)
    assert len(pickle.dumps(data["x"])) > data["x"].nbytes  # pickle.dumps: bytes kept
    copied = zcser.load(path, mode="copy")
    assert len(_mp_bytes(copied["x"])) > copied["x"].nbytes
    assert len(_mp_bytes(data["x"] + 1)) > data["x"].nbytes  # a result, not the file


def test_written_copy_on_write_pages_pickle_by_value(tmp_path: Path) -> None:
    data = zcser.load(_saved(tmp_path))
    x = data["x"]
    x[0, 0] = -1.0  # this page is now the process's own, not the file's
    blob = _mp_bytes(x[:16])
    assert len(blob) > x[:16].nbytes
    assert pickle.loads(blob)[0, 0] == -1.0
    assert len(_mp_bytes(x[512:])) < 1000  # the untouched pages still go by reference


def test_read_only_mode_pickles_by_reference_read_only(tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="read-only"):
        x = zcser.load(_saved(tmp_path), mode="r")["x"]
    back = pickle.loads(_mp_bytes(x))
    assert not back.flags.writeable
    np.testing.assert_array_equal(back, x)


def _file_mapped(value: Any, path: str) -> tuple[bool, float]:
    """In a child: whether `value`'s memory is a mapping of `path`, and its sum."""
    address = value.ctypes.data if isinstance(value, np.ndarray) else value.data_ptr()
    inside = any(lo <= address < hi for lo, hi in mappings(path))
    return inside, float(value.sum())


def test_spawn_pool_maps_the_same_file(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = zcser.load(path)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        x_inside, x_sum = pool.submit(_file_mapped, data["x"][100:], str(path)).result(60)
        t_inside, t_sum = pool.submit(_file_mapped, data["t"], str(path)).result(60)
    assert x_inside and t_inside
    assert x_sum == float(data["x"][100:].sum())
    assert t_sum == float(data["t"].sum())


def _anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def _growth(queue: Any, out: Any) -> None:
    """In a spawn child: private (anonymous) memory growth from receiving and reading the
    dataset in `queue`."""
    before = _anon_kib()
    dataset = queue.get(timeout=60)
    total = sum(float(a.sum()) for a in dataset.values())
    out.put((_anon_kib() - before, total))


@pytest.mark.parametrize("kind", ["snapshot", "numpy"])
def test_per_worker_memory_through_a_queue(tmp_path: Path, kind: str) -> None:
    size = 64 * MB
    arrays = {f"a{i}": np.full(size // 4 // 8, i, dtype=np.float32) for i in range(4)}
    if kind == "snapshot":
        zcser.save(arrays, tmp_path / "d.zcs")
        arrays = zcser.load(tmp_path / "d.zcs")
    ctx = mp.get_context("spawn")
    queue, out = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_growth, args=(queue, out))
    child.start()
    queue.put(arrays)
    growth_kib, total = out.get(timeout=120)
    child.join(60)
    assert total == sum(float(a.sum()) for a in arrays.values())
    dataset_kib = sum(a.nbytes for a in arrays.values()) // 1024
    if kind == "snapshot":
        assert growth_kib < 0.05 * dataset_kib, (growth_kib, dataset_kib)
    else:  # the control: a numpy dataset is copied whole into the child
        assert growth_kib > 0.9 * dataset_kib, (growth_kib, dataset_kib)


def _unpickle(blob: bytes) -> Any:
    try:
        return pickle.loads(blob)
    except CorruptSnapshot as exc:
        return str(exc)


def test_a_replaced_or_written_file_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    blob = _mp_bytes(zcser.load(path)["x"])
    gc.collect()
    zcser.save({"x": np.zeros(3)}, path)  # a new file under the name
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        message = pool.submit(_unpickle, blob).result(60)
    assert isinstance(message, str) and "changed since it was loaded" in message

    path = _saved(tmp_path)
    blob = _mp_bytes(zcser.load(path)["x"])
    gc.collect()
    with open(path, "r+b") as f:  # written in place, same inode
        f.seek(-8, os.SEEK_END)
        f.write(b"\1" * 8)
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        message = pool.submit(_unpickle, blob).result(60)
    assert isinstance(message, str) and "changed since it was loaded" in message


def test_received_channel_views_pickle_by_value(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=16 * MB) as rx, zcser.Sender(shm_name) as tx:
        tx.send({"x": np.ones(MB // 8), "t": torch.ones(MB // 4)})
        msg = rx.recv(timeout=10)
        assert len(_mp_bytes(msg["x"])) > msg["x"].nbytes
        assert torch.equal(pickle.loads(_mp_bytes(msg["t"])), msg["t"])
        del msg
