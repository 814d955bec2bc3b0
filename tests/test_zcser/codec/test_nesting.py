"""What encodes decodes: objects nested up to MAX_NESTING levels round trip, deeper ones are
refused at encode with UnsupportedType (pyfory's reader counts two levels per container, so a
plain pyfory limit refused to decode 26 nested dicts that had encoded fine)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import zcser
from zcser.codec.core import MAX_NESTING
from zcser.errors import UnsupportedType


@dataclasses.dataclass
class Node:
    child: Any


class Box:
    def __init__(self, inside: Any) -> None:
        self.inside = inside


def _object_array(x: Any) -> np.ndarray:
    array = np.empty(2, dtype=object)
    array[0], array[1] = x, None
    return array


KINDS: dict[str, Callable[[Any], Any]] = {
    "list": lambda x: [x],
    "tuple": lambda x: (x,),
    "dict": lambda x: {"k": x},
    "ordered-dict": lambda x: OrderedDict(k=x),
    "frozenset": lambda x: frozenset({x}),
    "object-array": _object_array,
    "dataclass": Node,
    "plain-class": Box,
    "mixed": lambda x: [x] if isinstance(x, dict) else {"k": x},
}


def _nested(levels: int, make: Callable[[Any], Any]) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = make(value)
    return value


def _codec(**kw: Any) -> zcser.Codec:
    codec = zcser.Codec(**kw)
    codec.register(Node, name="tests.Node")
    codec.register(Box, name="tests.Box")
    return codec


@pytest.mark.parametrize("ref", [False, True])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_max_nesting_levels_encode_and_decode(kind: str, ref: bool) -> None:
    value = _nested(MAX_NESTING, KINDS[kind])
    writer, reader = _codec(ref=ref), _codec(ref=ref)
    plan = writer.plan(value)
    out = bytearray(plan.nbytes)
    got = reader.decode(out[: plan.write_into(out)])
    assert type(got) is type(value)
    for _ in range(MAX_NESTING - 1):  # walk down to the innermost level
        got = _inner(got)
    assert _inner(got) == 1


def _inner(value: Any) -> Any:
    if isinstance(value, dict):
        (key, item), *_ = value.items()
        return item if key == "k" else key[0] if isinstance(key, tuple) else key
    if isinstance(value, (list, tuple)):
        return value[0]
    if isinstance(value, frozenset):
        return next(iter(value))
    if isinstance(value, np.ndarray):
        return value[0]
    if isinstance(value, Node):
        return value.child
    return value.inside


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_level_more_is_refused_at_encode(kind: str, tmp_path: Path) -> None:
    value = _nested(MAX_NESTING + 1, KINDS[kind])
    codec = _codec()
    with pytest.raises(UnsupportedType, match=f"more than {MAX_NESTING} levels"):
        codec.plan(value)
    with pytest.raises(UnsupportedType, match="flatten it"):
        zcser.save(value, tmp_path / "deep.zcs", codec=codec)
    assert not (tmp_path / "deep.zcs").exists()


def test_nesting_inside_a_dict_key_counts_too() -> None:
    codec = _codec()
    fits = {_nested(MAX_NESTING - 1, KINDS["tuple"]): 1}
    assert codec.decode(codec.pack(fits)) == fits
    with pytest.raises(UnsupportedType, match="levels deep"):
        codec.pack({_nested(MAX_NESTING, KINDS["tuple"]): 1})


def test_twenty_six_nested_dicts_save_and_load(tmp_path: Path) -> None:
    value = _nested(26, KINDS["dict"])
    zcser.save(value, tmp_path / "d.zcs")
    assert zcser.load(tmp_path / "d.zcs") == value
    assert zcser.loads(zcser.dumps(value)) == value


def test_wide_flat_messages_are_not_refused() -> None:
    rows = [{"id": i, "tags": [i, (i, str(i))]} for i in range(2000)]
    assert zcser.loads(zcser.dumps(rows)) == rows
