"""Registered plain classes decode without running class code on peer-chosen names: attributes
go straight into the instance dict or its slots, and only plain declared fields are accepted."""

from __future__ import annotations

from typing import Any

import pytest

import zcser
from zcser.errors import CorruptMessage


class Guarded:
    """A class whose property setter and __setattr__ must not run on decode."""

    setter_calls: list[Any] = []  # noqa: RUF012
    setattr_calls: list[str] = []  # noqa: RUF012

    def __init__(self) -> None:
        self.value = 1

    @property
    def limit(self) -> int:
        return 0

    @limit.setter
    def limit(self, value: int) -> None:
        Guarded.setter_calls.append(value)

    def __setattr__(self, name: str, value: Any) -> None:
        Guarded.setattr_calls.append(name)
        object.__setattr__(self, name, value)


class Slotted:
    __slots__ = ("x", "y")

    def __init__(self, x: Any, y: Any) -> None:
        self.x = x
        self.y = y


def _pair() -> tuple[zcser.Codec, zcser.Codec]:
    writer, reader = zcser.Codec(), zcser.Codec()
    for codec in (writer, reader):
        codec.register(Guarded, name="tests.Guarded")
        codec.register(Slotted, name="tests.Slotted")
    return writer, reader


def test_plain_attributes_are_set_without_running_setattr() -> None:
    writer, reader = _pair()
    sent = Guarded()
    sent.__dict__["extra"] = [1, 2]
    Guarded.setattr_calls.clear()
    got = reader.decode(writer.pack(sent))
    assert type(got) is Guarded and vars(got) == {"value": 1, "extra": [1, 2]}
    assert Guarded.setattr_calls == []


@pytest.mark.parametrize("name", ["limit", "__dict__", "__module__x__", "not an identifier"])
def test_peer_chosen_property_and_dunder_names_are_refused(name: str) -> None:
    writer, reader = _pair()
    sent = Guarded()
    sent.__dict__[name] = {"z": 1} if name == "__dict__" else 5
    Guarded.setter_calls.clear()
    with pytest.raises(CorruptMessage, match="not a field zcser decodes"):
        reader.decode(writer.pack(sent))
    assert Guarded.setter_calls == []


def test_slotted_classes_take_only_their_slots() -> None:
    writer, reader = _pair()
    got = reader.decode(writer.pack(Slotted([1], "b")))
    assert type(got) is Slotted and (got.x, got.y) == ([1], "b")
