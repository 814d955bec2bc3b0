"""pyfory serializers for pandas DataFrame, Series and Index, carried as an Arrow table.

The frame goes through `pa.Table.from_pandas` (pandas metadata keeps dtypes: categorical,
datetime with tz, nullable Int64/boolean, string, Arrow-backed) and comes back with
`to_pandas(split_blocks=True)`, which leaves numeric and datetime columns without nulls as
zero-copy read-only views of the message memory (assigning into them raises ValueError
"assignment destination is read-only": decode with copy=True or call `.copy()` to modify).
Labels (column names, index and series names) travel as Python values beside the table, so
non-string and duplicate labels survive; the Arrow fields use positional names.

pandas is imported lazily, like torch in `_torch`: the reader imports it on the first frame.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
from pyfory.serializer import Serializer

from zcser import _typeids
from zcser._arrow import all_subclasses, read_table, register_family, write_table
from zcser._oob import copy_requested
from zcser.errors import CorruptMessage, UnsupportedType

_FLAG_MULTI = 0x01


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


def _write_labels(ctx: Any, index: Any) -> None:
    """An axis' labels and level names as Python values (the data stays in the table)."""
    multi = isinstance(index, _pd().MultiIndex)
    ctx.write_uint8(_FLAG_MULTI if multi else 0)
    ctx.write_ref(list(index.names))
    ctx.write_ref(list(index))


def _read_labels(ctx: Any) -> Any:
    """The axis written by `_write_labels` as a pandas Index."""
    pd = _pd()
    flags = ctx.read_uint8()
    names = ctx.read_ref()
    labels = ctx.read_ref()
    if not isinstance(names, list) or not isinstance(labels, list) or flags & ~_FLAG_MULTI:
        raise CorruptMessage("pandas axis labels are malformed: the message is damaged")
    try:
        if flags & _FLAG_MULTI:
            return pd.MultiIndex.from_tuples(labels, names=names)
        return pd.Index(labels, name=names[0] if names else None, tupleize_cols=False)
    except (TypeError, ValueError) as exc:
        raise CorruptMessage(
            f"pandas axis labels are malformed ({exc}): the message is damaged"
        ) from exc


def _to_table(frame: Any) -> pa.Table:
    """The frame's data and index as an Arrow table with positional field names."""
    pd = _pd()
    plain = frame.set_axis([f"c{i}" for i in range(frame.shape[1])], axis=1)
    plain.index = plain.index.set_names([None] * plain.index.nlevels)
    if not isinstance(plain.index, pd.RangeIndex):
        plain.index = plain.index.set_names([f"i{i}" for i in range(plain.index.nlevels)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table = pa.Table.from_pandas(plain, preserve_index=None)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise UnsupportedType(
            f"this pandas data cannot be sent ({exc}); give each object column a single type, "
            "e.g. df[col].astype(str)"
        ) from exc
    return _keep_nan(plain, table)


def _keep_nan(frame: Any, table: pa.Table) -> pa.Table:
    """Float columns with NaN as plain values, not Arrow nulls, so they come back zero-copy."""
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        if (
            column.dtype.kind == "f"
            and isinstance(column.dtype, np.dtype)
            and table.column(i).null_count
        ):
            values = pa.array(column.to_numpy(), from_pandas=False)
            table = table.set_column(i, table.field(i), values)
    return table


def _from_table(table: pa.Table) -> Any:
    """The frame stored by `_to_table` (labels still positional)."""
    try:
        if copy_requested():
            return table.to_pandas()
        return table.to_pandas(split_blocks=True)
    except (pa.ArrowException, KeyError, TypeError, ValueError) as exc:
        raise CorruptMessage(
            f"pandas metadata in the message is invalid ({exc}): the message is damaged"
        ) from exc


def _write_frame(ctx: Any, frame: Any) -> None:
    """Column labels, index labels' names, then the table."""
    _write_labels(ctx, frame.columns)
    ctx.write_ref(list(frame.index.names))
    write_table(ctx, _to_table(frame))


def _read_frame(ctx: Any) -> Any:
    """The DataFrame written by `_write_frame`."""
    columns = _read_labels(ctx)
    index_names = ctx.read_ref()
    frame = _from_table(read_table(ctx))
    if (
        len(columns) != frame.shape[1]
        or not isinstance(index_names, list)
        or len(index_names) != frame.index.nlevels
    ):
        raise CorruptMessage("pandas labels do not match the table: the message is damaged")
    frame.columns = columns
    frame.index = frame.index.set_names(index_names)
    return frame


class DataFrameSerializer(Serializer):
    """pd.DataFrame through an Arrow table; numeric columns come back zero-copy."""

    def write(self, write_context: Any, value: Any) -> None:
        _write_frame(write_context, value)

    def read(self, read_context: Any) -> Any:
        return _read_frame(read_context)


class SeriesSerializer(Serializer):
    """pd.Series as a one-column frame plus its name."""

    def write(self, write_context: Any, value: Any) -> None:
        write_context.write_ref(value.name)
        _write_frame(write_context, value.to_frame(name=0))

    def read(self, read_context: Any) -> Any:
        name = read_context.read_ref()
        frame = _read_frame(read_context)
        if frame.shape[1] != 1:
            raise CorruptMessage(
                "a pandas Series must travel as one column: the message is damaged"
            )
        series = frame.iloc[:, 0]
        series.name = name
        return series


class IndexSerializer(Serializer):
    """pd.Index (any subclass) as the index of an empty frame."""

    def write(self, write_context: Any, value: Any) -> None:
        _write_frame(write_context, _pd().DataFrame(index=value))

    def read(self, read_context: Any) -> Any:
        return _read_frame(read_context).index


def install(fory: Any) -> None:
    """Register the pandas serializers; alias the real pandas classes only if pandas is imported."""
    pd: Any = sys.modules.get("pandas")
    resolver = fory.type_resolver
    loaded = pd is not None and hasattr(pd, "DataFrame")
    table: list[tuple[type, int, type, list[Any]]] = [
        (
            _DataFrameTag,
            _typeids.PANDAS_DATAFRAME,
            DataFrameSerializer,
            [pd.DataFrame] if loaded else [],
        ),
        (_SeriesTag, _typeids.PANDAS_SERIES, SeriesSerializer, [pd.Series] if loaded else []),
        (
            _IndexTag,
            _typeids.PANDAS_INDEX,
            IndexSerializer,
            all_subclasses(pd.Index) if loaded else [],
        ),
    ]
    for tag, type_id, serializer_cls, family in table:
        register_family(fory, tag, type_id, serializer_cls(resolver, tag), family)
