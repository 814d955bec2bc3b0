"""pyfory serializers for pyarrow Array, ChunkedArray, RecordBatch, Table, Tensor and types.

Every Arrow buffer travels through `_oob.write_raw` (out of band when big); value buffers come
back as zero-copy `pa.py_buffer`s over the message memory. Types and schemas travel in band as Arrow IPC
schema bytes (`pa.ipc.read_schema` is safe on bad input). A sliced array sends only the bytes of
its slice: fixed-width buffers are cut at a byte boundary and rebuilt with a bit offset below 8,
variable-length offsets are rebased (a small copy) when the slice does not start at zero.

The reader trusts nothing it has not copied. Buffers that index memory (offsets of strings,
binaries and lists, dictionary indices, validity bitmaps) are copied into private memory before
they are validated, so a peer that rewrites shared memory after validation can change values but
never send a read out of bounds; value buffers stay zero-copy views of the message. Every length
is checked against the buffers that carry it before the array is built (`_need`, then Arrow's
validation again), and what no buffer carries (null arrays, zero-width layouts) or what costs
memory per object (nodes, chunks, fields) is charged to the decode budget (`oob.charge`) before
it is built. Rebuilt arrays are fully validated, so bad offsets raise `CorruptMessage`, never a
crash.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
from pyfory.serializer import Serializer

from zcser.codec import typeids as _typeids
from zcser.codec.oob import charge, read_raw, read_raw_view, write_raw
from zcser.errors import CorruptMessage, UnsupportedType

_FLAG_VALIDITY = 0x08
_BIT_OFFSET_MASK = 0x07

_NULL = "null"
_BOOL = "bool"
_FIXED = "fixed"
_BINARY = "binary"
_LIST = "list"
_FIXED_LIST = "fixed_list"
_STRUCT = "struct"
_DICTIONARY = "dictionary"

_OFFSET_DTYPES: dict[pa.DataType, type[np.signedinteger[Any]]] = {
    pa.string(): np.int32,
    pa.binary(): np.int32,
    pa.large_string(): np.int64,
    pa.large_binary(): np.int64,
}


def all_subclasses(cls: type) -> list[type]:
    """`cls` and every class deriving from it that is defined now."""
    found: list[type] = [cls]
    subclasses: list[type] = cls.__subclasses__()
    for sub in subclasses:
        found.extend(c for c in all_subclasses(sub) if c not in found)
    return found


def register_family(
    fory: Any, cls: type, type_id: int, serializer: Any, family: Iterable[type]
) -> None:
    """Register `cls` under `type_id` and make each class of `family` write with the same id.

    pyfory under strict mode needs one registration per concrete class and refuses to share an
    id, so the other classes point at `cls`'s type info; the reader only ever sees `type_id`.
    """
    resolver = fory.type_resolver
    if cls not in resolver._types_info:
        fory.register_type(cls, type_id=type_id, serializer=serializer)
    info = resolver.get_type_info(cls)
    for sub in family:
        resolver._types_info.setdefault(sub, info)


def _unsupported(t: pa.DataType) -> UnsupportedType:
    """The error for an Arrow type zcser does not move, with the conversion to use instead."""
    return UnsupportedType(
        f"zcser cannot send Arrow type {t} (extension, union, view and run-end-encoded types "
        "are not supported): send ext_array.storage for an extension array, or cast to a plain "
        "type first, e.g. arr.cast(pa.string()) for string_view"
    )


def _kind(t: pa.DataType) -> str:
    """Which buffer layout an Arrow type uses, or UnsupportedType."""
    if isinstance(t, pa.BaseExtensionType):
        raise _unsupported(t)
    if pa.types.is_null(t):
        return _NULL
    if pa.types.is_boolean(t):
        return _BOOL
    if pa.types.is_dictionary(t):
        return _DICTIONARY
    if t in _OFFSET_DTYPES:
        return _BINARY
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        return _LIST
    if pa.types.is_fixed_size_list(t):
        return _FIXED_LIST
    if pa.types.is_struct(t):
        return _STRUCT
    try:
        width = t.bit_width
    except ValueError:
        raise _unsupported(t) from None
    if width % 8:
        raise _unsupported(t)
    return _FIXED


def _offset_dtype(t: pa.DataType) -> type[np.signedinteger[Any]]:
    """numpy dtype of the offsets buffer of a string/binary/list type."""
    if t in _OFFSET_DTYPES:
        return _OFFSET_DTYPES[t]
    return np.int64 if pa.types.is_large_list(t) else np.int32


def _span(buf: pa.Buffer | None, start: int, length: int) -> memoryview:
    """Bytes [start, start+length) of an Arrow buffer, zero-copy; empty when there are none."""
    if buf is None or length <= 0:
        return memoryview(b"")
    return memoryview(buf.slice(start, length))


def _bitmap_span(buf: pa.Buffer | None, first_bit: int, nbits: int) -> memoryview:
    """The bytes holding bits [first_bit, first_bit+nbits) where first_bit is a multiple of 8."""
    return _span(buf, first_bit // 8, (nbits + 7) // 8)


def _shifted_bitmap(buf: pa.Buffer, bit_offset: int, nbits: int) -> memoryview:
    """Bits [bit_offset, bit_offset+nbits) repacked to start at bit 0 (copies nbits/8 bytes)."""
    if bit_offset % 8 == 0:
        return _bitmap_span(buf, bit_offset, nbits)
    first_byte, skip = divmod(bit_offset, 8)
    raw = np.frombuffer(buf, dtype=np.uint8)[first_byte : first_byte + (skip + nbits + 7) // 8]
    bits = np.unpackbits(raw, bitorder="little")[skip : skip + nbits]
    return np.packbits(bits, bitorder="little").data


def _write_offsets(
    ctx: Any, t: pa.DataType, buf: pa.Buffer | None, first: int, count: int
) -> tuple[int, int]:
    """Send `count` + 1 offsets from entry `first`, rebased to 0; returns the (base, end) span."""
    dtype = _offset_dtype(t)
    if buf is None or buf.size == 0:
        offsets = np.zeros(count + 1, dtype=dtype)
    else:
        offsets = np.frombuffer(
            buf, dtype=dtype, count=count + 1, offset=first * np.dtype(dtype).itemsize
        )
    base, end = int(offsets[0]), int(offsets[-1])
    write_raw(ctx, offsets if base == 0 else offsets - dtype(base))
    return base, end


def _write_node(ctx: Any, arr: pa.Array) -> None:
    """Write one array node (length, flags, its buffers) and its children, recursively."""
    t = arr.type
    kind = _kind(t)
    n, offset = len(arr), arr.offset
    ctx.write_var_uint64(n)
    if kind == _NULL:
        return
    if kind == _DICTIONARY:
        _write_node(ctx, arr.indices)
        _write_node(ctx, arr.dictionary)
        return
    bufs = arr.buffers()
    shift = 0 if kind == _STRUCT else offset % 8
    first = offset - shift
    has_validity = arr.null_count > 0
    ctx.write_uint8(shift | (_FLAG_VALIDITY if has_validity else 0))
    if has_validity:
        if kind == _STRUCT:
            write_raw(ctx, _shifted_bitmap(bufs[0], offset, n))
        else:
            write_raw(ctx, _bitmap_span(bufs[0], first, shift + n))
    count = shift + n
    if kind == _BOOL:
        write_raw(ctx, _bitmap_span(bufs[1], first, count))
    elif kind == _FIXED:
        width = t.bit_width // 8
        write_raw(ctx, _span(bufs[1], first * width, count * width))
    elif kind == _BINARY:
        base, end = _write_offsets(ctx, t, bufs[1], first, count)
        write_raw(ctx, _span(bufs[2], base, end - base))
    elif kind == _LIST:
        base, end = _write_offsets(ctx, t, bufs[1], first, count)
        _write_node(ctx, arr.values.slice(base, end - base))
    elif kind == _FIXED_LIST:
        size = t.list_size
        _write_node(ctx, arr.values.slice(first * size, count * size))
    else:
        for i in range(t.num_fields):
            _write_node(ctx, arr.field(i))


# What the decode budget is charged for each object built, so the number of objects is bounded
# by the message's size (a chunk of one row costs ~5 bytes to send). Retained memory measured
# by RSS over 100,000 one-row chunks (tracemalloc sees only the Python wrappers, ~300-700 bytes
# per chunk): ~200 bytes per array node (C++ ArrayData and its Array), ~560 more per buffer
# (the pa.Buffer, its memoryview or private copy). Rounded up; see docs/security.md.
NODE_COST = 256
"""Budget bytes charged per Arrow array node (chunk, child, dictionary) or schema field."""
BUFFER_COST = 640
"""Budget bytes charged per Arrow buffer the decode wraps or copies."""


def _buffer(ctx: Any) -> pa.Buffer:
    """The next raw region as an Arrow buffer over the message memory (no copy): values."""
    charge(BUFFER_COST, "an Arrow buffer")
    return pa.py_buffer(read_raw(ctx))


def _private_buffer(ctx: Any) -> pa.Buffer:
    """The next raw region as an Arrow buffer in private memory: offsets, indices, bitmaps.

    Arrow reads these to find other memory, so they must not change after validation: an
    out-of-band region (a view of memory the peer can write) is copied once; in-band regions
    are private copies already. Charged no more than `BUFFER_COST`: a copy is never bigger
    than the bytes the message carries."""
    charge(BUFFER_COST, "an Arrow buffer")
    view, out_of_band = read_raw_view(ctx)
    return pa.py_buffer(bytearray(view) if out_of_band else view)


def _charge_rows(n: int, what: str) -> None:
    """Pay for `n` rows that no buffer carries, one bit each, as if a validity bitmap had been
    sent: consumers allocate per row (a pandas column, a Python list)."""
    charge((n + 7) // 8, f"an Arrow {what} of {n} rows")


def _zero_width(t: pa.DataType, kind: str) -> bool:
    """True when values of a node of type `t` take no bytes (its length is not carried)."""
    if kind == _FIXED:
        return bool(t.bit_width == 0)
    if kind == _FIXED_LIST:
        return bool(t.list_size == 0)
    return kind == _STRUCT and t.num_fields == 0


def _read_node(ctx: Any, t: pa.DataType, indexes: bool = False) -> pa.Array:
    """Rebuild one array node of type `t` written by `_write_node` (not yet validated);
    `indexes`: its values index other memory (dictionary indices), so they are copied too.

    Layout of a node, as `_write_node` writes it: var_uint64 length; for null arrays nothing
    more; for dictionaries the indices node then the dictionary node; otherwise u8 flags
    (bits 0-2: bit offset of the first row, bit 3: a validity bitmap follows), the validity
    bitmap, then by kind: bool/fixed the values; binary the offsets then the data; list the
    offsets then the child node; fixed-size list the child node; struct one node per field."""
    kind = _kind(t)
    charge(NODE_COST, "an Arrow array")
    n = ctx.read_var_uint64()
    if kind == _NULL:
        _charge_rows(n, "null array")
        return pa.Array.from_buffers(t, n, [None], null_count=n)
    if kind == _DICTIONARY:
        indices = _read_node(ctx, t.index_type, indexes=True)
        dictionary = _read_node(ctx, t.value_type)
        indices.validate(full=True)
        dictionary.validate(full=True)
        return pa.DictionaryArray.from_arrays(indices, dictionary, ordered=t.ordered, safe=True)
    flags = ctx.read_uint8()
    if flags & ~(_FLAG_VALIDITY | _BIT_OFFSET_MASK):
        raise CorruptMessage(f"Arrow node flags {flags:#x} are invalid: the message is damaged")
    shift = flags & _BIT_OFFSET_MASK
    slots = shift + n
    validity = _private_buffer(ctx) if flags & _FLAG_VALIDITY else None
    if validity is None and _zero_width(t, kind):
        _charge_rows(n, f"array of {t}")
    _need(validity, (slots + 7) // 8, t, n, "validity bitmap")
    null_count = -1 if validity is not None else 0
    children: list[pa.Array] = []
    if kind in (_BOOL, _FIXED):
        values = _private_buffer(ctx) if indexes else _buffer(ctx)
        width = t.bit_width
        _need(values, (slots + 7) // 8 if kind == _BOOL else slots * (width // 8), t, n, "values")
        bufs = [validity, values]
    elif kind == _BINARY:
        offsets = _private_buffer(ctx)
        _need(offsets, _offsets_size(t, slots), t, n, "offsets")
        bufs = [validity, offsets, _buffer(ctx)]
    elif kind == _LIST:
        offsets = _private_buffer(ctx)
        _need(offsets, _offsets_size(t, slots), t, n, "offsets")
        children = [_read_node(ctx, t.field(0).type)]
        bufs = [validity, offsets]
    else:
        bufs = [validity]
        children = [_read_node(ctx, t.field(i).type) for i in range(t.num_fields)]
        per_row = t.list_size if kind == _FIXED_LIST else 1
        for child in children:
            if len(child) < slots * per_row:
                raise _too_short(t, n, f"a child of {len(child)} rows")
    return pa.Array.from_buffers(t, n, bufs, null_count=null_count, offset=shift, children=children)


def _offsets_size(t: pa.DataType, slots: int) -> int:
    """Bytes of offsets a node of `slots` rows needs (none when it has no rows)."""
    return (slots + 1) * np.dtype(_offset_dtype(t)).itemsize if slots else 0


def _need(buf: pa.Buffer | None, nbytes: int, t: pa.DataType, n: int, what: str) -> None:
    """CorruptMessage unless `buf` (if any) holds `nbytes`: a node's length must be carried by
    its buffers before the array is built (Arrow's validation checks the same again)."""
    if buf is not None and buf.size < nbytes:
        raise _too_short(t, n, f"{what} of {buf.size} bytes (it needs {nbytes})")


def _too_short(t: pa.DataType, n: int, what: str) -> CorruptMessage:
    return CorruptMessage(
        f"an Arrow {t} array of {n} rows comes with {what}: the message is damaged"
    )


def _checked(build: Any, *args: Any, full: bool = False) -> Any:
    """Run an Arrow rebuild step and validate the result (`full`: every offset and index too),
    turning Arrow's complaints about bad data into CorruptMessage."""
    try:
        result = build(*args)
        if hasattr(result, "validate"):
            result.validate(full=full)
        return result
    except (pa.ArrowException, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise CorruptMessage(
            f"Arrow data in the message is inconsistent ({exc}): the message is damaged"
        ) from exc


def _schema_bytes(schema: pa.Schema) -> bytes:
    """A schema (fields, types, metadata) as Arrow IPC bytes."""
    return bytes(schema.serialize())


def _read_schema(ctx: Any) -> pa.Schema:
    """Parse in-band Arrow IPC schema bytes; bad bytes raise CorruptMessage."""
    raw = ctx.read_bytes_and_size()
    schema: pa.Schema = _checked(pa.ipc.read_schema, pa.py_buffer(raw))
    charge(NODE_COST * _count_fields(schema), "an Arrow schema")
    return schema


def _count_fields(fields: Iterable[pa.Field]) -> int:
    """How many fields `fields` hold, nested ones included."""
    count = 0
    for field in fields:
        t = field.type
        count += 1
        if pa.types.is_dictionary(t):
            t = t.value_type
        if t.num_fields:
            count += _count_fields(t.field(i) for i in range(t.num_fields))
    return count


def _type_schema(t: pa.DataType) -> pa.Schema:
    """A one-field schema carrying the type `t`."""
    return pa.schema([pa.field("", t)])


def _read_type(ctx: Any) -> pa.DataType:
    """A type written as a one-field schema."""
    schema = _read_schema(ctx)
    if len(schema) != 1:
        raise CorruptMessage(
            "an Arrow type must travel as a one-field schema: the message is damaged"
        )
    return schema.field(0).type


def _read_column(ctx: Any, t: pa.DataType) -> list[pa.Array]:
    """Read a chunk count and that many array nodes of type `t`."""
    return [_read_array_body(ctx, t) for _ in range(ctx.read_var_uint32())]


def _write_column(ctx: Any, chunks: list[pa.Array]) -> None:
    """Write a chunk count and each chunk's node."""
    ctx.write_var_uint32(len(chunks))
    for chunk in chunks:
        _write_node(ctx, chunk)


def _read_array_body(ctx: Any, t: pa.DataType) -> pa.Array:
    """One node tree of type `t`, validated in full."""
    return _checked(_read_node, ctx, t, full=True)


class ArraySerializer(Serializer):
    """Any pa.Array: its type as IPC bytes in band, each buffer of the slice through `_oob`."""

    def write(self, write_context: Any, value: pa.Array) -> None:
        _kind(value.type)
        write_context.write_bytes_and_size(_schema_bytes(_type_schema(value.type)))
        _write_node(write_context, value)

    def read(self, read_context: Any) -> pa.Array:
        return _read_array_body(read_context, _read_type(read_context))


class ChunkedArraySerializer(Serializer):
    """pa.ChunkedArray: its type once, then every chunk as an array node."""

    def write(self, write_context: Any, value: pa.ChunkedArray) -> None:
        _kind(value.type)
        write_context.write_bytes_and_size(_schema_bytes(_type_schema(value.type)))
        _write_column(write_context, value.chunks)

    def read(self, read_context: Any) -> pa.ChunkedArray:
        t = _read_type(read_context)
        return _checked(pa.chunked_array, _read_column(read_context, t), t)


class RecordBatchSerializer(Serializer):
    """pa.RecordBatch: schema with metadata as IPC bytes, then one node per column."""

    def write(self, write_context: Any, value: pa.RecordBatch) -> None:
        write_context.write_bytes_and_size(_schema_bytes(value.schema))
        write_context.write_var_uint64(value.num_rows)
        for column in value.columns:
            _write_node(write_context, column)

    def read(self, read_context: Any) -> pa.RecordBatch:
        schema = _read_schema(read_context)
        num_rows = read_context.read_var_uint64()
        columns = [_read_array_body(read_context, f.type) for f in schema]
        if not columns:
            return _checked(_empty_batch, schema, num_rows)
        return _with_rows(_checked(pa.RecordBatch.from_arrays, columns, None, schema), num_rows)


def _with_rows(result: Any, num_rows: int) -> Any:
    """`result` if it has the row count the writer recorded, else CorruptMessage."""
    if result.num_rows != num_rows:
        raise CorruptMessage(
            f"Arrow data has {result.num_rows} rows where the message says {num_rows}: "
            "the message is damaged"
        )
    return result


def _empty_batch(schema: pa.Schema, num_rows: int) -> pa.RecordBatch:
    """A batch without columns but with `num_rows` rows (not carried by any buffer: charged)."""
    _charge_rows(num_rows, "batch without columns")
    rows = pa.Array.from_buffers(pa.null(), num_rows, [None], null_count=num_rows)
    batch = pa.RecordBatch.from_arrays([rows], names=["_"]).drop_columns(["_"])
    return batch.replace_schema_metadata(schema.metadata)


def write_table(ctx: Any, value: pa.Table) -> None:
    """Schema with metadata as IPC bytes, the row count, then per column its chunks as nodes."""
    ctx.write_bytes_and_size(_schema_bytes(value.schema))
    ctx.write_var_uint64(value.num_rows)
    for column in value.columns:
        _write_column(ctx, column.chunks)


def read_table(ctx: Any) -> pa.Table:
    """A table written by `write_table`, zero-copy over the message memory and validated."""
    schema = _read_schema(ctx)
    num_rows = ctx.read_var_uint64()
    columns = [pa.chunked_array(_read_column(ctx, f.type), f.type) for f in schema]
    if not columns:
        return _checked(_empty_table, schema, num_rows)
    return _with_rows(_checked(pa.Table.from_arrays, columns, None, schema), num_rows)


class TableSerializer(Serializer):
    """pa.Table: see `write_table`."""

    def write(self, write_context: Any, value: pa.Table) -> None:
        write_table(write_context, value)

    def read(self, read_context: Any) -> pa.Table:
        return read_table(read_context)


def _empty_table(schema: pa.Schema, num_rows: int) -> pa.Table:
    """A table without columns but with `num_rows` rows."""
    return pa.Table.from_batches([_empty_batch(schema, num_rows)])


_TENSOR_KINDS = frozenset("biuf")
_ORDER_C = 0
_ORDER_F = 1


def _write_tensor(ctx: Any, value: pa.Tensor) -> None:
    """Dtype, shape, order, dim names in band; the data (C or F order, else a C copy) raw."""
    data = value.to_numpy()
    order = _ORDER_C
    if data.flags.f_contiguous and not data.flags.c_contiguous:
        order, data = _ORDER_F, data.T
    data = np.ascontiguousarray(data)
    ctx.write_string(data.dtype.str)
    ctx.write_uint8(order)
    ctx.write_var_uint32(value.ndim)
    for dim in value.shape:
        ctx.write_var_uint64(dim)
    names = value.dim_names or []
    ctx.write_var_uint32(len(names))
    for name in names:
        ctx.write_string(name)
    write_raw(ctx, data)


def _read_tensor(ctx: Any) -> pa.Tensor:
    """Rebuild a tensor zero-copy over the message memory; sizes are checked first."""
    dtype_str = ctx.read_string()
    order = ctx.read_uint8()
    shape = tuple(ctx.read_var_uint64() for _ in range(ctx.read_var_uint32()))
    names = [ctx.read_string() for _ in range(ctx.read_var_uint32())]
    raw = read_raw(ctx)
    try:
        dtype = np.dtype(dtype_str)
    except TypeError as exc:
        raise CorruptMessage(
            f"Arrow tensor dtype {dtype_str!r} is invalid: the message is damaged"
        ) from exc
    if (
        dtype.kind not in _TENSOR_KINDS
        or dtype.fields is not None
        or order not in (_ORDER_C, _ORDER_F)
    ):
        raise CorruptMessage(
            f"Arrow tensor dtype {dtype_str!r} / order {order} is invalid: the message is damaged"
        )
    count = math.prod(shape)
    if raw.nbytes != count * dtype.itemsize or (names and len(names) != len(shape)):
        raise CorruptMessage(
            f"Arrow tensor of shape {shape} {dtype} needs {count * dtype.itemsize} bytes, "
            f"the message holds {raw.nbytes}: the message is damaged"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count)
    array = array.reshape(shape[::-1]).T if order == _ORDER_F else array.reshape(shape)
    return _checked(pa.Tensor.from_numpy, array, names or None)


class TensorSerializer(Serializer):
    """pa.Tensor of numeric values; non-contiguous tensors are copied to C order on write."""

    def write(self, write_context: Any, value: pa.Tensor) -> None:
        _write_tensor(write_context, value)

    def read(self, read_context: Any) -> pa.Tensor:
        return _read_tensor(read_context)


class SchemaSerializer(Serializer):
    """pa.Schema as IPC bytes."""

    def write(self, write_context: Any, value: pa.Schema) -> None:
        write_context.write_bytes_and_size(_schema_bytes(value))

    def read(self, read_context: Any) -> pa.Schema:
        return _read_schema(read_context)


class DataTypeSerializer(Serializer):
    """pa.DataType (any subclass) as a one-field IPC schema."""

    def write(self, write_context: Any, value: pa.DataType) -> None:
        write_context.write_bytes_and_size(_schema_bytes(_type_schema(value)))

    def read(self, read_context: Any) -> pa.DataType:
        return _read_type(read_context)


class FieldSerializer(Serializer):
    """pa.Field (name, type, nullability, metadata) as a one-field IPC schema."""

    def write(self, write_context: Any, value: pa.Field) -> None:
        write_context.write_bytes_and_size(_schema_bytes(pa.schema([value])))

    def read(self, read_context: Any) -> pa.Field:
        schema = _read_schema(read_context)
        if len(schema) != 1:
            raise CorruptMessage(
                "an Arrow field must travel as a one-field schema: the message is damaged"
            )
        return schema.field(0)


NAME = "arrow"
"""The name the stream schema carries for this adapter: fixed across releases (it is part
of the wire format), whatever the module is called."""


def install(fory: Any) -> None:
    """Register the Arrow serializers on `fory` (idempotent)."""
    resolver = fory.type_resolver
    table = [
        (pa.Array, _typeids.ARROW_ARRAY, ArraySerializer, all_subclasses(pa.Array)),
        (pa.ChunkedArray, _typeids.ARROW_CHUNKED_ARRAY, ChunkedArraySerializer, []),
        (pa.RecordBatch, _typeids.ARROW_RECORD_BATCH, RecordBatchSerializer, []),
        (pa.Table, _typeids.ARROW_TABLE, TableSerializer, []),
        (pa.Tensor, _typeids.ARROW_TENSOR, TensorSerializer, []),
        (pa.Schema, _typeids.ARROW_SCHEMA, SchemaSerializer, []),
        (pa.DataType, _typeids.ARROW_DATA_TYPE, DataTypeSerializer, all_subclasses(pa.DataType)),
        (pa.Field, _typeids.ARROW_FIELD, FieldSerializer, []),
    ]
    for cls, type_id, serializer_cls, family in table:
        register_family(fory, cls, type_id, serializer_cls(resolver, cls), family)
