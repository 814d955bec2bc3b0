"""numpy arrays and scalars through the codec: exact dtype/shape/order, zero-copy by address."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import zcser
from zcser.codec.adapters import numpy as _numpy
from zcser.errors import CorruptMessage, UnsupportedType

BIG = 1 << 16  # elements: every array below is far above the default threshold


def _encode(codec: zcser.Codec, obj: Any) -> bytearray:
    plan = codec.plan(obj)
    out = bytearray(plan.nbytes)
    used = plan.write_into(out)
    del out[used:]
    return out


def _round_trip(obj: Any, **kw: Any) -> tuple[Any, bytearray]:
    codec = zcser.Codec()
    msg = _encode(codec, obj)
    return codec.decode(msg, **kw), msg


def _inside(array: np.ndarray, msg: bytearray) -> bool:
    return bool(np.shares_memory(array, np.frombuffer(msg, np.uint8)))


DTYPES = [
    "?",
    "i1",
    "u1",
    "<i2",
    "<u2",
    "<i4",
    "<u4",
    "<i8",
    "<u8",
    "<f2",
    "<f4",
    "<f8",
    "<c8",
    "<c16",
    "<M8[ns]",
    "<M8[D]",
    "<m8[us]",
    "S7",
    "<U5",
    ">i4",
    ">f8",
    ">c16",
    ">M8[s]",
    ">U3",
    "V6",
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_dimensional_arrays_go_out_of_band_zero_copy(dtype: str) -> None:
    raw = np.random.default_rng(1).integers(0, 255, BIG * np.dtype(dtype).itemsize, np.uint8)
    source = raw.view(dtype)
    got, msg = _round_trip(source)
    assert got.dtype == source.dtype and got.dtype.str == source.dtype.str
    assert got.shape == source.shape
    assert got.tobytes() == source.tobytes()
    assert _inside(got, msg)
    assert got.ctypes.data % 64 == 0
    assert not got.flags.writeable


def test_structured_dtype_keeps_names_offsets_nesting_and_byte_order() -> None:
    inner = np.dtype([("q", "u1"), ("r", ">f4")])
    dtype = np.dtype(
        {
            "names": ["x", "y", "z", "w"],
            "formats": [">i4", ("<f8", (2, 3)), inner, "S3"],
            "offsets": [0, 8, 64, 80],
            "itemsize": 96,
        }
    )
    source = np.zeros(2000, dtype)
    source["x"] = np.arange(2000)
    source["y"] = 1.5
    source["z"]["r"] = -2
    source["w"] = b"abc"
    got, msg = _round_trip(source)
    assert got.dtype == dtype
    assert got.dtype.fields == dtype.fields
    assert got.dtype.itemsize == 96
    assert got.tobytes() == source.tobytes()
    assert _inside(got, msg)


def test_aligned_struct_flag_is_kept() -> None:
    dtype = np.dtype([("a", "u1"), ("b", "<f8")], align=True)
    got, _ = _round_trip(np.ones(3, dtype))
    assert got.dtype == dtype and got.dtype.isalignedstruct


def test_fortran_order_is_kept_without_copy() -> None:
    source = np.asfortranarray(np.arange(300 * 400, dtype=np.float64).reshape(300, 400))
    got, msg = _round_trip(source)
    assert got.flags.f_contiguous and not got.flags.c_contiguous
    np.testing.assert_array_equal(got, source)
    assert _inside(got, msg)


def test_non_contiguous_array_is_copied_once_to_c_order() -> None:
    base = np.arange(400 * 400, dtype=np.int32).reshape(400, 400)
    source = base[::2, 1::3]
    got, msg = _round_trip(source)
    np.testing.assert_array_equal(got, source)
    assert got.flags.c_contiguous and _inside(got, msg)


@pytest.mark.parametrize(
    "source",
    [
        np.array(3.5),
        np.array(b"xyz"),
        np.zeros((0,), np.float32),
        np.zeros((3, 0, 2), np.int16),
        np.zeros((0,), "S0"),
        np.array([1, 2, 3], np.int8),
    ],
    ids=["0d", "0d-bytes", "empty", "empty-3d", "itemsize-0", "tiny"],
)
def test_small_zero_d_and_empty_arrays(source: np.ndarray) -> None:
    got, _ = _round_trip(source)
    assert got.dtype == source.dtype and got.shape == source.shape
    np.testing.assert_array_equal(got, source)
    assert not got.flags.writeable


def test_small_array_stays_in_band() -> None:
    codec = zcser.Codec(threshold=1024)
    assert codec.plan(np.zeros(100, np.uint8)).buffers == []
    assert len(codec.plan(np.zeros(1024, np.uint8)).buffers) == 1


def test_copy_true_gives_private_writable_arrays() -> None:
    source = np.arange(BIG, dtype=np.float32)
    got, msg = _round_trip({"a": source, "b": np.arange(3)}, copy=True)
    assert got["a"].flags.writeable and got["b"].flags.writeable
    assert not _inside(got["a"], msg)
    got["a"][0] = 42
    assert zcser.Codec().decode(msg)["a"][0] == 0


def test_object_arrays_travel_in_band_element_by_element() -> None:
    source = np.empty((2, 2), dtype=object)
    source[:] = [[1, "two"], [None, np.arange(3)]]
    got, _ = _round_trip(source)
    assert got.dtype == object and got.shape == (2, 2)
    assert got[0, 1] == "two" and got[1, 0] is None
    np.testing.assert_array_equal(got[1, 1], np.arange(3))


def test_structured_dtype_with_objects_is_refused() -> None:
    source = np.zeros(2, [("a", "i4"), ("b", "O")])
    with pytest.raises(UnsupportedType, match="separate arrays"):
        zcser.Codec().plan(source)


@pytest.mark.parametrize(
    "scalar",
    [
        np.float32(1.5),
        np.float16(-2),
        np.int8(-3),
        np.uint64(2**63),
        np.bool_(True),
        np.complex64(1 - 2j),
        np.longdouble(1) / 3,
        np.datetime64("2024-02-29T12:00", "m"),
        np.timedelta64(5, "ms"),
        np.str_("héllo"),
        np.bytes_(b"ab"),
        np.zeros(1, [("a", "<i2"), ("b", ">f4")])[0],
    ],
)
def test_numpy_scalars_round_trip(scalar: np.generic) -> None:
    got, _ = _round_trip(scalar)
    assert type(got) is type(scalar)
    assert got.dtype == scalar.dtype
    assert got.tobytes() == scalar.tobytes()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_matrix_and_masked_array() -> None:
    matrix = np.asmatrix(np.arange(6.0).reshape(2, 3))
    masked = np.ma.masked_array(np.arange(BIG, dtype=np.int32), mask=np.arange(BIG) % 3 == 0)
    masked.fill_value = -7
    got, msg = _round_trip({"m": matrix, "ma": masked})
    assert isinstance(got["m"], np.matrix)
    np.testing.assert_array_equal(got["m"], matrix)
    assert isinstance(got["ma"], np.ma.MaskedArray)
    np.testing.assert_array_equal(got["ma"].mask, masked.mask)
    np.testing.assert_array_equal(got["ma"].data, masked.data)
    assert got["ma"].fill_value == -7
    assert _inside(got["ma"].data, msg)


def test_array_subclasses_other_than_matrix_and_masked_are_refused() -> None:
    class Sub(np.ndarray):
        pass

    with pytest.raises(zcser.errors.UnregisteredType, match=r"codec\.register"):
        zcser.Codec().plan(np.zeros(3).view(Sub))


@pytest.mark.parametrize(
    "descr",
    [
        "O",
        "<f4,O",
        "x" * 100,
        {"names": ["a"], "formats": ["O"], "offsets": [0], "itemsize": 8, "aligned": False},
        {"names": ["a"], "formats": ["<f4"], "offsets": [-1], "itemsize": 8, "aligned": False},
        {"names": "a", "formats": [], "offsets": [], "itemsize": 8, "aligned": False},
        {"base": "<f4", "shape": [-1]},
        {"base": "O", "shape": [2]},
        {"evil": "__import__('os')"},
        ["<f4"],
        "nonsense",
    ],
)
def test_hostile_dtype_descriptions_raise_corrupt_message(descr: Any) -> None:
    with pytest.raises(CorruptMessage):
        _numpy._parse_descr(json.loads(json.dumps(descr)))


def test_deeply_nested_dtype_description_is_refused() -> None:
    descr: Any = "<f4"
    for _ in range(40):
        descr = {"base": descr, "shape": [1]}
    with pytest.raises(CorruptMessage, match="deeply"):
        _numpy._parse_descr(descr)


def test_buffer_size_disagreeing_with_shape_is_corrupt() -> None:
    codec = zcser.Codec()
    msg = _encode(codec, np.zeros(BIG, np.float64))
    table = 32  # the message header's size (docs/format.md)
    length = int.from_bytes(msg[table + 8 : table + 16], "little")
    msg[table + 8 : table + 16] = (length - 8).to_bytes(8, "little")
    with pytest.raises(CorruptMessage, match="metadata says"):
        codec.decode(msg)
