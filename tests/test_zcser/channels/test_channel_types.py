"""Every type family the codec handles, sent across a real process boundary by zcser.channel,
arriving equal and (for the big parts) zero-copy: addresses inside the receiver's shm mapping."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from conftest import unique_name
from fixtures.maps import shm_span

import zcser

WAIT = 30.0
MIB = 1 << 20
BIG = 40_000  # elements: every array below is above the 16 KiB in-band threshold

NUMPY_DTYPES = [
    "bool",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "datetime64[ns]",
    "timedelta64[us]",
    "S7",
    "U3",
]


@dataclasses.dataclass
class Reading:
    sensor: str
    when: float
    samples: np.ndarray


def make_codec() -> zcser.Codec:
    codec = zcser.Codec()
    codec.register(Reading, name="tests.Reading")
    return codec


def numpy_array(dtype: str) -> np.ndarray:
    raw = np.arange(BIG * 16, dtype=np.uint8).reshape(BIG, 16) % 97
    return raw[:, : np.dtype(dtype).itemsize].copy().view(dtype).reshape(-1)


def objects() -> list[tuple[str, Any]]:
    """(family, object); both processes build the same list."""
    rng = np.random.default_rng(5)
    table = pa.table(
        {
            "id": pa.array(np.arange(BIG, dtype=np.int64)),
            "score": pa.array(rng.random(BIG)),
            "name": pa.array([f"n{i}" for i in range(BIG)]),
        }
    )
    frame = pd.DataFrame({"x": np.arange(BIG, dtype=np.float64), "y": np.arange(BIG) % 7})
    return [
        *[(f"numpy {d}", numpy_array(d)) for d in NUMPY_DTYPES],
        ("numpy 2-D fortran", np.asfortranarray(np.arange(BIG, dtype=np.float32).reshape(200, -1))),
        ("numpy small in-band", np.arange(5, dtype=np.int16)),
        ("bytes", bytes(range(256)) * 200),
        ("bytes small", b"tiny"),
        ("arrow table", table),
        ("torch float32", torch.arange(BIG, dtype=torch.float32).reshape(100, -1)),
        ("torch int64", torch.arange(BIG, dtype=torch.int64)),
        (
            "nesting",
            {"a": [1, {"b": np.arange(BIG)}], "t": (1, 2.5, "s"), "none": None, "set": {1, 2}},
        ),
        ("dataclass", Reading("s1", 1.25, np.linspace(0, 1, BIG))),
        ("pandas", frame),
    ]


def _producer(queue: Any, make_tx: zcser.SenderFactory) -> None:
    with make_tx() as tx:
        for _, obj in objects():
            tx.send(obj, timeout=WAIT)
    queue.put("done")


def check(family: str, want: Any, got: Any, span: tuple[int, int]) -> None:
    """Equal values, and the big data parts inside the shm mapping (zero-copy)."""

    def shared(address: int) -> bool:
        return span[0] <= address < span[1]

    if isinstance(want, np.ndarray):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.nbytes >= zcser.DEFAULT_THRESHOLD:
            assert shared(got.__array_interface__["data"][0]), family
            assert not got.flags.writeable
    elif isinstance(want, bytes):
        assert bytes(got) == want
        if len(want) >= zcser.DEFAULT_THRESHOLD:
            assert shared(np.frombuffer(got, np.uint8).ctypes.data), family
    elif isinstance(want, pa.Table):
        assert got.equals(want)
        # values are zero-copy; validity bitmaps and offsets (they index memory) are private
        chunks = [ch for col in got.columns for ch in col.chunks]
        values = [ch.buffers()[-1] for ch in chunks]
        big = [b for b in values if b.size >= zcser.DEFAULT_THRESHOLD]
        assert big and all(shared(b.address) for b in big), family
        offsets = [ch.buffers()[1] for ch in chunks if pa.types.is_string(ch.type)]
        assert offsets and not any(shared(b.address) for b in offsets), family
    elif isinstance(want, torch.Tensor):
        assert torch.equal(got, want)
        assert shared(got.data_ptr()), family
    elif isinstance(want, Reading):
        assert (got.sensor, got.when) == (want.sensor, want.when)
        check(family, want.samples, got.samples, span)
    elif isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want)
        assert shared(got["x"].to_numpy().ctypes.data), family
    else:
        assert got["a"][0] == 1 and got["t"] == want["t"] and got["none"] is None
        assert got["set"] == want["set"]
        check(family, want["a"][1]["b"], got["a"][1]["b"], span)


def test_every_type_family_across_processes() -> None:
    make_tx, rx = zcser.channel(unique_name("t"), capacity=32 * MIB, codec=make_codec())
    ctx = mp.get_context("spawn")  # fork hangs once an earlier test ran torch's thread pool
    queue = ctx.Queue()
    proc = ctx.Process(target=_producer, args=(queue, make_tx), daemon=True)
    proc.start()
    try:
        with rx:
            received = [rx.recv(timeout=WAIT) for _ in objects()]
            span = shm_span(rx.name)
            for (family, want), got in zip(objects(), received, strict=True):
                check(family, want, got, span)
            assert queue.get(timeout=WAIT) == "done"
            with pytest.raises(zcser.errors.Closed):
                rx.recv(timeout=WAIT)
            del received, got
            assert rx.stats().frames_pinned == 0
    finally:
        proc.join(WAIT)
        if proc.is_alive():
            proc.kill()
        queue.close()


def test_unregistered_dataclass_is_refused_by_the_schema() -> None:
    name = unique_name("u")
    with zcser.Receiver(name, capacity=MIB) as rx, zcser.Sender(name, make_codec()) as tx:
        tx.send(Reading("s", 0.0, np.zeros(3)))
        with pytest.raises(zcser.errors.IncompatibleStream, match=r"tests\.Reading"):
            rx.recv(timeout=WAIT)
