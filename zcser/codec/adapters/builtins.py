"""Serializers for Python built-ins pyfory's strict mode lacks or changes: complex, frozenset,
OrderedDict (what `torch.nn.Module.state_dict()` returns), datetime.time, and datetime.datetime
(pyfory's own turns a naive datetime into an aware one in UTC)."""

from __future__ import annotations

import datetime as _dt
from collections import OrderedDict
from typing import Any

from pyfory.serializer import Serializer

from zcser.codec import typeids as _typeids
from zcser.errors import CorruptMessage, UnsupportedType


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


# datetime.datetime / datetime.time layout (in band):
#   u8 flags: bit 0 aware (a UTC offset follows), bit 1 fold, bit 2 tzinfo is timezone.utc
#   datetime only: var_uint32 year, u8 month, u8 day
#   u8 hour, u8 minute, u8 second, var_uint32 microsecond
#   aware only: var_int64 UTC offset in microseconds (the reader gets datetime.timezone(offset))
_AWARE = 0x01
_FOLD = 0x02
_UTC = 0x04
_ONE_MICROSECOND = _dt.timedelta(microseconds=1)


def _write_clock(write_context: Any, value: _dt.datetime | _dt.time, offset: Any) -> None:
    write_context.write_uint8(value.hour)
    write_context.write_uint8(value.minute)
    write_context.write_uint8(value.second)
    write_context.write_var_uint32(value.microsecond)
    if offset is not None:
        write_context.write_varint64(offset // _ONE_MICROSECOND)


def _flags(value: _dt.datetime | _dt.time, offset: Any) -> int:
    return (
        (_AWARE if offset is not None else 0)
        | (_FOLD if value.fold else 0)
        | (_UTC if value.tzinfo is _dt.timezone.utc else 0)
    )


def _read_clock(read_context: Any, flags: int) -> tuple[int, int, int, int, Any]:
    """hour, minute, second, microsecond and tzinfo (None when naive)."""
    if flags & ~(_AWARE | _FOLD | _UTC):
        raise CorruptMessage(f"unknown datetime flags {flags:#x}")
    hour = read_context.read_uint8()
    minute = read_context.read_uint8()
    second = read_context.read_uint8()
    microsecond = read_context.read_var_uint32()
    tzinfo = None
    if flags & _AWARE:
        offset = _dt.timedelta(microseconds=read_context.read_varint64())
        try:
            tzinfo = _dt.timezone.utc if flags & _UTC and not offset else _dt.timezone(offset)
        except (ValueError, OverflowError) as exc:
            raise CorruptMessage(f"impossible UTC offset in a datetime: {exc}") from exc
    return hour, minute, second, microsecond, tzinfo


class DateTimeSerializer(Serializer):
    """datetime.datetime, naive kept naive; an aware one keeps its instant and UTC offset (its
    tzinfo becomes a fixed-offset datetime.timezone)."""

    def write(self, write_context: Any, value: _dt.datetime) -> None:
        offset = value.utcoffset()
        write_context.write_uint8(_flags(value, offset))
        write_context.write_var_uint32(value.year)
        write_context.write_uint8(value.month)
        write_context.write_uint8(value.day)
        _write_clock(write_context, value, offset)

    def read(self, read_context: Any) -> _dt.datetime:
        flags = read_context.read_uint8()
        year = read_context.read_var_uint32()
        month = read_context.read_uint8()
        day = read_context.read_uint8()
        hour, minute, second, micro, tzinfo = _read_clock(read_context, flags)
        try:
            return _dt.datetime(
                year, month, day, hour, minute, second, micro, tzinfo, fold=(flags & _FOLD) >> 1
            )
        except (ValueError, OverflowError) as exc:
            raise CorruptMessage(f"impossible datetime in message: {exc}") from exc


class TimeSerializer(Serializer):
    """datetime.time, naive or with a fixed UTC offset."""

    def write(self, write_context: Any, value: _dt.time) -> None:
        offset = value.utcoffset()
        if offset is None and value.tzinfo is not None:
            raise UnsupportedType(
                f"datetime.time with tzinfo {value.tzinfo!r} has no fixed UTC offset: send "
                "a datetime.datetime (whose offset is known) or a naive time"
            )
        write_context.write_uint8(_flags(value, offset))
        _write_clock(write_context, value, offset)

    def read(self, read_context: Any) -> _dt.time:
        flags = read_context.read_uint8()
        hour, minute, second, micro, tzinfo = _read_clock(read_context, flags)
        try:
            return _dt.time(hour, minute, second, micro, tzinfo, fold=(flags & _FOLD) >> 1)
        except (ValueError, OverflowError) as exc:
            raise CorruptMessage(f"impossible time of day in message: {exc}") from exc


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
    fory.register(_dt.time, type_id=_typeids.TIME, serializer=TimeSerializer(resolver, _dt.time))
