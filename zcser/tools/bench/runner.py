"""Benchmarks, each section a function returning rows; `python -m zcser bench` prints them.

Every number is a median of repeated runs, reported next to a peer (pickle protocol 5 with
`buffer_callback`) measured in the same run, so noisy machines still give meaningful ratios.
The codec sections are written here; channel, fanout, net and snapshot have a module each; `SECTIONS`
at the end lists them all. The ZeroBuffer transport alone, against the reference
`zerobuffer-ipc`, is a separate script: `python -m zcser.tools.bench.transport`.
"""

from __future__ import annotations

import gc
import json
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from zcser.codec import DEFAULT_THRESHOLD, Codec, Plan, layout
from zcser.tools.bench.channel import bench_channel
from zcser.tools.bench.dataloader import bench_dataloader
from zcser.tools.bench.fanout import bench_fanout
from zcser.tools.bench.net import bench_net
from zcser.tools.bench.pool import bench_pool
from zcser.tools.bench.snapshot import bench_snapshot

Row = dict[str, Any]
MIB = 1 << 20


def median_us(fn: Callable[[], Any], repeat: int, number: int = 1) -> float:
    """Median over `repeat` runs of the mean time of `number` calls, in microseconds."""
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter_ns()
            for _ in range(number):
                fn()
            times.append((time.perf_counter_ns() - start) / number / 1000)
    finally:
        if gc_was_enabled:
            gc.enable()
    return statistics.median(times)


def _row(name: str, zcser_us: float, peer_us: float | None, note: str = "") -> Row:
    ratio = zcser_us / peer_us if peer_us else None
    return {"case": name, "zcser_us": zcser_us, "pickle5_us": peer_us, "ratio": ratio, "note": note}


def _aligned(nbytes: int) -> np.ndarray:
    """A writable byte array whose first byte is ALIGN-aligned."""
    raw = np.empty(nbytes + layout.ALIGN, np.uint8)
    skip = -raw.ctypes.data % layout.ALIGN
    return raw[skip : skip + nbytes]


def _pickle5_round_trip(obj: Any) -> Any:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=buffers)


def _pickle5_copy_round_trip(obj: Any, target: np.ndarray) -> Any:
    """pickle 5, with each out-of-band buffer copied into preallocated memory (a send)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    views, pos = [], 0
    for buf in buffers:
        raw = buf.raw()
        target[pos : pos + raw.nbytes] = np.frombuffer(raw, np.uint8)
        views.append(target[pos : pos + raw.nbytes])
        pos = layout.align_up(pos + raw.nbytes)
    return pickle.loads(data, buffers=views)


def _small_fields() -> dict[str, Any]:
    return {
        f"field{i}": v
        for i, v in enumerate([1, 2.5, "three", None, True, [1, 2], (3,), "x" * 30, -7, {"k": 1}])
    }


def bench_large_array(quick: bool) -> list[Row]:
    """A dict holding one big 1-D float32 array and 10 small fields: encode + decode."""
    nbytes = (10 if quick else 100) * MIB
    repeat = 5 if quick else 15
    codec = Codec()
    obj = {"array": np.ones(nbytes // 4, np.float32), **_small_fields()}
    target = _aligned(codec.plan(obj).nbytes)

    def zcser_copy() -> Any:
        plan = codec.plan(obj)
        used = plan.write_into(target)
        return codec.decode(target[:used])

    frame = _aligned(nbytes + 64 * 1024)
    in_frame = frame[32 * 1024 : 32 * 1024 + nbytes].view(np.float32)
    in_frame[:] = 1
    obj_in_frame = {"array": in_frame, **_small_fields()}

    def zcser_in_place() -> Any:
        plan = codec.plan(obj_in_frame)
        used = plan.write_into(frame)
        return codec.decode(frame[:used])

    def zcser_plan_decode_only() -> Any:
        return codec.plan(obj)

    size = f"{nbytes // MIB} MiB"
    peer_copy = median_us(lambda: _pickle5_copy_round_trip(obj, target), repeat)
    peer = median_us(lambda: _pickle5_round_trip(obj), repeat)
    return [
        _row(
            f"{size} array: plan+write_into+decode (copies the array once)",
            median_us(zcser_copy, repeat),
            peer_copy,
            "peer: pickle5 dumps + copy buffers to preallocated memory + loads",
        ),
        _row(
            f"{size} array: plan+write_into+decode, array already in the frame (no copy)",
            median_us(zcser_in_place, repeat),
            peer,
            "peer: pickle5 dumps + loads over the same buffers (no copy)",
        ),
        _row(f"{size} array: plan only", median_us(zcser_plan_decode_only, repeat), None),
    ]


def _message_with(total: int, parts: int, codec: Codec) -> tuple[np.ndarray, int]:
    """A message holding `parts` float64 arrays of `total` bytes, built in place (no copy)."""
    head = 64 * 1024
    chunk = layout.align_up(total // parts)
    frame = _aligned(head + parts * chunk)
    arrays = [
        frame[head + i * chunk : head + i * chunk + total // parts].view(np.float64)
        for i in range(parts)
    ]
    plan: Plan = codec.plan({f"a{i}": a for i, a in enumerate(arrays)})
    return frame, plan.write_into(frame)


def bench_decode_size(quick: bool) -> list[Row]:
    """Decode time of messages holding 10 MB .. 1 GB of arrays: independent of size."""
    codec = Codec()
    sizes = [MIB, 10 * MIB] if quick else [10 * MIB, 100 * MIB, 1024 * MIB]
    rows = []
    for total in sizes:
        frame, used = _message_with(total, 4, codec)
        message = frame[:used]

        def decode(m: np.ndarray = message) -> Any:
            return codec.decode(m)

        zcser_us = median_us(decode, 50, 20)
        arrays = codec.decode(message)
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(arrays, protocol=5, buffer_callback=buffers.append)

        def unpickle(d: bytes = data, b: list[pickle.PickleBuffer] = buffers) -> Any:
            return pickle.loads(d, buffers=b)

        peer_us = median_us(unpickle, 50, 20)
        rows.append(
            _row(f"decode {total // MIB} MiB in 4 arrays", zcser_us, peer_us, "pickle5: loads")
        )
        del frame, message, arrays, buffers
        gc.collect()
    return rows


def bench_many_small(quick: bool) -> list[Row]:
    """1,000 arrays of 1 KiB each: per-object cost dominates."""
    codec = Codec()
    obj = [np.full(256, i, np.float32) for i in range(1000)]
    target = _aligned(codec.plan(obj).nbytes)
    repeat = 11 if quick else 41

    def zcser_round_trip() -> Any:
        plan = codec.plan(obj)
        used = plan.write_into(target)
        return codec.decode(target[:used])

    def pickle_in_band() -> Any:
        return pickle.loads(pickle.dumps(obj, protocol=5))

    return [
        _row(
            "1000 x 1 KiB arrays: plan+write_into+decode",
            median_us(zcser_round_trip, repeat),
            median_us(lambda: _pickle5_round_trip(obj), repeat),
            "pickle5 with buffer_callback",
        ),
        _row(
            "1000 x 1 KiB arrays (same zcser run)",
            median_us(zcser_round_trip, repeat),
            median_us(pickle_in_band, repeat),
            "pickle5 without buffer_callback",
        ),
    ]


def bench_threshold(quick: bool) -> list[Row]:
    """Round trip of 64 arrays of each size, all out of band vs all in band: picks the default."""
    rows = []
    sizes = (
        [1024, 16 * 1024, 64 * 1024]
        if quick
        else [1024, 4096, 16 * 1024, 32 * 1024, 64 * 1024, 256 * 1024]
    )
    for size in sizes:
        obj = [np.ones(size, np.uint8) for _ in range(64)]
        timings = {}
        for name, threshold in (("out", 0), ("in", 1 << 62)):
            codec = Codec(threshold=threshold)
            target = _aligned(codec.plan(obj).nbytes)

            def run(c: Codec = codec, t: np.ndarray = target, o: Any = obj) -> Any:
                plan = c.plan(o)
                return c.decode(t[: plan.write_into(t)])

            timings[name] = median_us(run, 9 if quick else 25)
        rows.append(
            {
                "case": f"64 x {size // 1024} KiB: out of band vs in band",
                "out_of_band_us": timings["out"],
                "in_band_us": timings["in"],
                "ratio": timings["out"] / timings["in"],
                "note": f"default threshold {DEFAULT_THRESHOLD // 1024} KiB",
            }
        )
    return rows


def _arrow_table(rows: int) -> Any:
    """A table with a column of each kind the decoder treats differently: fixed-width values,
    strings (offsets), lists (offsets and a child) and a dictionary (indices)."""
    import pyarrow as pa

    ids = np.arange(rows)
    offsets = pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32))
    return pa.table(
        {
            "id": ids,
            "price": np.random.default_rng(0).random(rows),
            "name": pa.array([f"item-{i}" for i in range(rows)]),
            "tags": pa.ListArray.from_arrays(
                offsets, pa.array(np.arange(2 * rows) % 97, pa.int32())
            ),
            "category": pa.DictionaryArray.from_arrays(
                pa.array((ids % 50).astype(np.int32)), pa.array([f"cat{j}" for j in range(50)])
            ),
        }
    )


def bench_arrow(quick: bool) -> list[Row]:
    """Decode of Arrow tables (offsets, list offsets and dictionary indices are private copies,
    value buffers zero-copy), whole and in many chunks."""
    import pyarrow as pa

    rows = 100_000 if quick else 1_000_000
    repeat = 7 if quick else 21
    codec = Codec()
    table = _arrow_table(rows)
    # 1000 chunks that own their buffers (slices of one table would make pickle send the whole
    # parent buffers once per chunk)
    chunked = pa.Table.from_batches(_arrow_table(rows // 1000).to_batches() * 1000)
    result = []
    for name, obj in (("1 chunk", table), (f"1000 chunks of {rows // 1000:,} rows", chunked)):
        target = _aligned(codec.plan(obj).nbytes)
        message = target[: codec.plan(obj).write_into(target)]
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)

        def decode(m: np.ndarray = message) -> Any:
            return codec.decode(m)

        def unpickle(d: bytes = data, b: list[pickle.PickleBuffer] = buffers) -> Any:
            return pickle.loads(d, buffers=b)

        result.append(
            _row(
                f"Arrow table, {rows:,} rows x 5 columns, {name}: decode",
                median_us(decode, repeat, 5),
                median_us(unpickle, repeat, 5),
                "pickle5: loads over out-of-band buffers",
            )
        )

        def round_trip(o: Any = obj, t: np.ndarray = target) -> Any:
            return codec.decode(t[: codec.plan(o).write_into(t)])

        room = sum(layout.align_up(b.raw().nbytes) for b in buffers)
        pickle_target = _aligned(room)

        def pickle_round_trip(o: Any = obj, t: np.ndarray = pickle_target) -> Any:
            return _pickle5_copy_round_trip(o, t)

        result.append(
            _row(
                f"Arrow table, {rows:,} rows x 5 columns, {name}: plan+write_into+decode",
                median_us(round_trip, repeat),
                median_us(pickle_round_trip, repeat),
                "pickle5 dumps + copy buffers to preallocated memory + loads",
            )
        )
    return result


SECTIONS: dict[str, Callable[[bool], list[Row]]] = {
    "codec-large": bench_large_array,
    "codec-decode-size": bench_decode_size,
    "codec-many-small": bench_many_small,
    "codec-threshold": bench_threshold,
    "codec-arrow": bench_arrow,
    "snapshot": bench_snapshot,
    "net": bench_net,
    "channel": bench_channel,
    "dataloader": bench_dataloader,
    "pool": bench_pool,
    "fanout": bench_fanout,
}


def _format(row: Row) -> str:
    cells = [f"{row['case']:<72}"]
    for key, value in row.items():
        if key in ("case", "note") or value is None:
            continue
        cells.append(f"{key}={value:,.2f}" if isinstance(value, float) else f"{key}={value}")
    if row.get("note"):
        cells.append(f"({row['note']})")
    return "  ".join(cells)


def run(
    sections: list[str] | None = None, quick: bool = False, as_json: bool = False
) -> dict[str, list[Row]]:
    """Run the named sections (all when None) and print them as text or one JSON document."""
    results: dict[str, list[Row]] = {}
    for name in sections or list(SECTIONS):
        results[name] = SECTIONS[name](quick)
        if not as_json:
            print(f"== {name}")
            for row in results[name]:
                print("  " + _format(row), flush=True)
    if as_json:
        print(json.dumps(results, indent=1))
    return results
