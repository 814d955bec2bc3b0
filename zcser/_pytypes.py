"""Serializers for Python built-ins pyfory's strict mode lacks: complex and frozenset."""

from __future__ import annotations

from typing import Any

from pyfory.serializer import Serializer

from zcser import _typeids
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


def install(fory: Any) -> None:
    """Register the built-in type serializers on a pyfory.Fory instance."""
    resolver = fory.type_resolver
    fory.register(
        complex, type_id=_typeids.COMPLEX, serializer=ComplexSerializer(resolver, complex)
    )
    fory.register(
        frozenset, type_id=_typeids.FROZENSET, serializer=FrozenSetSerializer(resolver, frozenset)
    )
