"""bytes, bytearray, memoryview and PickleBuffer: documented result types, zero-copy by address."""

from __future__ import annotations

import array
import pickle
from typing import Any

import numpy as np
import pytest

import zcser
from zcser.errors import UnsupportedType

BIG = 1 << 17


def _encode(codec: zcser.Codec, obj: Any) -> bytearray:
    plan = codec.plan(obj)
    out = bytearray(plan.nbytes)
    del out[plan.write_into(out) :]
    return out


def _round_trip(obj: Any, **kw: Any) -> tuple[Any, bytearray]:
    codec = zcser.Codec()
    msg = _encode(codec, obj)
    return codec.decode(msg, **kw), msg


def _address(buf: Any) -> int:
    return int(np.frombuffer(buf, np.uint8).ctypes.data) if memoryview(buf).nbytes else 0


def _inside(buf: Any, msg: bytearray) -> bool:
    start = _address(msg)
    return start <= _address(buf) and _address(buf) + memoryview(buf).nbytes <= start + len(msg)


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_come_back_as_read_only_zero_copy_memoryview(kind: type) -> None:
    source = kind(np.random.default_rng(0).bytes(BIG))
    got, msg = _round_trip(source)
    assert isinstance(got, memoryview) and got.readonly
    assert got == source
    assert _inside(got, msg) and _address(got) % 64 == 0


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_small_bytes_keep_their_type(kind: type) -> None:
    got, _ = _round_trip(kind(b"abc"))
    assert type(got) is kind and got == b"abc"


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_copy_true_gives_the_original_type(kind: type) -> None:
    source = kind(b"x" * BIG)
    got, msg = _round_trip([source, kind(b"y")], copy=True)
    assert [type(v) for v in got] == [kind, kind]
    assert got[0] == source and not _inside(got[0], msg)


def test_empty_bytes() -> None:
    got, _ = _round_trip([b"", bytearray(), memoryview(b"")])
    assert got[0] == b"" and got[1] == bytearray() and got[2].nbytes == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda b: {b: 1},
        lambda b: {b},
        lambda b: frozenset({b}),
        lambda b: {(b, 1): 2},
        lambda b: {"nested": [{b}]},
    ],
    ids=["dict-key", "set", "frozenset", "tuple-key", "nested-set"],
)
def test_large_bytes_in_sets_and_dict_keys_decode_equal(make: Any) -> None:
    """A zero-copy view over message memory cannot be hashed: such messages decode again with
    their large bytes as private copies (arrays elsewhere in them stay zero-copy)."""
    codec = zcser.Codec()
    value = make(b"k" * BIG)
    msg = _encode(codec, {"v": value, "a": np.arange(BIG, dtype=np.uint8)})
    got = codec.decode(msg)
    assert got["v"] == value and type(got["v"]) is type(value)
    assert _inside(got["a"], msg)
    assert codec.decode(bytes(msg))["v"] == value
    assert codec.decode(msg, copy=True)["v"] == value


def test_large_bytes_as_dict_key_in_a_writable_snapshot_style_decode() -> None:
    codec = zcser.Codec()
    msg = _encode(codec, {b"k" * BIG: 1})
    assert codec.decode(msg, writable=True) == {b"k" * BIG: 1}


@pytest.mark.parametrize(
    "source",
    [
        np.arange(BIG, dtype=np.int32).reshape(256, -1),
        np.arange(BIG, dtype=np.float64),
        np.zeros((64, 64, 8), np.uint16),
        np.array(7.0),
    ],
    ids=["2d-int32", "1d-double", "3d-uint16", "0d"],
)
def test_typed_memoryviews_keep_format_and_shape(source: np.ndarray) -> None:
    view = memoryview(source)
    got, msg = _round_trip(view)
    assert isinstance(got, memoryview) and got.readonly
    assert (got.format, got.shape, got.itemsize) == (view.format, view.shape, view.itemsize)
    assert got.tobytes() == view.tobytes()
    if source.nbytes >= zcser.DEFAULT_THRESHOLD:
        assert _inside(got, msg)


def test_empty_multidimensional_memoryview() -> None:
    view = memoryview(np.zeros((0, 3), np.int32))
    got, _ = _round_trip(view)
    assert (got.format, got.shape) == ("i", (0, 3))


def test_array_module_memoryview() -> None:
    view = memoryview(array.array("d", range(BIG // 8)))
    got, _ = _round_trip(view)
    assert got.format == "d" and got.tolist() == view.tolist()


def test_non_contiguous_memoryview_is_copied() -> None:
    view = memoryview(np.arange(BIG, dtype=np.int64).reshape(512, -1))[::2]
    got, _ = _round_trip(view)
    assert got.shape == view.shape and got.tolist() == view.tolist()


def test_memoryview_copy_true_is_writable_and_private() -> None:
    view = memoryview(np.arange(BIG, dtype=np.int32))
    got, msg = _round_trip(view, copy=True)
    assert not got.readonly and got.format == "i"
    got[0] = 99
    assert not _inside(got, msg)


def test_memoryview_with_struct_format_is_refused_clearly() -> None:
    view = memoryview(np.zeros(4, [("a", "<i4"), ("b", "<f8")]))
    with pytest.raises(UnsupportedType, match=r"np\.asarray"):
        zcser.Codec().plan(view)


def test_pickle_buffer_zero_copy_and_copy() -> None:
    source = pickle.PickleBuffer(bytearray(b"p" * BIG))
    got, msg = _round_trip(source)
    assert isinstance(got, pickle.PickleBuffer)
    raw = got.raw()
    assert raw.readonly and raw == b"p" * BIG and _inside(raw, msg)
    copied, _ = _round_trip(source, copy=True)
    assert isinstance(copied, pickle.PickleBuffer)
    assert not copied.raw().readonly and not _inside(copied.raw(), msg)


def test_non_contiguous_pickle_buffer_is_refused() -> None:
    source = pickle.PickleBuffer(np.arange(100)[::2])
    with pytest.raises(UnsupportedType, match="contiguous"):
        zcser.Codec().plan(source)
