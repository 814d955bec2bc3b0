"""The decode budget: a message of n bytes never makes the decoder build much more than n.

Hostile messages are forged with the real codec: the writer's serializer for one type is
swapped for one that writes the metadata an attacker would (declared counts, formats, itemsizes)
and the reader is an ordinary codec.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyfory.serializer import Serializer

import zcser
from zcser.codec import oob
from zcser.errors import CorruptMessage, CorruptSnapshot, UsageError

HUGE = 10_000_000  # elements declared by the forged messages below (80 MB at 8 bytes each)


def _forging_codec(cls: type, write: Callable[[Any, Any], None]) -> zcser.Codec:
    """A codec whose serializer for `cls` writes what `write(ctx, value)` writes."""

    class Forge(Serializer):
        def write(self, write_context: Any, value: Any) -> None:
            write(write_context, value)

    codec = zcser.Codec()
    info = codec._fory.type_resolver.get_type_info(cls)
    info.serializer = Forge(codec._fory.type_resolver, cls)
    return codec


def _zero_size_array(ctx: Any, value: Any) -> None:
    """An ndarray header declaring HUGE elements of dtype 'U0' (no data bytes follow)."""
    ctx.write_uint8(0)  # plain dtype, C order, not inline
    ctx.write_string("<U0")
    ctx.write_var_uint32(1)
    ctx.write_var_uint64(HUGE)


def _object_memoryview(ctx: Any, value: Any) -> None:
    """A memoryview header declaring format 'O', itemsize 0 and HUGE slots, with no data."""
    ctx.write_string("O")
    ctx.write_var_uint32(0)
    ctx.write_var_uint32(1)
    ctx.write_var_uint64(HUGE)
    oob.write_raw(ctx, b"")


def _forged(write: Callable[[Any, Any], None], cls: type, value: Any) -> bytes:
    message = _forging_codec(cls, write).pack({"x": value, "pad": b"p" * (1 << 15)})
    assert not isinstance(message, bytes)
    out = bytearray(message.nbytes_at(0))
    del out[message.write_into(out, base_address=0) :]
    return bytes(out)


def test_memoryview_of_object_format_from_a_47_byte_message_is_refused() -> None:
    message = _forging_codec(memoryview, _object_memoryview).pack(memoryview(b"x"))
    assert isinstance(message, bytes) and len(message) == 47
    with pytest.raises(CorruptMessage, match="format 'O', itemsize 0"):
        zcser.Codec().decode_small(message)


@pytest.mark.parametrize("fmt, itemsize", [("B", 0), ("d", 4), ("<d", 8), ("O", 8), ("x", 1)])
def test_memoryview_format_and_itemsize_must_agree_with_what_cast_builds(
    fmt: str, itemsize: int
) -> None:
    def write(ctx: Any, value: Any) -> None:
        ctx.write_string(fmt)
        ctx.write_var_uint32(itemsize)
        ctx.write_var_uint32(1)
        ctx.write_var_uint64(2)
        oob.write_raw(ctx, bytes(2 * itemsize))

    message = _forging_codec(memoryview, write).pack(memoryview(b"x"))
    with pytest.raises(CorruptMessage, match="bad memoryview metadata"):
        zcser.Codec().decode(message)


@pytest.mark.parametrize("dtype", ["<U0", "|V0", "|S0"])
def test_zero_itemsize_array_with_a_huge_shape_exceeds_the_budget(dtype: str) -> None:
    def write(ctx: Any, value: Any) -> None:
        ctx.write_uint8(0)
        ctx.write_string(dtype)
        ctx.write_var_uint32(1)
        ctx.write_var_uint64(HUGE)

    message = _forging_codec(np.ndarray, write).pack(np.zeros(1))
    assert isinstance(message, bytes) and len(message) < 64
    with pytest.raises(CorruptMessage, match="decode_allowance"):
        zcser.Codec().decode_small(message)


def test_subarray_of_zero_size_items_hidden_in_the_dtype_is_charged() -> None:
    empty = {"names": [], "formats": [], "offsets": [], "itemsize": 0, "aligned": False}
    descr = json.dumps({"base": empty, "shape": [10_000_000]})  # numpy refuses 'U0' subarrays

    def write(ctx: Any, value: Any) -> None:
        ctx.write_uint8(2)  # dtype as a JSON description
        ctx.write_string(descr)
        ctx.write_var_uint32(1)
        ctx.write_var_uint64(1)

    message = _forging_codec(np.ndarray, write).pack(np.zeros(1))
    with pytest.raises(CorruptMessage, match="decode_allowance"):
        zcser.Codec().decode(message)


def test_zero_itemsize_arrays_within_the_allowance_still_decode() -> None:
    small = np.zeros(1000, "U0")
    got = zcser.loads(zcser.dumps({"a": small}))["a"]
    assert got.dtype == small.dtype and got.shape == small.shape


def test_budget_holds_on_every_decode_path(tmp_path: Path) -> None:
    message = _forged(_zero_size_array, np.ndarray, np.zeros(1))
    codec = zcser.Codec()
    with pytest.raises(CorruptMessage, match="decode_allowance"):
        codec.decode(message)
    with pytest.raises(CorruptMessage, match="decode_allowance"):
        codec.decode(message, copy=True)
    with pytest.raises(CorruptMessage, match="decode_allowance"):
        codec.decode_small(message)
    plan = _forging_codec(np.ndarray, _zero_size_array).plan(
        {"x": np.zeros(1), "pad": b"p" * (1 << 15)}
    )
    head = bytes(plan.segments(0)[0][1])
    with pytest.raises(CorruptMessage, match="decode_allowance"):
        codec.decode_parts(head, [bytes(b) for b in plan.buffers])
    path = tmp_path / "forged.zcs"
    zcser.save({"x": np.zeros(1)}, path, codec=_forging_codec(np.ndarray, _zero_size_array))
    with pytest.raises(CorruptSnapshot, match="decode_allowance"):
        zcser.load(path)
    assert oob.get_state().left is None  # no budget is left open after a failed decode


def test_decode_allowance_admits_trusted_messages_that_need_more() -> None:
    message = _forged(_zero_size_array, np.ndarray, np.zeros(1))
    got = zcser.Codec(decode_allowance=HUGE * 8).decode(message)
    assert got["x"].shape == (HUGE,) and got["x"].dtype.kind == "U"


@pytest.mark.parametrize("bad", [-1, 1.5, "1", None])
def test_decode_allowance_must_be_a_non_negative_int(bad: Any) -> None:
    with pytest.raises(UsageError, match="decode_allowance"):
        zcser.Codec(decode_allowance=bad)


def test_charge_is_limited_only_inside_a_decode() -> None:
    oob.charge(1 << 40, "outside any decode")  # no budget: nothing to refuse
    token = oob.open_budget(100)
    try:
        oob.charge(60, "first")
        with pytest.raises(CorruptMessage, match="second would allocate 60 bytes"):
            oob.charge(60, "second")
    finally:
        oob.close_budget(token)
    oob.charge(1 << 40, "after the budget closed")


class _ChargesWhileDecoding:
    """Stands for an adapter (Arrow, pandas) that charges what it builds during a decode."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


class _Charging(Serializer):
    """Writes the object's size; reading it charges that many bytes to the open budget."""

    def write(self, write_context: Any, value: _ChargesWhileDecoding) -> None:
        write_context.write_var_uint64(value.nbytes)

    def read(self, read_context: Any) -> _ChargesWhileDecoding:
        nbytes = read_context.read_var_uint64()
        oob.charge(nbytes, "the test adapter")
        return _ChargesWhileDecoding(nbytes)


def test_an_adapter_charge_during_any_decode_sees_that_message_budget() -> None:
    codecs = [zcser.Codec(decode_allowance=1000), zcser.Codec(decode_allowance=1000)]
    for codec in codecs:
        codec._fory.register(
            _ChargesWhileDecoding,
            type_id=1999,
            serializer=_Charging(codec._fory.type_resolver, _ChargesWhileDecoding),
        )
    writer, reader = codecs
    fits = writer.pack([_ChargesWhileDecoding(900)])
    assert isinstance(fits, bytes)
    assert reader.decode_small(fits)[0].nbytes == 900
    assert reader.decode(fits)[0].nbytes == 900
    too_much = writer.pack([_ChargesWhileDecoding(700), _ChargesWhileDecoding(700)])
    assert isinstance(too_much, bytes)
    for decode in (reader.decode_small, reader.decode):
        with pytest.raises(CorruptMessage, match="the test adapter would allocate 700"):
            decode(too_much)


def test_a_decode_small_inside_another_decode_has_its_own_budget_and_restores_the_outer() -> None:
    """decode_small while a budget is open (an adapter decoding a message inside a message)
    opens one of its own for its message and leaves the outer one current, as it was."""

    codec = zcser.Codec(decode_allowance=1000)
    codec._fory.register(
        _ChargesWhileDecoding,
        type_id=1999,
        serializer=_Charging(codec._fory.type_resolver, _ChargesWhileDecoding),
    )
    message = codec.pack([_ChargesWhileDecoding(900)])
    assert isinstance(message, bytes)
    token = oob.open_budget(100)
    try:
        outer = oob.get_state()
        assert codec.decode_small(message)[0].nbytes == 900  # more than the outer 100 left
        assert oob.get_state() is outer and outer.left == 100
    finally:
        oob.close_budget(token)
    assert oob.get_state().left is None
    assert codec.decode_small(message)[0].nbytes == 900
    assert oob.get_state().left is None
