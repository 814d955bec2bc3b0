"""Codec: containers, user types, strict mode, refs, planning/placement, lifetimes, checksums."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import zcser
from zcser import errors
from zcser.codec import core as codec_core
from zcser.codec import layout as _message

ROOT = Path(__file__).resolve().parents[3]


def _encode(codec: zcser.Codec, obj: Any) -> bytearray:
    plan = codec.plan(obj)
    out = bytearray(plan.nbytes)
    del out[plan.write_into(out) :]
    return out


def _address(buf: Any) -> int:
    return int(np.frombuffer(buf, np.uint8).ctypes.data)


@dataclasses.dataclass
class Point:
    x: int
    label: str
    data: Any


class Plain:
    def __init__(self, a: Any, b: Any) -> None:
        self.a = a
        self.b = b


def test_containers_round_trip() -> None:
    source = {
        "list": [1, 2.5, "three", None, True],
        "tuple": (1, ("nested", b"bytes")),
        "set": {1, 2, 3},
        "frozenset": frozenset({"a", 1}),
        "ordered": OrderedDict([("z", 1), ("a", [2]), (3, "three")]),
        "dict": {1: "int key", ("t", 1): "tuple key"},
        "complex": 1 + 2j,
        "int64": -(2**63),
    }
    codec = zcser.Codec()
    got = codec.decode(_encode(codec, source))
    assert got == source
    assert type(got["ordered"]) is OrderedDict and list(got["ordered"]) == ["z", "a", 3]


def test_dataclass_and_plain_class_after_register() -> None:
    codec = zcser.Codec()
    codec.register(Point)
    codec.register(Plain)
    arr = np.arange(50_000.0)
    got = codec.decode(_encode(codec, [Point(1, "p", arr), Plain("a", [arr])]))
    assert isinstance(got[0], Point) and got[0].x == 1 and got[0].label == "p"
    np.testing.assert_array_equal(got[0].data, arr)
    assert isinstance(got[1], Plain) and got[1].a == "a"
    np.testing.assert_array_equal(got[1].b[0], arr)


def test_unregistered_class_raises_naming_register() -> None:
    with pytest.raises(errors.UnregisteredType, match=r"codec\.register"):
        zcser.Codec().plan(Point(1, "x", None))


def test_reader_without_registration_gets_data_only_struct() -> None:
    """pyfory's strict mode: an unknown dataclass becomes a data-only UnknownStruct (no class code)."""
    writer = zcser.Codec()
    writer.register(Point)
    msg = _encode(writer, Point(3, "x", None))
    reader = zcser.Codec()
    got = reader.decode(msg)
    assert type(got).__name__ == "UnknownStruct" and not isinstance(got, Point)
    reader.register(Point)  # after use: the codec rebuilds its pyfory instance
    assert reader.decode(msg) == Point(3, "x", None)


def test_register_twice_under_one_name_is_refused() -> None:
    codec = zcser.Codec()
    codec.register(Point)
    with pytest.raises(errors.UsageError, match="already registered"):
        codec.register(Point)


_CHILD = textwrap.dedent(
    """
    import dataclasses, sys
    from typing import Any
    import zcser

    @dataclasses.dataclass
    class Point:
        x: int
        label: str
        data: Any

    codec = zcser.Codec()
    codec.register(Point, name="tests.Point")
    got = codec.decode(sys.stdin.buffer.read())
    assert type(got) is Point, type(got)
    assert not got.data.flags.writeable
    reply = Point(got.x + 1, got.label.upper(), got.data * 2)
    plan = codec.plan(reply)
    out = bytearray(plan.nbytes)
    sys.stdout.buffer.write(out[: plan.write_into(out)])
    """
)


def test_registered_dataclass_travels_between_processes() -> None:
    codec = zcser.Codec()
    codec.register(Point, name="tests.Point")
    msg = _encode(codec, Point(41, "hello", np.arange(100_000, dtype=np.int64)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD], input=bytes(msg), capture_output=True, timeout=120, env=env
    )
    assert child.returncode == 0, child.stderr.decode()
    got = codec.decode(child.stdout)
    assert got.x == 42 and got.label == "HELLO"
    np.testing.assert_array_equal(got.data, np.arange(100_000) * 2)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def test_default_codec_refuses_payload_built_to_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trusted = zcser.Codec(trusted=True)
    msg = _encode(trusted, {"x": _Evil(str(marker))})
    with pytest.raises(errors.CorruptData):
        zcser.Codec().decode(msg)
    assert not marker.exists()


def test_trusted_codec_warns_and_takes_unregistered_classes() -> None:
    with pytest.warns(UserWarning, match="arbitrary code"):
        codec = zcser.Codec(trusted=True)
    got = codec.decode(_encode(codec, Plain(1, np.arange(50_000))))
    assert isinstance(got, Plain) and got.a == 1
    np.testing.assert_array_equal(got.b, np.arange(50_000))


def test_ref_true_sends_shared_array_once_and_keeps_identity() -> None:
    arr = np.arange(100_000, dtype=np.float32)
    codec = zcser.Codec(ref=True)
    plan = codec.plan({"a": arr, "b": arr, "l": [arr]})
    assert len(plan.buffers) == 1
    got = codec.decode(_encode(codec, {"a": arr, "b": arr, "l": [arr]}))
    assert got["a"] is got["b"] is got["l"][0]


def test_ref_false_sends_shared_array_twice() -> None:
    arr = np.arange(100_000, dtype=np.float32)
    codec = zcser.Codec()
    assert len(codec.plan([arr, arr]).buffers) == 2
    got = codec.decode(_encode(codec, [arr, arr]))
    assert got[0] is not got[1]
    np.testing.assert_array_equal(got[0], got[1])


def test_threshold_zero_sends_every_nonempty_buffer_out_of_band() -> None:
    codec = zcser.Codec(threshold=0)
    plan = codec.plan([np.zeros(1, np.uint8), b"x", b"", np.zeros(0)])
    assert [b.nbytes for b in plan.buffers] == [1, 1]


def test_negative_threshold_is_a_usage_error() -> None:
    with pytest.raises(errors.UsageError):
        zcser.Codec(threshold=-1)


def test_plan_sizes_and_buffer_too_small() -> None:
    codec = zcser.Codec()
    plan = codec.plan({"a": np.ones(30_000), "b": b"z" * 70_000, "s": "small"})
    assert codec.message_size({"a": np.ones(30_000)}) >= 30_000 * 8
    for shift in range(0, 64, 7):
        backing = bytearray(plan.nbytes + 64)
        target = memoryview(backing)[shift:]
        exact = plan.nbytes_at(_address(target))
        assert exact <= plan.nbytes
        assert plan.write_into(target) == exact
        with pytest.raises(errors.BufferTooSmall, match=r"plan\.nbytes"):
            plan.write_into(target[: exact - 1])
    with pytest.raises(errors.UsageError, match="writable"):
        plan.write_into(bytes(plan.nbytes))


def test_encode_into_and_plan_reuse_write_identical_messages() -> None:
    codec = zcser.Codec()
    obj = {"a": np.arange(20_000)}
    first = bytearray(codec.message_size(obj))
    used = codec.encode_into(obj, first)
    plan = codec.plan(obj)
    second = bytearray(plan.nbytes)
    assert plan.write_into(second, base_address=_address(first)) == used
    assert second[:used] == first[:used]


def test_buffers_are_placed_at_absolute_64_byte_alignment() -> None:
    codec = zcser.Codec()
    for shift in range(8):
        backing = bytearray(1 << 20)
        target = memoryview(backing)[shift:]
        used = codec.encode_into({"a": np.ones(10_000), "b": np.ones(33_333, np.int8)}, target)
        got = codec.decode(target[:used])
        assert got["a"].ctypes.data % 64 == 0 and got["b"].ctypes.data % 64 == 0
        assert np.shares_memory(got["a"], np.frombuffer(target, np.uint8))


def test_buffer_already_in_the_target_stays_in_place() -> None:
    codec = zcser.Codec()
    target = bytearray(1 << 20)
    base = _address(target)
    offset = _message.align_up(base + 4096) - base
    inside = np.frombuffer(target, np.float64, count=10_000, offset=offset)
    inside[:] = np.arange(10_000)
    outside = np.full(5000, 7.0)
    plan = codec.plan({"in": inside, "out": outside})
    used = plan.write_into(target)
    got = codec.decode(memoryview(target)[:used])
    assert got["in"].ctypes.data == inside.ctypes.data
    np.testing.assert_array_equal(got["in"], np.arange(10_000))
    np.testing.assert_array_equal(got["out"], outside)
    assert got["out"].ctypes.data >= inside.ctypes.data + inside.nbytes


def test_misaligned_buffer_in_the_target_is_copied_and_not_overwritten() -> None:
    codec = zcser.Codec()
    target = bytearray(1 << 20)
    base = _address(target)
    offset = _message.align_up(base + 4096) - base + 8
    inside = np.frombuffer(target, np.float64, count=10_000, offset=offset)
    inside[:] = np.arange(10_000)
    used = codec.encode_into({"in": inside}, target)
    got = codec.decode(memoryview(target)[:used])
    assert got["in"].ctypes.data != inside.ctypes.data and got["in"].ctypes.data % 64 == 0
    np.testing.assert_array_equal(got["in"], np.arange(10_000))
    np.testing.assert_array_equal(inside, np.arange(10_000))


def test_in_target_buffer_over_the_header_or_straddling_is_refused() -> None:
    codec = zcser.Codec()
    target = bytearray(1 << 16)
    base = _address(target)
    head = np.frombuffer(target, np.uint8, count=20_000, offset=_message.align_up(base) - base)
    with pytest.raises(errors.UsageError, match="leave at least"):
        codec.encode_into({"a": head}, target)
    tail = np.frombuffer(target, np.uint8, count=20_000, offset=len(target) - 20_000)
    with pytest.raises(errors.UsageError, match="straddles"):
        codec.encode_into({"a": tail}, memoryview(target)[: len(target) - 100])


class _Lease:
    """Stands in for the channel's frame lease."""


def test_owner_stays_alive_while_any_view_lives() -> None:
    codec = zcser.Codec()
    msg = _encode(codec, {"a": np.arange(20_000.0), "m": memoryview(b"m" * 100_000)})
    lease = _Lease()
    released: list[int] = []
    weakref.finalize(lease, released.append, 1)
    got = codec.decode(msg, owner=lease)
    del lease
    arr, view = got["a"], got["m"]
    del got
    gc.collect()
    assert not released
    assert np.shares_memory(arr, np.frombuffer(msg, np.uint8))
    del arr
    gc.collect()
    assert not released
    del view
    gc.collect()
    assert released == [1]


def test_misaligned_message_is_realigned_with_one_copy() -> None:
    source = {"a": np.arange(50_000, dtype=np.float64), "s": "x"}
    data = zcser.dumps(source)
    backing = bytearray(len(data) + 64)
    start = (_message.ALIGN - _address(backing) % 64) % 64 + 8
    backing[start : start + len(data)] = data
    misplaced = memoryview(backing)[start : start + len(data)]
    got = zcser.loads(misplaced)
    assert got["a"].ctypes.data % 64 == 0
    assert not np.shares_memory(got["a"], np.frombuffer(backing, np.uint8))
    np.testing.assert_array_equal(got["a"], source["a"])
    assert not got["a"].flags.writeable


def test_dumps_loads_and_copy() -> None:
    source = {"a": np.arange(50_000), "b": [1, "x"]}
    data = zcser.dumps(source)
    assert isinstance(data, bytes)
    got = zcser.loads(data)
    np.testing.assert_array_equal(got["a"], source["a"])
    assert zcser.loads(data, copy=True)["a"].flags.writeable


def test_checksum_round_trip_and_detects_any_changed_byte() -> None:
    codec = zcser.Codec(checksum=True)
    source = {"a": np.arange(30_000, dtype=np.int32), "s": "text"}
    msg = _encode(codec, source)
    np.testing.assert_array_equal(codec.decode(msg)["a"], source["a"])
    parsed = _message.parse(memoryview(msg))
    off, _ = parsed.buffers[0]
    for position in (off + 5, parsed.inband_start + 1, _message.OFF_INBAND_LEN):
        bad = bytearray(msg)
        bad[position] ^= 0x10
        with pytest.raises(errors.CorruptData):
            codec.decode(bad)
    bad = bytearray(msg)
    bad[off + 5] ^= 0x10
    with pytest.raises(errors.ChecksumMismatch, match="buffer 0"):
        zcser.Codec().decode(bad)


def test_plan_buffers_are_views_of_the_sources() -> None:
    arr = np.arange(100_000, dtype=np.int32)
    blob = b"q" * 100_000
    plan = zcser.Codec().plan({"a": arr, "b": blob})
    assert [b.nbytes for b in plan.buffers] == [arr.nbytes, len(blob)]
    assert np.shares_memory(np.frombuffer(plan.buffers[0], np.uint8), arr)
    assert _address(plan.buffers[1]) == _address(blob)


def test_pyfory_failures_become_decode_error_with_cause() -> None:
    codec = zcser.Codec()
    msg = _encode(codec, {"a": 1})
    parsed = _message.parse(memoryview(msg))
    msg[parsed.inband_start] = 0xFF
    with pytest.raises(errors.DecodeError, match="pyfory could not decode") as info:
        codec.decode(msg)
    assert info.value.__cause__ is not None


def test_checksum_codec_requires_checksummed_messages() -> None:
    msg = _encode(zcser.Codec(), [1, 2])
    with pytest.raises(errors.CorruptMessage, match="requires checksums"):
        zcser.Codec(checksum=True).decode(msg)


def test_decode_rejects_non_buffers_and_trailing_data() -> None:
    codec = zcser.Codec()
    with pytest.raises(errors.UsageError):
        codec.decode(12345)
    msg = _encode(codec, {"a": np.arange(100_000)})
    count_at = _message.OFF_COUNT
    extra = bytearray(msg)
    extra[count_at : count_at + 4] = (0).to_bytes(4, "little")
    with pytest.raises(errors.CorruptData):
        codec.decode(extra)


def test_schema_is_json_and_checked() -> None:
    writer = zcser.Codec(checksum=True)
    writer.register(Point)
    schema = json.loads(json.dumps(writer.schema()))
    assert schema["format_version"] == _message.VERSION and schema["alignment"] == 64
    assert "numpy" in schema["adapters"] and schema["types"] == ["test_codec.Point"]
    reader = zcser.Codec()
    reader.register(Point)
    reader.check_schema(schema)
    with pytest.raises(errors.IncompatibleStream, match=r"codec\.register"):
        zcser.Codec().check_schema(schema)
    with pytest.raises(errors.IncompatibleStream, match=r"pyfory 0\.1.*pyfory_version"):
        reader.check_schema({**schema, "pyfory_version": "0.1"})
    with pytest.raises(errors.IncompatibleStream, match="ref"):
        zcser.Codec(ref=True).check_schema(writer.schema())


@pytest.mark.parametrize(
    "cls",
    [
        errors.UnregisteredType,
        errors.UnsupportedType,
        errors.BufferTooSmall,
        errors.MessageTooLarge,
        errors.CorruptMessage,
        errors.ChecksumMismatch,
        errors.DecodeError,
        errors.IncompatibleStream,
        errors.UnsupportedVersion,
        errors.CorruptSnapshot,
        errors.Closed,
        errors.Timeout,
    ],
)
def test_errors_are_picklable_and_in_the_hierarchy(cls: type[errors.ZcserError]) -> None:
    exc = pickle.loads(pickle.dumps(cls("what to do")))
    assert type(exc) is cls and str(exc) == "what to do"
    assert isinstance(exc, errors.ZcserError)
    assert issubclass(cls, (errors.UsageError, errors.CorruptData, errors.Closed, errors.Timeout))


_DTYPES = st.sampled_from(["u1", "<i4", "<f8", ">i2", "<c8", "?", "S3", "<M8[s]"])
_ARRAYS = hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=30))
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=200)
    | _ARRAYS
)
_TREES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, np.ndarray):
        return (
            isinstance(got, np.ndarray)
            and got.dtype == want.dtype
            and got.shape == want.shape
            and got.tobytes() == want.tobytes()
        )
    if isinstance(want, bytes):
        return isinstance(got, (bytes, memoryview)) and bytes(got) == want
    if isinstance(want, (list, tuple)):
        return (
            type(got) is type(want)
            and len(got) == len(want)
            and all(_same(g, w) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, dict):
        return (
            type(got) is dict
            and got.keys() == want.keys()
            and all(_same(got[k], want[k]) for k in want)
        )
    return type(got) is type(want) and got == want


@settings(max_examples=150, deadline=None)
@given(
    tree=_TREES,
    threshold=st.sampled_from([0, 64, zcser.DEFAULT_THRESHOLD]),
    shift=st.integers(0, 63),
)
def test_random_nested_objects_round_trip(tree: Any, threshold: int, shift: int) -> None:
    codec = zcser.Codec(threshold=threshold)
    plan = codec.plan(tree)
    backing = bytearray(plan.nbytes + 64)
    target = memoryview(backing)[shift:]
    used = plan.write_into(target)
    assert _same(codec.decode(target[:used]), tree)
    assert _same(codec.decode(target[:used], copy=True), tree)


# --- the packed (no out-of-band buffer) path -----------------------------------------------------


@pytest.mark.parametrize("checksum", [False, True])
@settings(max_examples=40, deadline=None)
@given(
    obj=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text() | st.binary(),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
        max_leaves=12,
    )
)
def test_packed_is_the_message_write_into_writes(checksum: bool, obj: Any) -> None:
    codec = zcser.Codec(checksum=checksum)
    plan = codec.plan(obj)
    assert not plan.buffers
    packed = plan.packed()
    assert packed == bytes(_encode(codec, obj))
    assert codec.decode(packed) == obj


def test_packed_refuses_plans_with_buffers() -> None:
    plan = zcser.Codec().plan({"a": np.zeros(1 << 16)})
    with pytest.raises(errors.UsageError, match="write_into"):
        plan.packed()


def test_packed_message_corruption_raises_zcser_errors() -> None:
    codec = zcser.Codec(checksum=True)
    packed = codec.plan({"id": 1, "name": "x" * 40}).packed()
    for i in range(len(packed)):
        broken = bytearray(packed)
        broken[i] ^= 0x5A
        with pytest.raises(errors.ZcserError):
            codec.decode(broken)
    for end in range(len(packed)):
        with pytest.raises(errors.ZcserError):
            codec.decode(packed[:end])


# --- the receiver's small-message path ----------------------------------------------------------

SMALL_VALUES: list[Any] = [
    {"id": 12345, "t": 1.5, "name": "sensor-01", "ok": True, "tags": [1, 2, 3]},
    [1, 2.5, None, "x" * 300, b"bytes in band"],
    np.arange(100, dtype=np.int16),
    (1, (2, (3,))),
]


@pytest.mark.parametrize("value", SMALL_VALUES, ids=range(len(SMALL_VALUES)))
def test_pack_and_decode_small_agree_with_plan_and_decode(value: Any) -> None:
    codec = zcser.Codec()
    packed = codec.pack(value)
    assert isinstance(packed, bytes)
    assert packed == codec.plan(value).packed()
    fast, slow = codec.decode_small(packed), codec.decode(packed)
    assert type(fast) is type(slow)
    if isinstance(value, np.ndarray):
        assert np.array_equal(fast, value) and np.array_equal(slow, value)
        assert fast.flags.writeable == slow.flags.writeable
    else:
        assert fast == slow == value


def test_pack_returns_a_plan_for_out_of_band_buffers_and_checksummed_bytes() -> None:
    arr = np.ones(1 << 16)
    plan = zcser.Codec().pack({"a": arr})
    assert isinstance(plan, zcser.Plan) and len(plan.buffers) == 1
    checked = zcser.Codec(checksum=True)
    packed = checked.pack({"a": 1})
    assert isinstance(packed, bytes) and packed == checked.plan({"a": 1}).packed()
    assert checked.decode_small(packed) == {"a": 1}  # the general path checks the digest
    corrupt = bytearray(packed)
    corrupt[-1] ^= 0xFF
    with pytest.raises(errors.ChecksumMismatch):
        checked.decode_small(bytes(corrupt))


def test_decode_small_rejects_what_decode_rejects() -> None:
    codec = zcser.Codec()
    good = codec.pack({"k": [1, 2, 3]})
    assert isinstance(good, bytes)
    cases = {
        "truncated": good[:-3],
        "short": good[:10],
        "magic": b"XXXX" + good[4:],
        "garbage": good[:32] + bytes(len(good) - 32),
    }
    for name, data in cases.items():
        with pytest.raises(errors.ZcserError) as fast:
            codec.decode_small(data)
        with pytest.raises(errors.ZcserError) as slow:
            codec.decode(data)
        assert type(fast.value) is type(slow.value), name
    assert codec.decode_small(good + b"\0") == codec.decode(good + b"\0")  # bytes after total
    head = bytearray(good)
    _message.HEADER.pack_into(head, 0, b"ZCSR", 1, 0, 0, 0, len(good) - 33, len(good))
    with pytest.raises(errors.ZcserError):  # in-band length one byte short: trailing data
        codec.decode_small(bytes(head))
    n = len(good) - _message.TABLE_START
    for fields in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1 << 31)]:  # flags, count, reserved
        head = bytearray(good)  # lengths consistent with the size: only these fields differ
        _message.HEADER.pack_into(head, 0, b"ZCSR", 1, *fields, n, len(good))
        with pytest.raises(errors.ZcserError) as slow:
            codec.decode(bytes(head))
        with pytest.raises(type(slow.value)):
            codec.decode_small(bytes(head))


def test_pack_writes_the_header_for_each_in_band_length() -> None:
    """The plain message header is remembered by in-band length (a bounded table shared by
    all codecs): every length, before and after the table is full, gets its own header."""
    codec = zcser.Codec()
    for k in range(codec_core._PLAIN_HEADS_MAX + 100):
        value = "x" * k
        packed = codec.pack(value)
        assert packed == codec.plan(value).packed(), k
        assert codec.decode_small(packed) == value, k
    assert len(codec_core._PLAIN_HEADS) == codec_core._PLAIN_HEADS_MAX


def test_address_helper_agrees_with_arrow() -> None:
    from zcser.codec import memory

    arr = np.arange(1000, dtype=np.float64)
    for view in (memoryview(arr).cast("B"), memoryview(arr).cast("B")[8:], memoryview(b"")):
        assert memory.address(view) == memory._address_via_arrow(view)


def test_serializing_while_the_codec_is_already_serializing_keeps_both_buffer_lists() -> None:
    """The buffer callback is one object per codec, reused; a nested serialize (a serializer
    calling its codec again) gets a fresh one and leaves the outer call's buffers alone."""
    codec = zcser.Codec(threshold=64)
    outer: list[memoryview] = []
    codec._collect.buffers, codec._collect.busy = outer, True  # as if an outer serialize ran
    arr = np.arange(1000, dtype=np.float64)
    plan = codec.plan({"a": arr})
    assert codec._collect.buffers is outer and outer == [] and codec._collect.busy
    assert len(plan.buffers) == 1 and np.shares_memory(np.frombuffer(plan.buffers[0]), arr)
    packed = codec.pack({"a": arr})
    assert isinstance(packed, zcser.Plan) and len(packed.buffers) == 1 and outer == []
    codec._collect.busy = False
    assert len(codec.plan({"a": arr, "b": arr[:4]}).buffers) == 1  # 32 bytes stay in band
    assert not codec._collect.busy


def test_the_reused_buffer_list_leaves_with_its_message() -> None:
    """The callback's list is reused only while it stays empty: a list that took buffers
    belongs to its plan, and one left over by a failed serialize is dropped."""
    codec = zcser.Codec(threshold=64)
    first, second = np.arange(100.0), np.arange(200.0)
    one, two = codec.plan({"a": first}), codec.pack({"b": second})
    assert isinstance(two, zcser.Plan)
    assert [b.nbytes for b in one.buffers] == [800] and [b.nbytes for b in two.buffers] == [1600]
    with pytest.raises(errors.UnregisteredType):
        codec.pack({"a": first, "b": object()})  # the array was collected before the failure
    assert (
        codec.plan({"c": 1}).buffers == [] and codec.pack({"c": 1}) == codec.plan({"c": 1}).packed()
    )


# --- top-level bytes: written and read without running pyfory -----------------------------------

BYTES_LENGTHS = [0, 1, 2, 127, 128, 129, 300, 1023, 1024, 16383]


@pytest.mark.parametrize(
    "codec_args", [{}, {"ref": True}, {"threshold": 200}], ids=["default", "ref", "threshold"]
)
def test_pack_writes_small_bytes_exactly_as_pyfory_does(codec_args: dict[str, Any]) -> None:
    codec = zcser.Codec(**codec_args)
    reference = zcser.Codec(**codec_args)
    for n in BYTES_LENGTHS:
        value = bytes(i % 251 for i in range(n))
        packed = codec.pack(value)
        if n >= codec.threshold:
            assert isinstance(packed, zcser.Plan), n
            continue
        assert isinstance(packed, bytes)
        assert packed == reference.plan(value).packed(), n  # byte for byte pyfory's message
        fast = codec.decode_small(packed)
        assert type(fast) is bytes and fast == value == reference.decode(packed), n


def test_bytes_shortcut_is_off_where_pyfory_writes_otherwise() -> None:
    assert isinstance(zcser.Codec(checksum=True).pack(b"abc"), bytes)
    checked = zcser.Codec(checksum=True)
    assert checked.decode_small(checked.pack(b"abc")) == b"abc"
    assert checked._bytes_prefix in (None, b"")
    tiny = zcser.Codec(threshold=1)  # every non-empty buffer out of band
    assert isinstance(tiny.pack(b"ab"), zcser.Plan)


def _with_inband(inband: bytes) -> bytes:
    n = len(inband)
    return _message.HEADER.pack(b"ZCSR", 1, 0, 0, 0, n, _message.TABLE_START + n) + inband


def test_decode_small_bytes_shortcut_reads_only_what_pack_writes() -> None:
    """Messages that start like a small bytes object but are not byte for byte what pack writes
    (non-canonical length, wrong length, too long for the threshold, bytes after it) take
    pyfory's path: the same value or the same error as decode()."""
    codec = zcser.Codec(threshold=200)
    codec.pack(b"x")
    prefix = codec._bytes_prefix
    assert prefix
    cases = {
        "non-canonical length": prefix + b"\x83\x00abc",
        "length one short": prefix + b"\x02abc",
        "length one long": prefix + b"\x04abc",
        "no length": prefix,
        "two-byte length, no data": prefix + b"\x80\x02",
        "over the threshold": prefix + b"\xc8\x01" + bytes(200),
        "at the threshold, one-byte": prefix + b"\x7f" + bytes(127) + b"\0",
    }
    _assert_small_decodes_as_decode(codec, {n: _with_inband(b) for n, b in cases.items()})


def _assert_small_decodes_as_decode(codec: zcser.Codec, cases: dict[str, bytes]) -> None:
    """decode_small gives what decode gives for each message: the same value or error."""
    for name, data in cases.items():
        try:
            slow: Any = codec.decode(data)
        except errors.ZcserError as exc:
            with pytest.raises(type(exc)):
                codec.decode_small(data)
            continue
        assert codec.decode_small(data) == slow, name


def test_decode_small_remembers_a_checked_head_only_for_exactly_those_bytes() -> None:
    """After a canonical small bytes message of some size was decoded (its head remembered for
    that size), a message of the same size whose head differs (a non-canonical length, another
    length split between header and data, other flags) still takes the full check: the same
    value or the same error as decode()."""
    codec = zcser.Codec(threshold=200)
    prefix = codec._probe_bytes()
    assert prefix
    canonical = _with_inband(prefix + b"\x03abc")
    assert codec.decode_small(canonical) == b"abc"
    assert codec._small_heads[len(canonical)] == canonical[:-3]
    assert codec.decode_small(canonical[:-3] + b"xyz") == b"xyz"  # the remembered head
    same_size = {
        "non-canonical length": _with_inband(prefix + b"\x83\x00ab"),
        "length one long": _with_inband(prefix + b"\x04abc"),
        "flags": canonical[:5] + bytes([canonical[5] ^ 1]) + canonical[6:],
    }
    assert all(len(data) == len(canonical) for data in same_size.values())
    _assert_small_decodes_as_decode(codec, same_size)


def test_decode_small_remembers_a_bounded_number_of_heads() -> None:
    codec = zcser.Codec()
    for n in range(200):
        packed = codec.pack(bytes(n))
        assert isinstance(packed, bytes)
        assert codec.decode_small(packed) == bytes(n)
    assert 0 < len(codec._small_heads) <= codec_core._BYTES_HEADS
