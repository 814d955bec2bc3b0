"""pandas adapter: frames, series and indexes keep dtypes and labels; numeric data is zero-copy."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import zcser
from zcser.errors import UnsupportedType

THRESHOLD = 64
CODEC = zcser.Codec(threshold=THRESHOLD)
N = 500


def roundtrip(obj: Any, copy: bool = False) -> tuple[Any, np.ndarray]:
    """Encode `obj` into fresh memory and decode it from there; returns (result, memory)."""
    plan = CODEC.plan(obj)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem)
    return CODEC.decode(mem[:used], copy=copy), mem[:used]


def frame() -> pd.DataFrame:
    """A frame with one column of each common dtype and a named integer index."""
    df = pd.DataFrame(
        {
            "f64": np.linspace(0, 1, N),
            "i32": np.arange(N, dtype=np.int32),
            "u8": (np.arange(N) % 256).astype(np.uint8),
            "bool": np.arange(N) % 3 == 0,
            "naive": pd.date_range("2024-01-01", periods=N, freq="min"),
            "tz": pd.date_range("2024-01-01", periods=N, freq="h", tz="Europe/Paris"),
            "delta": pd.to_timedelta(np.arange(N), unit="s"),
            "cat": pd.Categorical(
                [f"c{i % 4}" for i in range(N)], categories=["c3", "c2", "c1", "c0"], ordered=True
            ),
            "nullable": pd.array([None if i % 5 == 0 else i for i in range(N)], dtype="Int64"),
            "str": [f"s{i}" for i in range(N)],
            "float_nan": np.where(np.arange(N) % 7 == 0, np.nan, 1.5),
        },
        index=pd.Index(np.arange(N, dtype=np.int64) * 3, name="key"),
    )
    df.columns.name = "fields"
    return df


def test_dataframe_round_trips_with_dtypes_index_and_names() -> None:
    df = frame()
    out, _ = roundtrip(df)
    pd.testing.assert_frame_equal(out, df, check_freq=False)
    assert out.dtypes.to_dict() == df.dtypes.to_dict()
    assert (out.index.name, out.columns.name) == ("key", "fields")


@pytest.mark.parametrize("column", ["f64", "i32", "u8", "bool", "naive", "delta", "float_nan"])
def test_numeric_and_datetime_columns_are_zero_copy(column: str) -> None:
    out, mem = roundtrip(frame())
    values = out[column].to_numpy()
    assert np.shares_memory(values, mem)
    assert not values.flags.writeable


def test_the_index_is_zero_copy() -> None:
    out, mem = roundtrip(frame())
    assert np.shares_memory(out.index.to_numpy(), mem)


def test_received_frames_are_read_only_and_copy_true_makes_them_private() -> None:
    df = frame()
    out, mem = roundtrip(df)
    with pytest.raises(ValueError, match="read-only"):
        out.loc[out.index[0], "f64"] = 5.0
    copied, mem = roundtrip(df, copy=True)
    assert not np.shares_memory(copied["f64"].to_numpy(), mem)
    copied.loc[copied.index[0], "f64"] = 5.0
    assert copied["f64"].iloc[0] == 5.0


@pytest.mark.parametrize(
    "columns",
    [
        pd.Index([3, 1, 2]),
        pd.Index(["a", "a", "b"]),
        pd.Index([0, "x", 2.5]),
        pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["outer", "inner"]),
    ],
    ids=["ints", "duplicates", "mixed", "multi"],
)
def test_column_labels_of_any_kind_survive(columns: pd.Index) -> None:
    df = pd.DataFrame(np.arange(3 * N, dtype=np.float64).reshape(N, 3), columns=columns)
    out, mem = roundtrip(df)
    pd.testing.assert_frame_equal(out, df)
    assert np.shares_memory(out.iloc[:, 1].to_numpy(), mem)


@pytest.mark.parametrize(
    "index",
    [
        pd.RangeIndex(5, 5 + 2 * N, 2, name="r"),
        pd.date_range("2020-01-01", periods=N, tz="UTC", name="when"),
        pd.MultiIndex.from_arrays([np.arange(N) % 5, [f"k{i}" for i in range(N)]], names=["a", 7]),
        pd.CategoricalIndex([f"c{i % 3}" for i in range(N)], name="c"),
        pd.Index([f"s{i}" for i in range(N)], name=None),
    ],
    ids=["range", "datetime_tz", "multi", "categorical", "strings"],
)
def test_index_kinds_survive_in_frames_and_alone(index: pd.Index) -> None:
    df = pd.DataFrame({"v": np.arange(N, dtype=np.float32)}, index=index)
    out, _ = roundtrip(df)
    pd.testing.assert_frame_equal(out, df, check_freq=False)
    alone, _ = roundtrip(index)
    assert alone.equals(index)
    assert (alone.names, alone.dtype) == (index.names, index.dtype)
    assert isinstance(alone, type(index)) or isinstance(index, pd.RangeIndex)


@pytest.mark.parametrize("name", [None, "price", 3, ("a", "b")])
def test_series_keeps_name_dtype_and_is_zero_copy(name: Any) -> None:
    series = pd.Series(
        np.arange(N, dtype=np.float64), index=pd.Index(np.arange(N) * 2, name="t"), name=name
    )
    out, mem = roundtrip(series)
    pd.testing.assert_series_equal(out, series)
    assert out.name == name
    assert np.shares_memory(out.to_numpy(), mem)


def test_categorical_and_tz_series_round_trip() -> None:
    df = frame()
    for column in ("cat", "tz", "nullable", "str"):
        out, _ = roundtrip(df[column])
        pd.testing.assert_series_equal(out, df[column], check_freq=False)


def test_frames_inside_python_objects_and_empty_frames() -> None:
    obj = {"a": frame(), "b": [pd.DataFrame(), pd.DataFrame({"x": pd.Series([], dtype="int16")})]}
    out, _ = roundtrip(obj)
    pd.testing.assert_frame_equal(out["a"], obj["a"], check_freq=False)
    pd.testing.assert_frame_equal(
        out["b"][0], obj["b"][0], check_column_type=False, check_index_type=False
    )
    pd.testing.assert_frame_equal(
        out["b"][1], obj["b"][1], check_column_type=False, check_index_type=False
    )


def test_object_columns_of_mixed_types_raise_with_advice() -> None:
    df = pd.DataFrame({"mixed": [1, "two", 3.0]})
    with pytest.raises(UnsupportedType, match="astype"):
        CODEC.plan(df)


def test_received_frame_keeps_the_owner_alive_until_the_last_view_dies() -> None:
    class Lease:
        pass

    df = frame()
    plan = CODEC.plan(df)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem)
    lease = Lease()
    released = weakref.ref(lease)
    out = CODEC.decode(mem[:used], owner=lease)
    values = out["f64"].to_numpy()
    del lease, out
    gc.collect()
    assert released() is not None
    assert np.array_equal(values, df["f64"].to_numpy())
    del values
    gc.collect()
    assert released() is None


def test_a_reader_that_never_imported_pandas_decodes_frames(tmp_path: Path) -> None:
    df = frame()
    plan = CODEC.plan(df)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem, base_address=0)
    path = tmp_path / "frame.msg"
    path.write_bytes(mem[:used].tobytes())
    expected = tmp_path / "frame.pkl"
    df.to_pickle(expected)
    script = textwrap.dedent(
        f"""
        import mmap, sys, numpy as np, zcser
        codec = zcser.Codec(threshold={THRESHOLD})
        assert "pandas" not in sys.modules, "pandas imported too early"
        with open({str(path)!r}, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mem = np.frombuffer(mm, np.uint8)
        out = codec.decode(mem)
        import pandas as pd
        pd.testing.assert_frame_equal(out, pd.read_pickle({str(expected)!r}), check_freq=False)
        assert np.shares_memory(out["f64"].to_numpy(), mem), "not zero-copy"
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
