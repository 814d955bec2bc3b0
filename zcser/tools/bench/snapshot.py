"""Benchmark section "snapshot": save throughput and load time against file-format peers.

Peers measured in the same run on the same dict of float32 arrays: `np.save` per array +
`np.load(mmap_mode="r")`, pickle protocol 5 to a file, an Arrow IPC file read through
`pa.memory_map`, and safetensors when installed. zcser.save always fsyncs (crash-safe), so
peers are timed with an fsync too (`*_sync`), and without one for reference. Loads read a warm
page cache. Files live in a temporary directory removed afterwards.
"""

from __future__ import annotations

import os
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from zcser import load, save

Row = dict[str, Any]
MB = 10**6
ARRAYS = 8


def _data(total: int) -> dict[str, np.ndarray]:
    """`ARRAYS` float32 arrays of `total` bytes in all (random, so nothing compresses)."""
    rng = np.random.default_rng(0)
    n = total // ARRAYS // 4
    return {f"layer{i}": rng.random(n, dtype=np.float32) for i in range(ARRAYS)}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _npy_save(obj: dict[str, np.ndarray], where: Path) -> list[Path]:
    where.mkdir(exist_ok=True)
    paths = []
    for key, arr in obj.items():
        np.save(where / f"{key}.npy", arr)
        paths.append(where / f"{key}.npy")
    return paths


def _npy_load(where: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p, mmap_mode="r") for p in sorted(where.glob("*.npy"))}


def _pickle_save(obj: dict[str, np.ndarray], path: Path) -> list[Path]:
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=5)
    return [path]


def _pickle_load(path: Path) -> Any:
    with open(path, "rb") as file:
        return pickle.load(file)


def _arrow_save(obj: dict[str, np.ndarray], path: Path) -> list[Path]:
    import pyarrow as pa

    batch = pa.record_batch([pa.array(v) for v in obj.values()], names=list(obj))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return [path]


def _arrow_load(path: Path) -> dict[str, np.ndarray]:
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    return {
        name: table.column(name).chunk(0).to_numpy(zero_copy_only=True)
        for name in table.column_names
    }


def _safetensors() -> Any:
    try:
        from safetensors import numpy as st
    except ImportError:
        return None
    return st


def _peers() -> dict[str, tuple[Callable[..., list[Path]], Callable[[Path], Any]]]:
    peers: dict[str, tuple[Callable[..., list[Path]], Callable[[Path], Any]]] = {
        "npy": (_npy_save, _npy_load),
        "pickle5": (_pickle_save, _pickle_load),
        "arrow_ipc": (_arrow_save, _arrow_load),
    }
    st = _safetensors()
    if st is not None:

        def st_save(obj: dict[str, np.ndarray], path: Path) -> list[Path]:
            st.save_file(obj, str(path))
            return [path]

        peers["safetensors"] = (st_save, lambda path: st.load_file(str(path)))
    return peers


def _median_s(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synced(saver: Callable[..., list[Path]], obj: dict[str, np.ndarray], path: Path) -> None:
    for written in saver(obj, path):
        _fsync(written)


def _save_row(obj: dict[str, np.ndarray], total: int, tmp: Path, repeat: int) -> Row:
    """Rounds interleave every variant once, so a burst of machine noise hits all of them.

    Each variant starts from a clean page cache (`os.sync()` untimed): otherwise the variants
    without fsync leave a gigabyte of dirty pages that the next variant's fsync pays for. The
    order rotates each round so no variant always follows the same one.
    """
    target = tmp / "snap.zcs"
    variants: dict[str, Callable[[], Any]] = {
        "zcser": partial(save, obj, target),
        "zcser_nocksum": partial(save, obj, target, checksum=False),
    }
    for name, (saver, _) in _peers().items():
        path = tmp / f"peer-{name}"
        variants[f"{name}_sync"] = partial(_synced, saver, obj, path)
        variants[name] = partial(saver, obj, path)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(repeat):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            os.sync()
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    os.sync()
    row: Row = {"case": f"save dict of {ARRAYS} float32 arrays, {total / MB:,.0f} MB (GB/s)"}
    row.update({name: total / statistics.median(t) / 1e9 for name, t in times.items()})
    best = max(v for k, v in row.items() if k.endswith("_sync"))
    row["ratio_vs_best_synced_peer"] = row["zcser"] / best
    row["note"] = "zcser always fsyncs; *_sync = peer + fsync, bare peer names = no fsync"
    return row


def _load_row(obj: dict[str, np.ndarray], total: int, tmp: Path, repeat: int) -> Row:
    target = tmp / "snap.zcs"
    save(obj, target)
    row: Row = {"case": f"load dict of {ARRAYS} float32 arrays, {total / MB:,.0f} MB (us)"}
    row["zcser"] = _median_s(lambda: load(target), repeat * 10) * 1e6
    for name, (saver, loader) in _peers().items():
        path = tmp / f"peer-{name}"
        saver(obj, path)
        runs = repeat if name in ("pickle5", "safetensors") else repeat * 10
        row[name] = _median_s(partial(loader, path), runs) * 1e6
    row["note"] = "warm page cache; npy/arrow map lazily, pickle5/safetensors read everything"
    return row


def bench_snapshot(quick: bool) -> list[Row]:
    """Save GB/s at the largest size; load time at each size (flat = size-independent)."""
    sizes = [4 * MB, 16 * MB] if quick else [10 * MB, 100 * MB, 1000 * MB]
    repeat = 1 if quick else 5
    rows = []
    with tempfile.TemporaryDirectory(prefix="zcser-bench-") as tmp:
        for total in sizes:
            obj = _data(total)
            rows.append(_load_row(obj, total, Path(tmp), repeat))
            if total == sizes[-1]:
                rows.append(_save_row(obj, total, Path(tmp), repeat))
            del obj
    return rows
