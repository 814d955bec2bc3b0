"""Arrow and pandas decodes stay within the decode budget: what the message declares but does
not carry (rows of null arrays, thousands of chunks, pandas rows of nested columns) is paid
for before it is built, so a small hostile message is refused instead of allocating."""

from __future__ import annotations

import gc
import re
import tracemalloc
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import zcser
from zcser.codec import oob
from zcser.codec.adapters import arrow as arrow_adapter
from zcser.codec.adapters import pandas as pandas_adapter
from zcser.errors import CorruptMessage

THRESHOLD = 64
CODEC = zcser.Codec(threshold=THRESHOLD)


def message(obj: Any) -> np.ndarray:
    """`obj` encoded into fresh memory."""
    plan = CODEC.plan(obj)
    mem = np.zeros(plan.nbytes, np.uint8)
    return mem[: plan.write_into(mem)]


def decode_in_budget(mem: np.ndarray, allowance: int = oob.DEFAULT_ALLOWANCE) -> Any:
    """Decode with the budget a Codec gives a message: its size plus the allowance."""
    codec = CODEC if allowance == oob.DEFAULT_ALLOWANCE else zcser.Codec(decode_allowance=allowance)
    return codec.decode(mem)


HUGE = 1 << 40


def nulls(rows: int) -> pa.Array:
    """A null array of `rows` rows without any buffer (pa.nulls allocates a bitmap)."""
    return pa.Array.from_buffers(pa.null(), rows, [None], null_count=rows)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nulls(HUGE),
        lambda: pa.Array.from_buffers(pa.struct([]), HUGE, [None], children=[]),
        lambda: pa.Array.from_buffers(pa.binary(0), HUGE, [None, pa.py_buffer(b"")]),
        lambda: pa.Array.from_buffers(
            pa.list_(pa.int8(), 0), HUGE, [None], children=[pa.array([], pa.int8())]
        ),
        lambda: pa.chunked_array([nulls(1 << 24)]),
        lambda: pa.RecordBatch.from_arrays([nulls(HUGE)], names=["x"]).drop_columns(["x"]),
        lambda: pa.Table.from_arrays([nulls(HUGE)], names=["x"]),
    ],
    ids=["null", "empty_struct", "binary0", "fixed_list0", "chunked_null", "batch", "table"],
)
def test_rows_no_buffer_carries_are_charged_to_the_budget(make: Any) -> None:
    mem = message(make())
    assert mem.nbytes < 4096
    with pytest.raises(CorruptMessage, match="rows"):
        decode_in_budget(mem)


def test_rows_no_buffer_carries_decode_within_a_bigger_allowance() -> None:
    arr = nulls(1 << 24)
    out = decode_in_budget(message(arr), allowance=(1 << 21) + 4096)
    assert (len(out), out.null_count) == (1 << 24, 1 << 24)


def test_thousands_of_tiny_chunks_are_refused_by_their_object_cost() -> None:
    chunks = [pa.array([i % 100], pa.int8()) for i in range(20_000)]
    mem = message(pa.chunked_array(chunks))
    assert mem.nbytes < 200_000
    with pytest.raises(CorruptMessage, match="Arrow"):
        decode_in_budget(mem)


def test_a_wide_schema_is_charged_per_field() -> None:
    schema = pa.schema([pa.field(f"f{i}", pa.struct([("a", pa.null())])) for i in range(3000)])
    mem = message(schema)
    with pytest.raises(CorruptMessage, match="schema"):
        decode_in_budget(mem, allowance=0)
    assert decode_in_budget(mem, allowance=2 * 3000 * arrow_adapter.NODE_COST).equals(schema)


def _legit_table(rows: int) -> pa.Table:
    return pa.table(
        {
            "i": pa.array(np.arange(rows)),
            "s": pa.array([f"row{i}" for i in range(rows)]),
            "l": pa.array([[i] * (i % 3) for i in range(rows)], pa.list_(pa.int32())),
            "d": pa.array([f"c{i % 10}" for i in range(rows)]).dictionary_encode(),
            "n": pa.nulls(rows),
            "st": pa.array([{"a": i, "b": None} for i in range(rows)]),
        }
    )


@pytest.mark.parametrize("rows", [0, 10, 200_000])
def test_ordinary_tables_decode_within_the_default_budget(rows: int) -> None:
    table = _legit_table(rows)
    chunked = pa.concat_tables([table] * 20)
    for obj in (table, chunked):
        assert decode_in_budget(message(obj)).equals(obj)


def _forge_series_values(monkeypatch: pytest.MonkeyPatch, table: pa.Table) -> None:
    """Make the pandas adapter write `table` as the values of the next Series (a forged
    writer: what a hostile peer could send)."""

    def forged(ctx: Any, values: Any) -> None:
        ctx.write_uint8(pandas_adapter._VALUES_ARROW)
        arrow_adapter.write_table(ctx, table)

    monkeypatch.setattr(pandas_adapter, "_write_values", forged)


def _object_column(arr: pa.Array) -> pa.Table:
    """A one-column table whose pandas metadata asks for an object column."""
    frame = pd.DataFrame({"v": pd.Series([None], dtype=object)})
    metadata = pa.Table.from_pandas(frame, preserve_index=False).schema.metadata
    return pa.table({"v": arr}).replace_schema_metadata(metadata)


@pytest.mark.parametrize(
    "arr",
    [
        nulls(1 << 21),
        pa.Array.from_buffers(
            pa.struct([("a", pa.null())]), 1 << 18, [None], children=[nulls(1 << 18)]
        ),
        pa.array([[]] * (1 << 16), pa.list_(pa.int8())),
    ],
    ids=["null", "struct_of_null", "list_of_empty"],
)
def test_a_pandas_column_costing_more_than_its_message_is_refused_before_converting(
    monkeypatch: pytest.MonkeyPatch, arr: pa.Array
) -> None:
    _forge_series_values(monkeypatch, _object_column(arr))
    rows = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array([nulls(len(arr))])))
    mem = message(rows)
    monkeypatch.undo()
    assert mem.nbytes < 300_000
    with pytest.raises(CorruptMessage, match="to pandas"):
        decode_in_budget(mem)


def test_ordinary_frames_decode_within_the_default_budget() -> None:
    rows = 200_000
    df = pd.DataFrame(
        {
            "f": np.arange(rows, dtype=np.float64),
            "cat": pd.Categorical([f"c{i % 7}" for i in range(rows)]),
            "Int64": pd.array([None if i % 5 == 0 else i for i in range(rows)], dtype="Int64"),
            "boolean": pd.array([None if i % 3 else True for i in range(rows)], dtype="boolean"),
            "str": [f"s{i}" for i in range(rows)],
            "tz": pd.date_range("2024-01-01", periods=rows, freq="s", tz="UTC"),
        }
    )
    out = decode_in_budget(message(df))
    pd.testing.assert_frame_equal(out, df)


def test_a_range_index_longer_than_its_message_can_pay_for_is_refused() -> None:
    frame = pd.DataFrame(index=pd.RangeIndex(HUGE))
    mem = message(frame)
    with pytest.raises(CorruptMessage, match="RangeIndex"):
        decode_in_budget(mem)
    trusted = zcser.Codec(threshold=THRESHOLD, decode_allowance=1 << 40)
    assert len(trusted.decode(mem).index) == HUGE


def test_multiindex_codes_are_private_copies() -> None:
    rows = 5000
    index = pd.MultiIndex.from_arrays(
        [np.arange(rows) % 50, [f"k{i % 300}" for i in range(rows)]], names=["a", "b"]
    )
    series = pd.Series(np.arange(rows, dtype=np.float64), index=index)
    mem = message(series)
    out = CODEC.decode(mem)
    pd.testing.assert_series_equal(out, series)
    assert np.shares_memory(out.to_numpy(), mem), "values should stay zero-copy"
    for codes in out.index.codes:
        assert not np.shares_memory(np.asarray(codes), mem)


@pytest.mark.parametrize(
    ("arr", "short"),
    [
        (pa.array(np.arange(1000)), "values of 8 bytes (it needs 8000)"),
        (pa.array([f"s{i}" for i in range(1000)]), "offsets of 8 bytes (it needs 4004)"),
        (pa.array([[i] for i in range(1000)]), "offsets of 8 bytes (it needs 4004)"),
    ],
    ids=["int64", "string", "list"],
)
def test_a_length_its_buffers_do_not_carry_is_refused_before_the_array_is_built(
    monkeypatch: pytest.MonkeyPatch, arr: pa.Array, short: str
) -> None:
    real_span = arrow_adapter._span
    real_offsets = arrow_adapter._write_offsets

    def short_offsets(ctx: Any, t: Any, buf: Any, first: int, count: int) -> tuple[int, int]:
        arrow_adapter.write_raw(ctx, np.zeros(2, arrow_adapter._offset_dtype(t)))
        return 0, 0

    # a forged writer: every buffer cut to its first 8 bytes
    monkeypatch.setattr(arrow_adapter, "_span", lambda *a: real_span(*a)[:8])
    monkeypatch.setattr(arrow_adapter, "_write_offsets", short_offsets)
    mem = message(arr)
    monkeypatch.setattr(arrow_adapter, "_span", real_span)
    monkeypatch.setattr(arrow_adapter, "_write_offsets", real_offsets)
    with pytest.raises(CorruptMessage, match=re.escape(short)):
        CODEC.decode(mem)


@pytest.mark.parametrize(
    "make",
    [
        lambda i: pa.array([i % 100], pa.int8()),
        lambda i: pa.array([f"s{i}"]),
        lambda i: pa.array([[i % 100]], pa.list_(pa.int8())),
        lambda i: pa.array([f"c{i % 3}"]).dictionary_encode(),
    ],
    ids=["int8", "string", "list", "dictionary"],
)
def test_what_many_chunks_are_charged_covers_the_memory_they_keep(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = 5000
    mem = message(pa.chunked_array([make(i) for i in range(chunks)]))
    codec = zcser.Codec(threshold=THRESHOLD, decode_allowance=1 << 40)
    paid = [0]
    real = oob.DecodeState.charge

    def counting(self: oob.DecodeState, nbytes: int, what: str) -> None:
        paid[0] += nbytes
        real(self, nbytes, what)

    monkeypatch.setattr(oob.DecodeState, "charge", counting)
    gc.collect()
    tracemalloc.start()
    try:
        out = codec.decode(mem)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    charged = paid[0]
    assert out.num_chunks == chunks
    assert kept <= charged, (kept / chunks, charged / chunks)
