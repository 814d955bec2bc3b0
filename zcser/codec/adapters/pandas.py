"""pyfory serializers for pandas DataFrame, Series and Index, one column at a time.

A column (or index level) with a plain numpy dtype (bool, int, uint, float, complex,
datetime64, timedelta64) travels as its raw bytes and comes back as a zero-copy, read-only
numpy view of the message memory (assigning into it raises ValueError "assignment destination is
read-only": decode with copy=True or call `.copy()` to modify). Any other column (categorical,
datetime with tz, nullable Int64/boolean, string, object, Arrow-backed) travels as a one-column
Arrow table whose pandas metadata restores the dtype. Labels (column names, index and series
names) travel as Python values, so non-string and duplicate labels survive; a RangeIndex travels
as three numbers and a MultiIndex as its levels and codes. A DatetimeIndex `freq` is not kept.

pandas is imported lazily, like torch in `_torch`: the reader imports it on the first frame.

Against hostile bytes: converting an Arrow column to pandas allocates per row (a pointer, a
mask, a dict or array per nested row), so the conversion is charged to the decode budget
before it runs (`_conversion_cost`); MultiIndex codes index the levels, so they are private
copies, never views of memory the peer can still write.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import numpy as np
import pyarrow as pa
from pyfory.serializer import Serializer

from zcser.codec import typeids as _typeids
from zcser.codec.adapters.arrow import all_subclasses, read_table, register_family, write_table
from zcser.codec.oob import charge, copy_requested, read_raw, write_raw
from zcser.errors import CorruptMessage, UnsupportedType

_VALUES_NUMPY = 0
_VALUES_ARROW = 1
_INDEX_RANGE = 0
_INDEX_FLAT = 1
_INDEX_MULTI = 2
_FLAG_MULTI_LABELS = 0x01
_NUMPY_KINDS = frozenset("biufcmM")
_ARROW_COLUMN = "v"

# Bytes pandas allocates per row when it converts an Arrow column, measured with tracemalloc
# over 100,000 rows (pandas 3, pyarrow 26): a pointer or 64-bit value per row of object or
# widened columns; one Python container per row of a nested column (numpy array per list row
# 112 + 8, list of tuples per map row 120 + 8, dict per struct row 184 + 8).
_SLOT = 8
_CONTAINER = 184
_NUMBER_KINDS = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_timestamp,
    pa.types.is_duration,
)


class _DataFrameTag:
    """Stands for pd.DataFrame in the registry until pandas is imported."""


class _SeriesTag:
    """Stands for pd.Series in the registry until pandas is imported."""


class _IndexTag:
    """Stands for pd.Index in the registry until pandas is imported."""


def _pd() -> Any:
    """The pandas module, imported on first use; UnsupportedType if it is not installed."""
    try:
        return importlib.import_module("pandas")
    except ImportError as exc:
        raise UnsupportedType("the message holds a pandas object: pip install pandas") from exc


def _damaged(what: str, exc: Exception | None = None) -> CorruptMessage:
    """The error for pandas data that does not fit together."""
    detail = f" ({exc})" if exc is not None else ""
    return CorruptMessage(f"pandas {what} is malformed{detail}: the message is damaged")


def _write_values(ctx: Any, values: Any) -> None:
    """One column or index level: raw numpy bytes when its dtype allows, else an Arrow table."""
    dtype = values.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in _NUMPY_KINDS:
        data = np.ascontiguousarray(values.to_numpy(copy=False))
        ctx.write_uint8(_VALUES_NUMPY)
        ctx.write_string(data.dtype.str)
        ctx.write_var_uint64(len(data))
        write_raw(ctx, data.view(np.uint8))
        return
    frame = _pd().DataFrame({_ARROW_COLUMN: values}, copy=False)
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise UnsupportedType(
            f"pandas values of dtype {dtype} cannot be sent ({exc}); give an object column a "
            "single type first, e.g. df[col].astype(str)"
        ) from exc
    ctx.write_uint8(_VALUES_ARROW)
    write_table(ctx, table)


def _read_values(ctx: Any) -> Any:
    """A numpy array (zero-copy) or pandas extension array written by `_write_values`."""
    kind = ctx.read_uint8()
    if kind == _VALUES_NUMPY:
        dtype_str = ctx.read_string()
        count = ctx.read_var_uint64()
        raw = read_raw(ctx)
        try:
            dtype = np.dtype(dtype_str)
        except TypeError as exc:
            raise _damaged(f"dtype {dtype_str!r}", exc) from exc
        if dtype.kind not in _NUMPY_KINDS or dtype.fields is not None:
            raise _damaged(f"dtype {dtype_str!r}")
        if raw.nbytes != count * dtype.itemsize:
            raise _damaged(f"column of {count} x {dtype} in {raw.nbytes} bytes")
        return np.frombuffer(raw, dtype=dtype, count=count)
    if kind != _VALUES_ARROW:
        raise _damaged(f"column kind {kind}")
    table = read_table(ctx)
    if table.num_columns != 1:
        raise _damaged("Arrow column")
    column = table.column(0)
    cost = sum(_conversion_cost(chunk) - chunk.nbytes for chunk in column.chunks)
    charge(max(cost, 0), f"converting an Arrow column of {len(column)} rows to pandas")
    try:
        frame = table.to_pandas() if copy_requested() else table.to_pandas(split_blocks=True)
    except (pa.ArrowException, KeyError, TypeError, ValueError) as exc:
        raise _damaged("Arrow column metadata", exc) from exc
    return frame.iloc[:, 0].array


def _conversion_cost(arr: pa.Array) -> int:
    """Bytes `to_pandas` may allocate for `arr` (an upper bound by type, see `_SLOT`).

    The caller charges what exceeds the array's own bytes (the budget holds the message's size).
    Fixed-width values cost their width plus a mask byte; dictionaries their codes plus their
    values; every other row a slot, and a row of a nested type a container too. Python scalars
    (bytes, Decimal, dates) are built from at least 4 bytes of the message each and are not
    charged beyond their slot; strings become Arrow-backed or deduplicated objects."""
    t = arr.type
    n = len(arr)
    if pa.types.is_dictionary(t):
        codes: int = t.index_type.bit_width // 8
        return n * codes + _conversion_cost(arr.dictionary)
    if any(is_kind(t) for is_kind in _NUMBER_KINDS):
        width: int = t.bit_width // 8
        return n * (width + 1)
    if pa.types.is_boolean(t):
        return n * 2
    if pa.types.is_struct(t):
        return n * (_SLOT + _CONTAINER) + sum(
            _conversion_cost(arr.field(i)) for i in range(t.num_fields)
        )
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return n * (_SLOT + _CONTAINER) + _conversion_cost(arr.values)
    if pa.types.is_map(t):
        return n * (_SLOT + _CONTAINER) + _conversion_cost(arr.keys) + _conversion_cost(arr.items)
    return n * _SLOT


def _write_index(ctx: Any, index: Any) -> None:
    """An index without its names: a range as numbers, a MultiIndex as levels and codes."""
    pd = _pd()
    if isinstance(index, pd.RangeIndex):
        ctx.write_uint8(_INDEX_RANGE)
        for number in (index.start, index.stop, index.step):
            ctx.write_varint64(number)
    elif isinstance(index, pd.MultiIndex):
        ctx.write_uint8(_INDEX_MULTI)
        ctx.write_var_uint32(index.nlevels)
        for level, codes in zip(index.levels, index.codes, strict=True):
            _write_index(ctx, level)
            _write_values(ctx, pd.Series(codes, copy=False))
    else:
        ctx.write_uint8(_INDEX_FLAT)
        _write_values(ctx, index)


def _read_index(ctx: Any) -> Any:
    """The index written by `_write_index` (unnamed)."""
    pd = _pd()
    kind = ctx.read_uint8()
    try:
        if kind == _INDEX_RANGE:
            start, stop, step = (ctx.read_varint64() for _ in range(3))
            rows = len(range(start, stop, step))
            charge((rows + 7) // 8, f"a RangeIndex of {rows} rows")
            return pd.RangeIndex(start, stop, step)
        if kind == _INDEX_FLAT:
            return pd.Index(_read_values(ctx), copy=False)
        if kind == _INDEX_MULTI:
            levels, codes = [], []
            for _ in range(ctx.read_var_uint32()):
                levels.append(_read_index(ctx))
                # codes index the level: a private copy, not a view the peer can rewrite
                codes.append(np.array(_read_values(ctx), copy=True))
            return pd.MultiIndex(levels=levels, codes=codes, verify_integrity=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _damaged("index", exc) from exc
    raise _damaged(f"index kind {kind}")


def _write_labels(ctx: Any, index: Any) -> None:
    """Axis labels and level names as Python values (for column labels)."""
    multi = isinstance(index, _pd().MultiIndex)
    ctx.write_uint8(_FLAG_MULTI_LABELS if multi else 0)
    ctx.write_ref(list(index.names))
    ctx.write_ref(list(index))


def _read_labels(ctx: Any) -> Any:
    """The labels written by `_write_labels` as a pandas Index."""
    pd = _pd()
    flags = ctx.read_uint8()
    names = ctx.read_ref()
    labels = ctx.read_ref()
    if not isinstance(names, list) or not isinstance(labels, list) or flags & ~_FLAG_MULTI_LABELS:
        raise _damaged("axis labels")
    try:
        if flags & _FLAG_MULTI_LABELS:
            return pd.MultiIndex.from_tuples(labels, names=names)
        return pd.Index(labels, name=names[0] if names else None, tupleize_cols=False)
    except (TypeError, ValueError) as exc:
        raise _damaged("axis labels", exc) from exc


def _write_named_index(ctx: Any, index: Any) -> None:
    """An index and its level names."""
    ctx.write_ref(list(index.names))
    _write_index(ctx, index)


def _read_named_index(ctx: Any) -> Any:
    """The index written by `_write_named_index`."""
    names = ctx.read_ref()
    index = _read_index(ctx)
    if not isinstance(names, list) or len(names) != index.nlevels:
        raise _damaged("index names")
    return index.set_names(names)


def _write_frame(ctx: Any, frame: Any) -> None:
    """Column labels, the index, then each column's values."""
    _write_labels(ctx, frame.columns)
    _write_named_index(ctx, frame.index)
    ctx.write_var_uint32(frame.shape[1])
    for i in range(frame.shape[1]):
        _write_values(ctx, frame.iloc[:, i])


def _read_frame(ctx: Any) -> Any:
    """The DataFrame written by `_write_frame`, its numpy columns viewing the message."""
    columns = _read_labels(ctx)
    index = _read_named_index(ctx)
    values = [_read_values(ctx) for _ in range(ctx.read_var_uint32())]
    if len(values) != len(columns):
        raise _damaged("column count")
    try:
        frame = _pd().DataFrame(dict(enumerate(values)), index=index, copy=False)
    except (TypeError, ValueError) as exc:
        raise _damaged("frame", exc) from exc
    frame.columns = columns
    return frame


class DataFrameSerializer(Serializer):
    """pd.DataFrame column by column; numpy-dtype columns and index come back zero-copy."""

    def write(self, write_context: Any, value: Any) -> None:
        _write_frame(write_context, value)

    def read(self, read_context: Any) -> Any:
        return _read_frame(read_context)


class SeriesSerializer(Serializer):
    """pd.Series: its name, its index, then its values."""

    def write(self, write_context: Any, value: Any) -> None:
        write_context.write_ref(value.name)
        _write_named_index(write_context, value.index)
        _write_values(write_context, value)

    def read(self, read_context: Any) -> Any:
        name = read_context.read_ref()
        index = _read_named_index(read_context)
        values = _read_values(read_context)
        try:
            return _pd().Series(values, index=index, name=name, copy=False)
        except (TypeError, ValueError) as exc:
            raise _damaged("series", exc) from exc


class IndexSerializer(Serializer):
    """pd.Index of any kind, with its names."""

    def write(self, write_context: Any, value: Any) -> None:
        _write_named_index(write_context, value)

    def read(self, read_context: Any) -> Any:
        return _read_named_index(read_context)


NAME = "pandas"
"""The name the stream schema carries for this adapter: fixed across releases (it is part
of the wire format), whatever the module is called."""


def install(fory: Any) -> None:
    """Register the pandas serializers; alias the real pandas classes only if pandas is imported."""
    pd: Any = sys.modules.get("pandas")
    resolver = fory.type_resolver
    loaded = pd is not None and hasattr(pd, "DataFrame")
    table: list[tuple[type, int, type, list[Any]]] = [
        (_DataFrameTag, _typeids.PANDAS_DATAFRAME, DataFrameSerializer, []),
        (_SeriesTag, _typeids.PANDAS_SERIES, SeriesSerializer, []),
        (_IndexTag, _typeids.PANDAS_INDEX, IndexSerializer, []),
    ]
    if loaded:
        table[0][3].append(pd.DataFrame)
        table[1][3].append(pd.Series)
        table[2][3].extend(all_subclasses(pd.Index))
    for tag, type_id, serializer_cls, family in table:
        register_family(fory, tag, type_id, serializer_cls(resolver, tag), family)
