"""Arrow adapter: every common type round-trips, buffers come back zero-copy, slices stay small."""

from __future__ import annotations

import datetime
import gc
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zcser
from zcser.errors import CorruptData, CorruptMessage, UnsupportedType, ZcserError

THRESHOLD = 64
CODEC = zcser.Codec(threshold=THRESHOLD)
N = 1000


def roundtrip(obj: Any, copy: bool = False, codec: zcser.Codec = CODEC) -> tuple[Any, np.ndarray]:
    """Encode `obj` into fresh memory and decode it from there; returns (result, memory)."""
    plan = codec.plan(obj)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem)
    return codec.decode(mem[:used], copy=copy), mem[:used]


def inside(address: int, mem: np.ndarray) -> bool:
    """True when `address` lies in the message memory."""
    return mem.ctypes.data <= address < mem.ctypes.data + mem.nbytes


def array_buffers(arr: pa.Array) -> list[pa.Buffer]:
    """Every buffer of an array and its children, including a dictionary's."""
    bufs = [b for b in arr.buffers() if b is not None]
    if pa.types.is_dictionary(arr.type):
        bufs += array_buffers(arr.dictionary)
    return bufs


def split_buffers(arr: pa.Array, indexes: bool = False) -> tuple[list[pa.Buffer], list[pa.Buffer]]:
    """(value buffers, buffers that index memory) of an array and its children: validity
    bitmaps, offsets and dictionary indices index memory, the rest are values."""
    t = arr.type
    if pa.types.is_dictionary(t):
        _, index_bufs = split_buffers(arr.indices, indexes=True)
        values, more = split_buffers(arr.dictionary)
        return values, index_bufs + more
    bufs = arr.buffers()
    own = 3 if pa.types.is_string(t) or pa.types.is_binary(t) else 2
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        own = 3
    if pa.types.is_struct(t) or pa.types.is_null(t) or pa.types.is_fixed_size_list(t):
        own = 1
    mine = bufs[:own]
    is_offsets = own == 3 or pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t)
    index_bufs = [mine[0]] + ([mine[1]] if is_offsets or indexes else [])
    values = [b for b in mine if all(b is not i for i in index_bufs)]
    value_bufs = [b for b in values if b is not None]
    index_bufs = [b for b in index_bufs if b is not None]
    for i in range(t.num_fields):
        child = arr.values if t.num_fields == 1 and not pa.types.is_struct(t) else arr.field(i)
        more_values, more_index = split_buffers(child)
        value_bufs += more_values
        index_bufs += more_index
    return value_bufs, index_bufs


def assert_zero_copy(arr: pa.Array, mem: np.ndarray) -> None:
    """Every value buffer big enough to go out of band lies inside the message memory; every
    buffer that indexes memory (offsets, indices, validity) lies outside it (a private copy)."""
    values, index_bufs = split_buffers(arr)
    big = [b for b in values if b.size >= THRESHOLD]
    assert big or index_bufs, "test data too small to go out of band"
    assert all(inside(b.address, mem) for b in big), [hex(b.address) for b in big]
    assert not any(inside(b.address, mem) for b in index_bufs), "index buffer not private"


def _with_nulls(values: list[Any]) -> list[Any]:
    return [None if i % 7 == 3 else v for i, v in enumerate(values)]


def _arrays() -> dict[str, pa.Array]:
    ints = list(range(N))
    strs = [f"s{i}" * (i % 5) for i in range(N)]
    t0 = datetime.datetime(2024, 1, 1)
    return {
        "bool": pa.array(_with_nulls([i % 3 == 0 for i in ints])),
        "int8": pa.array(_with_nulls([i % 100 for i in ints]), pa.int8()),
        "int16": pa.array(_with_nulls(ints), pa.int16()),
        "int32": pa.array(_with_nulls(ints), pa.int32()),
        "int64": pa.array(_with_nulls(ints), pa.int64()),
        "uint8": pa.array([i % 200 for i in ints], pa.uint8()),
        "uint16": pa.array(ints, pa.uint16()),
        "uint32": pa.array(ints, pa.uint32()),
        "uint64": pa.array(_with_nulls(ints), pa.uint64()),
        "float16": pa.array(np.arange(N, dtype=np.float16)),
        "float32": pa.array(_with_nulls([i / 3 for i in ints]), pa.float32()),
        "float64": pa.array(_with_nulls([i / 3 for i in ints]), pa.float64()),
        "decimal": pa.array(_with_nulls([i * 10 for i in ints]), pa.decimal128(12, 2)),
        "string": pa.array(_with_nulls(strs), pa.string()),
        "large_string": pa.array(_with_nulls(strs), pa.large_string()),
        "binary": pa.array(_with_nulls([s.encode() for s in strs]), pa.binary()),
        "large_binary": pa.array(_with_nulls([s.encode() for s in strs]), pa.large_binary()),
        "fixed_binary": pa.array([b"%04d" % i for i in ints], pa.binary(4)),
        "list": pa.array(_with_nulls([list(range(i % 4)) for i in ints]), pa.list_(pa.int32())),
        "large_list": pa.array(
            _with_nulls([[str(i)] * (i % 3) for i in ints]), pa.large_list(pa.string())
        ),
        "fixed_list": pa.array([[i, i + 1] for i in ints], pa.list_(pa.int64(), 2)),
        "list_of_list": pa.array(
            _with_nulls([[[i], []] for i in ints]), pa.list_(pa.list_(pa.int16()))
        ),
        "struct": pa.array(
            _with_nulls([{"a": i, "b": f"x{i}", "c": [i % 100]} for i in ints]),
            pa.struct([("a", pa.int64()), ("b", pa.string()), ("c", pa.list_(pa.int8()))]),
        ),
        "map": pa.array([[(f"k{i}", i)] for i in ints], pa.map_(pa.string(), pa.int64())),
        "dictionary": pa.array(_with_nulls([f"cat{i % 5}" for i in ints])).dictionary_encode(),
        "timestamp": pa.array(
            _with_nulls([t0 + datetime.timedelta(seconds=i) for i in ints]),
            pa.timestamp("us", tz="UTC"),
        ),
        "date32": pa.array(
            _with_nulls([datetime.date(2024, 1, 1) + datetime.timedelta(i) for i in ints])
        ),
        "date64": pa.array([datetime.date(2024, 1, 1)] * N, pa.date64()),
        "time64": pa.array([datetime.time(1, 2, i % 60) for i in ints], pa.time64("us")),
        "duration": pa.array(ints, pa.duration("ms")),
        "null": pa.nulls(N),
    }


ARRAYS = _arrays()


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_round_trips_zero_copy(name: str) -> None:
    arr = ARRAYS[name]
    out, mem = roundtrip(arr)
    assert out.type == arr.type
    assert out.equals(arr)
    if name != "null":
        assert_zero_copy(out, mem)


@pytest.mark.parametrize("name", sorted(ARRAYS))
@pytest.mark.parametrize(("start", "length"), [(3, 200), (8, 17), (13, 0), (N - 5, 5), (501, 413)])
def test_sliced_array_round_trips(name: str, start: int, length: int) -> None:
    piece = ARRAYS[name].slice(start, length)
    out, _ = roundtrip(piece)
    assert out.type == piece.type
    assert out.equals(piece)
    assert out.to_pylist() == piece.to_pylist()


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["bool", "string", "large_list", "struct", "dictionary", "fixed_list"]),
    start=st.integers(0, N),
    length=st.integers(0, N),
)
def test_any_slice_round_trips(name: str, start: int, length: int) -> None:
    piece = ARRAYS[name].slice(start, length)
    out, _ = roundtrip(piece)
    assert out.to_pylist() == piece.to_pylist()


def test_slice_of_a_struct_with_nulls_at_an_odd_bit_offset() -> None:
    arr = ARRAYS["struct"]
    for start in range(1, 9):
        piece = arr.slice(start, 100)
        out, _ = roundtrip(piece)
        assert out.to_pylist() == piece.to_pylist()


@pytest.mark.parametrize(
    "make",
    [
        lambda n: pa.array(np.arange(n)),
        lambda n: pa.array([f"row{i}" for i in range(n)]),
        lambda n: pa.array([[i, i] for i in range(n)], pa.list_(pa.int64())),
        lambda n: pa.array([{"x": i} for i in range(n)]),
    ],
    ids=["int64", "string", "list", "struct"],
)
def test_a_slice_of_a_big_array_sends_about_the_slice(make: Any) -> None:
    big = make(200_000)
    whole = CODEC.plan(big).nbytes
    piece = big.slice(150_000, 100)
    small = CODEC.plan(piece).nbytes
    assert small < 4096 < whole // 100
    out, _ = roundtrip(piece)
    assert out.equals(piece)


def test_chunked_array_round_trips_zero_copy() -> None:
    arr = ARRAYS["string"]
    chunked = pa.chunked_array([arr.slice(0, 300), arr.slice(300, 0), arr.slice(300)])
    out, mem = roundtrip(chunked)
    assert isinstance(out, pa.ChunkedArray)
    assert out.num_chunks == 3
    assert out.equals(chunked)
    assert_zero_copy(out.chunk(2), mem)


def _table() -> pa.Table:
    schema = pa.schema(
        [pa.field(name, arr.type, metadata={"col": name}) for name, arr in ARRAYS.items()],
        metadata={"origin": "zcser-test", "rows": str(N)},
    )
    return pa.Table.from_arrays(list(ARRAYS.values()), schema=schema)


def test_table_round_trips_with_field_and_schema_metadata() -> None:
    table = _table()
    out, mem = roundtrip(table)
    assert out.schema.equals(table.schema, check_metadata=True)
    assert out.equals(table)
    for column in out.columns:
        if column.type != pa.null():
            assert_zero_copy(column.chunk(0), mem)


def test_table_with_several_chunks_per_column() -> None:
    table = pa.concat_tables([_table().slice(0, 100), _table().slice(900)])
    assert table.column(0).num_chunks == 2
    out, _ = roundtrip(table)
    assert out.equals(table)
    assert [c.num_chunks for c in out.columns] == [c.num_chunks for c in table.columns]


def test_record_batch_round_trips_zero_copy() -> None:
    batch = _table().to_batches()[0].slice(10, 500)
    out, mem = roundtrip(batch)
    assert isinstance(out, pa.RecordBatch)
    assert out.schema.equals(batch.schema, check_metadata=True)
    assert out.equals(batch)
    assert_zero_copy(out.column("float64"), mem)


def test_tables_and_batches_without_columns_keep_their_row_count() -> None:
    schema = pa.schema([], metadata={"k": "v"})
    batch = pa.record_batch([pa.nulls(3)], names=["x"]).drop_columns(["x"])
    table = pa.Table.from_batches([batch.replace_schema_metadata({"k": "v"})])
    assert table.num_rows == 3
    out, _ = roundtrip(table)
    assert (out.num_rows, out.schema) == (3, schema)
    out, _ = roundtrip(table.to_batches()[0])
    assert out.num_rows == 3


@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_tensor_round_trips_zero_copy(order: str) -> None:
    base = np.arange(60 * 40, dtype=np.float64).reshape(60, 40)
    data = {"C": base, "F": np.asfortranarray(base), "strided": base[::2, ::3]}[order]
    tensor = pa.Tensor.from_numpy(data, dim_names=["rows", "cols"])
    out, mem = roundtrip(tensor)
    assert isinstance(out, pa.Tensor)
    assert out.equals(tensor)
    assert out.dim_names == ["rows", "cols"]
    view = out.to_numpy()
    assert np.shares_memory(view, mem)
    assert view.flags.f_contiguous == (order == "F")
    assert not view.flags.writeable


def test_schema_type_and_field_objects_round_trip() -> None:
    schema = _table().schema
    field = pa.field("f", pa.list_(pa.timestamp("ns", tz="Asia/Tokyo")), metadata={"a": "b"})
    obj = {"schema": schema, "field": field, "types": [pa.int8(), pa.struct([("x", pa.string())])]}
    out, _ = roundtrip(obj)
    assert out["schema"].equals(schema, check_metadata=True)
    assert out["field"].equals(field, check_metadata=True)
    assert out["types"] == obj["types"]


def test_arrays_nested_in_python_containers() -> None:
    obj = {"a": ARRAYS["int64"], "b": [ARRAYS["string"], _table()], "n": 3}
    out, mem = roundtrip(obj)
    assert out["a"].equals(obj["a"]) and out["b"][0].equals(obj["b"][0])
    assert out["b"][1].equals(obj["b"][1])
    assert_zero_copy(out["a"], mem)


class _Uuid(pa.ExtensionType):
    def __init__(self) -> None:
        super().__init__(pa.binary(16), "zcser.test.uuid")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> _Uuid:
        return cls()


@pytest.mark.parametrize(
    "make",
    [
        lambda: pa.ExtensionArray.from_storage(_Uuid(), pa.array([b"0" * 16], pa.binary(16))),
        lambda: pa.array(["a", "b"], pa.string_view()),
        lambda: pa.UnionArray.from_sparse(
            pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])]
        ),
        lambda: pa.array([{"u": "x"}], pa.struct([("u", pa.string_view())])),
    ],
    ids=["extension", "string_view", "union", "nested_view"],
)
def test_unsupported_arrow_types_raise_with_advice(make: Any) -> None:
    with pytest.raises(UnsupportedType, match="not supported"):
        CODEC.plan(make())


def test_received_arrays_keep_the_owner_alive_until_the_last_view_dies() -> None:
    class Lease:
        pass

    table = _table()
    plan = CODEC.plan(table)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem)
    lease = Lease()
    released = weakref.ref(lease)
    out = CODEC.decode(mem[:used], owner=lease)
    column = out.column("int64").chunk(0)
    del lease, out
    gc.collect()
    assert released() is not None
    assert column.to_pylist() == table.column("int64").to_pylist()
    del column
    gc.collect()
    assert released() is None


def test_copy_true_gives_buffers_outside_the_message() -> None:
    arr = ARRAYS["string"]
    out, mem = roundtrip(arr, copy=True)
    assert out.equals(arr)
    assert not any(inside(b.address, mem) for b in array_buffers(out))


def find_in(mem: np.ndarray, data: bytes) -> int:
    """Offset of the only occurrence of `data` in the message memory."""
    raw = mem.tobytes()
    start = raw.find(data)
    assert start >= 0 and raw.find(data, start + 1) < 0, "needle missing or not unique"
    return start


def _string_message() -> tuple[np.ndarray, int, int]:
    """A message of one string array and the byte range of its offsets buffer in it."""
    arr = pa.array([f"value-{i}" for i in range(N)])
    plan = CODEC.plan(arr)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem)
    offsets = arr.buffers()[1].to_pybytes()
    return mem[:used], find_in(mem[:used], offsets), len(offsets)


@pytest.mark.parametrize("value", [-5, 1 << 30, 3])
def test_corrupt_offsets_raise_corrupt_message_not_a_crash(value: int) -> None:
    mem, start, size = _string_message()
    offsets = mem[start : start + size].view(np.int32)
    offsets[N // 2] = value
    with pytest.raises(CorruptMessage):
        CODEC.decode(mem)


def test_random_byte_flips_only_raise_zcser_errors() -> None:
    table = pa.table({"s": ARRAYS["string"], "l": ARRAYS["list"], "d": ARRAYS["dictionary"]})
    plan = CODEC.plan(table)
    clean = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(clean)
    rng = np.random.default_rng(7)
    failures = 0
    for _ in range(300):
        mem = clean[:used].copy()
        for pos in rng.integers(0, used, size=3):
            mem[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            CODEC.decode(mem)
        except ZcserError:
            failures += 1
    assert failures > 0


def test_truncated_schema_bytes_raise_corrupt_data() -> None:
    codec = zcser.Codec(threshold=THRESHOLD)
    plan = codec.plan(pa.int64())
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem)
    inband = bytes(mem[:used])
    schema_at = inband.find(b"\xff\xff\xff\xff")
    assert schema_at > 0
    mem[schema_at + 8 : used] ^= 0x5A
    with pytest.raises(CorruptData):
        codec.decode(mem[:used])


def test_a_separate_process_decodes_a_table_zero_copy(tmp_path: Path) -> None:
    table = _table()
    msg = zcser.Codec(threshold=THRESHOLD).plan(table)
    mem = np.zeros(msg.nbytes, np.uint8)
    used = msg.write_into(mem, base_address=0)
    path = tmp_path / "table.msg"
    path.write_bytes(mem[:used].tobytes())
    expected = tmp_path / "table.ipc"
    with pa.OSFile(str(expected), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    script = textwrap.dedent(
        f"""
        import mmap, numpy as np, pyarrow as pa, zcser
        with open({str(path)!r}, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mem = np.frombuffer(mm, np.uint8)
        out = zcser.Codec(threshold={THRESHOLD}).decode(mem)
        want = pa.ipc.open_file({str(expected)!r}).read_all()
        assert out.equals(want) and out.schema.equals(want.schema, check_metadata=True)
        buf = out.column("string").chunk(0).buffers()[2]
        lo = mem.ctypes.data
        assert lo <= buf.address < lo + mem.nbytes, "not zero-copy"
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _trusting(allowance: int) -> zcser.Codec:
    """A codec whose decodes may allocate `allowance` bytes beyond the message (trusted data).
    Falls back to a plain codec where Codec has no decode budget yet: it then has no limit."""
    try:
        return zcser.Codec(threshold=THRESHOLD, decode_allowance=allowance)  # type: ignore[call-arg]
    except TypeError:
        return zcser.Codec(threshold=THRESHOLD)


def test_a_huge_null_array_round_trips_without_allocating_when_trusted() -> None:
    rows = 1 << 40
    arr = pa.Array.from_buffers(pa.null(), rows, [None], null_count=rows)
    out, mem = roundtrip(arr, codec=_trusting(rows))
    assert (len(out), out.null_count, out.type) == (rows, rows, pa.null())
    assert mem.nbytes < 4096
