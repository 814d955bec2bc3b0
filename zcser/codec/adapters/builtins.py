"""Serializers for Python built-ins pyfory's strict mode lacks: complex, frozenset and
OrderedDict (what `torch.nn.Module.state_dict()` returns)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pyfory.serializer import Serializer

from zcser.codec import typeids as _typeids
from zcser.errors import CorruptMessage


class ComplexSerializer(Serializer):
    """complex as two float64."""

    def write(self, write_context: Any, value: complex) -> None:
        write_context.write_double(value.real)
        write_context.write_double(value.imag)

    def read(self, read_context: Any) -> complex:
        return complex(read_context.read_double(), read_context.read_double())


class FrozenSetSerializer(Serializer):
    """frozenset as a count and its elements."""

    def write(self, write_context: Any, value: frozenset[Any]) -> None:
        write_context.write_var_uint32(len(value))
        for item in value:
            write_context.write_ref(item)

    def read(self, read_context: Any) -> frozenset[Any]:
        count = read_context.read_var_uint32()
        read_context.check_readable_bytes(count)
        items = [read_context.read_ref() for _ in range(count)]
        try:
            return frozenset(items)
        except TypeError as exc:
            raise CorruptMessage(f"frozenset element is unhashable: {exc}") from exc


class OrderedDictSerializer(Serializer):
    """OrderedDict as a count and its key/value pairs, order kept."""

    def write(self, write_context: Any, value: OrderedDict[Any, Any]) -> None:
        write_context.write_var_uint32(len(value))
        for key, item in value.items():
            write_context.write_ref(key)
            write_context.write_ref(item)

    def read(self, read_context: Any) -> OrderedDict[Any, Any]:
        count = read_context.read_var_uint32()
        read_context.check_readable_bytes(count)
        out: OrderedDict[Any, Any] = OrderedDict()
        for _ in range(count):
            key = read_context.read_ref()
            try:
                out[key] = read_context.read_ref()
            except TypeError as exc:
                raise CorruptMessage(f"OrderedDict key is unhashable: {exc}") from exc
        return out


NAME = "pytypes"
"""The name the stream schema carries for this adapter: fixed across releases (it is part
of the wire format), whatever the module is called."""


def install(fory: Any) -> None:
    """Register the built-in type serializers on a pyfory.Fory instance."""
    resolver = fory.type_resolver
    fory.register(
        complex, type_id=_typeids.COMPLEX, serializer=ComplexSerializer(resolver, complex)
    )
    fory.register(
        frozenset, type_id=_typeids.FROZENSET, serializer=FrozenSetSerializer(resolver, frozenset)
    )
    fory.register(
        OrderedDict,
        type_id=_typeids.ORDERED_DICT,
        serializer=OrderedDictSerializer(resolver, OrderedDict),
    )
