"""numpy serializers: arrays (every large one out of band, any layout), scalars, matrix, masked.

Replaces pyfory's ndarray serializer, which keeps 1-D arrays in band and drops structured field
names. The dtype travels as `dtype.str` or, for structured/subarray dtypes, as a JSON
description parsed back field by field (never eval). C and F-contiguous arrays are sent
without a copy; other strided arrays are copied once to C order on the writer side.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from pyfory.serializer import Serializer

from zcser.codec import typeids as _typeids
from zcser.codec.oob import (
    charge,
    copy_requested,
    inline_limit,
    read_inline,
    read_raw,
    writable_requested,
    write_inline,
    write_raw,
)
from zcser.errors import CorruptMessage, UnsupportedType

# Array encodings (first in-band byte of an ndarray): a kind plus flag bits
_TAG_PLAIN_C = 0
_TAG_DESCR_C = 2  # dtype as a JSON description (structured / subarray)
_TAG_OBJECT = 4  # object dtype, elements through pyfory
_FLAG_FORTRAN = 1  # data in Fortran order
_FLAG_INLINE = 8  # small: data in band right here (bypasses the buffer callback)

MAX_NDIM = 64
MAX_DESCR_DEPTH = 16
MAX_DTYPE_STR = 64
MAX_CACHED_DTYPES = 512
UNBACKED_ELEMENT_COST = 8
"""Bytes charged to the decode budget (`oob.charge`) per array element the message carries no
bytes for (zero-size items such as 'U0' or 'V0', or subarrays of them): what each costs once
used as an object."""
_PLAIN_CACHE: dict[str, np.dtype] = {}
_STR_OF: dict[np.dtype, str] = {}

OBJECT_ARRAYS = [0]
"""[count of object-dtype arrays serialized so far]: the codec's nesting check walks into
arrays only when it changed during an encode (a list, so the codec reads it without a call)."""


# One type id per scalar char, in this fixed order: ids are NP_SCALAR_FIRST + index.
SCALAR_CHARS = "?bBhHiIlLqQefdgFDGMmSUV"


def _describe(dtype: np.dtype) -> Any:
    """A JSON-able description of a dtype that keeps names, offsets, byte order and subarrays."""
    if dtype.names is not None:
        fields = dtype.fields
        assert fields is not None
        return {
            "names": list(dtype.names),
            "formats": [_describe(fields[name][0]) for name in dtype.names],
            "offsets": [int(fields[name][1]) for name in dtype.names],
            "itemsize": int(dtype.itemsize),
            "aligned": bool(dtype.isalignedstruct),
        }
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return {"base": _describe(base), "shape": [int(d) for d in shape]}
    return dtype.str


def _parse_descr(descr: Any, depth: int = 0) -> np.dtype:
    """Rebuild a dtype from `_describe` output, checking every type (no eval, no objects)."""
    if depth > MAX_DESCR_DEPTH:
        raise CorruptMessage("dtype description nested too deeply")
    if isinstance(descr, str):
        return _plain_dtype(descr)
    if not isinstance(descr, dict):
        raise CorruptMessage(f"bad dtype description element of type {type(descr).__name__}")
    if set(descr) == {"base", "shape"}:
        shape = descr["shape"]
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**31 for d in shape):
            raise CorruptMessage("bad subarray shape in dtype description")
        return _checked_dtype((_parse_descr(descr["base"], depth + 1), tuple(shape)))
    if set(descr) != {"names", "formats", "offsets", "itemsize", "aligned"}:
        raise CorruptMessage(f"bad dtype description keys {sorted(descr)}")
    names, formats, offsets = descr["names"], descr["formats"], descr["offsets"]
    itemsize, aligned = descr["itemsize"], descr["aligned"]
    ok = (
        isinstance(names, list)
        and isinstance(formats, list)
        and isinstance(offsets, list)
        and len(names) == len(formats) == len(offsets)
        and all(isinstance(n, str) for n in names)
        and all(type(o) is int and 0 <= o < 2**31 for o in offsets)
        and type(itemsize) is int
        and 0 <= itemsize < 2**31
        and isinstance(aligned, bool)
    )
    if not ok:
        raise CorruptMessage("bad structured dtype description")
    spec = {
        "names": names,
        "formats": [_parse_descr(f, depth + 1) for f in formats],
        "offsets": offsets,
        "itemsize": itemsize,
    }
    return _checked_dtype(spec, align=aligned)


def _elements_per_item(dtype: np.dtype) -> int:
    """How many elements one item of `dtype` holds, counting subarrays and fields of every
    nesting level (a subarray of zero-size items hides elements that take no bytes)."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return math.prod(shape) * _elements_per_item(base)
    if dtype.names is not None:
        fields = dtype.fields
        assert fields is not None
        return max(1, sum(_elements_per_item(fields[name][0]) for name in dtype.names))
    return 1


def _charge_unbacked(dtype: np.dtype, count: int, nbytes: int) -> None:
    """Charge the decode budget for elements the message declares but carries no bytes for:
    each element of a nonzero itemsize takes at least one of the `nbytes` the message holds."""
    if dtype.itemsize and dtype.names is None and dtype.subdtype is None:
        return
    elements = count * _elements_per_item(dtype)
    if elements > nbytes:
        charge(
            (elements - nbytes) * UNBACKED_ELEMENT_COST,
            f"an array of {elements} elements of dtype {dtype} in {nbytes} bytes",
        )


def _checked_dtype(spec: Any, align: bool = False) -> np.dtype:
    """np.dtype(spec) with numpy's errors turned into CorruptMessage; object dtypes refused."""
    try:
        dtype: np.dtype = np.dtype(spec, align=align)
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise CorruptMessage(f"invalid dtype in message: {exc}") from exc
    if dtype.hasobject:
        raise CorruptMessage("object dtype over raw memory refused (would read pointers)")
    return dtype


def _plain_dtype(text: str) -> np.dtype:
    """A non-structured dtype from its `dtype.str` form (validated ones cached)."""
    dtype = _PLAIN_CACHE.get(text)
    if dtype is not None:
        return dtype
    if len(text) > MAX_DTYPE_STR or not text.isascii() or not text.isprintable():
        raise CorruptMessage(f"bad dtype string {text[:MAX_DTYPE_STR]!r}")
    dtype = _checked_dtype(text)
    if len(_PLAIN_CACHE) < MAX_CACHED_DTYPES:
        _PLAIN_CACHE[text] = dtype
    return dtype


def _cache_str(dtype: np.dtype) -> str:
    """`dtype.str` of a plain dtype, remembered (it costs about a microsecond)."""
    text = dtype.str
    if len(_STR_OF) < MAX_CACHED_DTYPES:
        _STR_OF[dtype] = text
    return text


def _write_dtype(write_context: Any, dtype: np.dtype) -> bool:
    """Write the dtype; True if it went as a JSON description (structured or subarray)."""
    if dtype.names is None and dtype.subdtype is None:
        write_context.write_string(dtype.str)
        return False
    write_context.write_string(json.dumps(_describe(dtype), separators=(",", ":")))
    return True


def _read_dtype(read_context: Any, described: bool) -> np.dtype:
    """Read a dtype written by `_write_dtype`."""
    text = read_context.read_string()
    if not described:
        return _plain_dtype(text)
    try:
        descr = json.loads(text)
    except ValueError as exc:
        raise CorruptMessage(f"bad dtype description: {exc}") from exc
    return _parse_descr(descr)


def _read_shape(read_context: Any) -> tuple[int, ...]:
    ndim = read_context.read_var_uint32()
    if ndim == 1:
        return (read_context.read_var_uint64(),)
    if ndim > MAX_NDIM:
        raise CorruptMessage(f"array with {ndim} dimensions (numpy allows {MAX_NDIM})")
    return tuple(read_context.read_var_uint64() for _ in range(ndim))


def _write_shape(write_context: Any, shape: tuple[int, ...]) -> None:
    write_context.write_var_uint32(len(shape))
    if len(shape) == 1:
        write_context.write_var_uint64(shape[0])
        return
    for dim in shape:
        write_context.write_var_uint64(dim)


def _finish(array: np.ndarray) -> np.ndarray:
    """Arrays decoded without copy=True are read-only, including private in-band ones."""
    if not copy_requested() and not writable_requested():
        array.flags.writeable = False
    return array


class NDArraySerializer(Serializer):
    """np.ndarray with its exact dtype, shape and memory order; data through `_oob`."""

    def write(self, write_context: Any, value: np.ndarray) -> None:
        dtype = value.dtype
        if dtype.hasobject:
            self._write_objects(write_context, value)
            return
        flags = value.flags
        fortran = not flags.c_contiguous and flags.f_contiguous
        if not (flags.c_contiguous or fortran):
            value = np.ascontiguousarray(value)
        plain = _STR_OF.get(dtype)
        if plain is None and dtype.names is None and dtype.subdtype is None:
            plain = _cache_str(dtype)
        nbytes = value.nbytes
        inline = 0 < nbytes < inline_limit()
        tag = (
            (_TAG_PLAIN_C if plain is not None else _TAG_DESCR_C)
            | (_FLAG_FORTRAN if fortran else 0)
            | (_FLAG_INLINE if inline else 0)
        )
        write_context.write_uint8(tag)
        if plain is not None:
            write_context.write_string(plain)
        else:
            _write_dtype(write_context, dtype)
        _write_shape(write_context, value.shape)
        if not nbytes:
            return
        data = value.T if fortran else value
        if plain is None or dtype.kind in "mM":  # no (reliable) buffer export: use bytes
            data = data.reshape(-1).view(np.uint8)
        if inline:
            write_inline(write_context, data)
        else:
            write_raw(write_context, data)

    def _write_objects(self, write_context: Any, value: np.ndarray) -> None:
        if value.dtype != np.dtype(object):
            raise UnsupportedType(
                f"structured dtype {value.dtype} mixes objects and raw fields: "
                "send the fields as separate arrays"
            )
        OBJECT_ARRAYS[0] += 1
        write_context.write_uint8(_TAG_OBJECT)
        _write_shape(write_context, value.shape)
        for item in value.reshape(-1):
            write_context.write_ref(item)

    def read(self, read_context: Any) -> np.ndarray:
        tag = read_context.read_uint8()
        if tag == _TAG_OBJECT:
            return self._read_objects(read_context)
        if tag & ~(_TAG_DESCR_C | _FLAG_FORTRAN | _FLAG_INLINE):
            raise CorruptMessage(f"unknown ndarray encoding tag {tag}")
        if tag & _TAG_DESCR_C:
            dtype = _read_dtype(read_context, described=True)
        else:
            text = read_context.read_string()
            dtype = _PLAIN_CACHE.get(text) or _plain_dtype(text)
        shape = _read_shape(read_context)
        fortran = bool(tag & _FLAG_FORTRAN)
        count = shape[0] if len(shape) == 1 else math.prod(shape)
        nbytes = count * dtype.itemsize
        _charge_unbacked(dtype, count, nbytes)
        if nbytes == 0:
            try:
                return _finish(np.empty(shape, dtype, order="F" if fortran else "C"))
            except (ValueError, MemoryError) as exc:
                raise CorruptMessage(f"impossible empty array shape {shape}") from exc
        if tag & _FLAG_INLINE:
            flat = np.frombuffer(read_inline(read_context, nbytes), dtype=dtype, count=count)
            if copy_requested() or writable_requested():
                flat = flat.copy()
        else:  # read-only unless copy/writable was asked, like the view it comes from
            flat = np.frombuffer(read_raw(read_context, nbytes), dtype=dtype, count=count)
        if len(shape) == 1:
            return flat
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)

    def _read_objects(self, read_context: Any) -> np.ndarray:
        shape = _read_shape(read_context)
        count = math.prod(shape)
        read_context.check_readable_bytes(count)
        items = [read_context.read_ref() for _ in range(count)]
        array = np.empty(count, dtype=object)
        for i, item in enumerate(items):
            array[i] = item
        return _finish(array.reshape(shape))


class ScalarSerializer(Serializer):
    """numpy scalars (np.float32(1.0), np.datetime64(...), ...) in band with their dtype."""

    def write(self, write_context: Any, value: np.generic) -> None:
        dtype = value.dtype
        write_context.write_bool(dtype.names is not None or dtype.subdtype is not None)
        _write_dtype(write_context, dtype)
        write_context.write_bytes_and_size(value.tobytes())

    def read(self, read_context: Any) -> np.generic:
        dtype = _read_dtype(read_context, described=read_context.read_bool())
        data = read_context.read_bytes_and_size()
        if len(data) != dtype.itemsize:
            raise CorruptMessage(f"scalar of {len(data)} bytes for dtype {dtype}")
        _charge_unbacked(dtype, 1, len(data))
        if dtype.type is not self.type_:
            raise CorruptMessage(f"scalar dtype {dtype} does not match type {self.type_}")
        scalar: np.generic = np.frombuffer(data, dtype=dtype)[0]
        return scalar


class MatrixSerializer(Serializer):
    """np.matrix as its ndarray plus the subclass."""

    def write(self, write_context: Any, value: np.matrix) -> None:
        write_context.write_ref(np.asarray(value))

    def read(self, read_context: Any) -> np.matrix:
        data = read_context.read_ref()
        if not isinstance(data, np.ndarray) or data.ndim != 2:
            raise CorruptMessage("np.matrix payload is not a 2-D array")
        return np.asmatrix(data)


class MaskedArraySerializer(Serializer):
    """np.ma.MaskedArray as data array, full boolean mask and fill value."""

    def write(self, write_context: Any, value: np.ma.MaskedArray) -> None:
        write_context.write_ref(np.ma.getdata(value))
        write_context.write_ref(np.ma.getmaskarray(value))
        write_context.write_ref(value.fill_value)

    def read(self, read_context: Any) -> np.ma.MaskedArray:
        data = read_context.read_ref()
        mask = read_context.read_ref()
        fill = read_context.read_ref()
        ok = isinstance(data, np.ndarray) and isinstance(mask, np.ndarray)
        if not ok or mask.shape != data.shape or mask.dtype != np.bool_:
            raise CorruptMessage("masked array payload has inconsistent data and mask")
        return np.ma.MaskedArray(data, mask=mask, fill_value=fill, copy=False)


def scalar_types() -> dict[type, int]:
    """Each concrete numpy scalar type and its fixed type id."""
    found: dict[type, int] = {}
    for index, char in enumerate(SCALAR_CHARS):
        scalar = np.dtype(char).type
        found.setdefault(scalar, _typeids.NP_SCALAR_FIRST + index)
    return found


NAME = "numpy"
"""The name the stream schema carries for this adapter: fixed across releases (it is part
of the wire format), whatever the module is called."""


def install(fory: Any) -> None:
    """Register the numpy serializers on a pyfory.Fory instance."""
    resolver = fory.type_resolver
    fory.register_serializer(np.ndarray, NDArraySerializer(resolver, np.ndarray))
    for scalar, type_id in scalar_types().items():
        fory.register(scalar, type_id=type_id, serializer=ScalarSerializer(resolver, scalar))
    fory.register(
        np.matrix, type_id=_typeids.NP_MATRIX, serializer=MatrixSerializer(resolver, np.matrix)
    )
    masked = np.ma.MaskedArray
    fory.register(
        masked,
        type_id=_typeids.NP_MASKED_ARRAY,
        serializer=MaskedArraySerializer(resolver, masked),
    )
