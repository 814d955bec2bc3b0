"""pyfory serializers for torch CPU tensors, torch.Size, torch.dtype and torch.device.

torch is imported lazily: `install` registers private tag classes under the torch type ids, so a
reader decodes tensors without having imported torch (the first read imports it), and aliases the
real torch classes when torch is already imported. Call `install` again after importing torch
to send tensors from a codec made before that (it is idempotent and cheap).

Layout: a dense tensor (contiguous, or a permutation such as `.T` or channels_last) travels as
its raw bytes plus strides, zero-copy on both sides; a tensor with gaps or overlaps (a step slice,
an `expand`) is copied to contiguous order on the writer. The reader builds the tensor with
`torch.from_dlpack` over the read-only message memory (no warning, no copy). torch has no
read-only tensors: writing through a received tensor is undefined (it may change or fault the
shared memory); decode with `copy=True` or call `.clone()` before writing. Autograd history is
not sent: a tensor that requires grad arrives as a leaf that requires grad.
"""

from __future__ import annotations

import importlib
import math
import sys
from typing import Any

import numpy as np
from pyfory.serializer import Serializer

from zcser.codec import typeids as _typeids
from zcser.codec.adapters.arrow import register_family
from zcser.codec.oob import copy_requested, read_raw_view, write_raw
from zcser.errors import CorruptMessage, UnsupportedType

_FLAG_REQUIRES_GRAD = 0x01
_FLAG_PARAMETER = 0x02
MAX_NDIM = 64


class _TensorTag:
    """Stands for torch.Tensor in the registry until torch is imported."""


class _SizeTag:
    """Stands for torch.Size in the registry until torch is imported."""


class _DtypeTag:
    """Stands for torch.dtype in the registry until torch is imported."""


class _DeviceTag:
    """Stands for torch.device in the registry until torch is imported."""


def _torch() -> Any:
    """The torch module, imported on first use (seconds the first time)."""
    module = sys.modules.get("torch")
    return module if module is not None else importlib.import_module("torch")


def _dtype_name(dtype: Any) -> str:
    """`torch.float32` -> "float32"."""
    return str(dtype).rpartition(".")[2]


_DTYPES: dict[str, Any] = {}


def _dtype_from_name(name: str) -> Any:
    """The torch dtype called `name`, or CorruptMessage."""
    found = _DTYPES.get(name)
    if found is not None:
        return found
    torch = _torch()
    dtype = getattr(torch, name, None) if name.isidentifier() else None
    if not isinstance(dtype, torch.dtype):
        raise CorruptMessage(
            f"torch dtype {name!r} is unknown to this torch: the message is damaged"
        )
    _DTYPES[name] = dtype
    return dtype


def _check_sendable(t: Any) -> None:
    """UnsupportedType with advice for tensors that are not plain dense CPU tensors."""
    torch = _torch()
    if t.device.type != "cpu":
        raise UnsupportedType(
            f"torch tensor on device {t.device} cannot be sent: call .cpu() first"
        )
    if t.layout != torch.strided or t.is_nested:
        raise UnsupportedType(
            f"torch tensor with layout {t.layout} cannot be sent: call .to_dense() first"
        )
    if t.is_quantized:
        raise UnsupportedType("quantized torch tensors cannot be sent: call .dequantize() first")


def _dense_strides(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """True when the elements fill a gap-free region exactly once (a permuted contiguous layout)."""
    if len(shape) == 2 and strides[1] == 1 and (strides[0] == shape[1] or shape[0] == 1):
        return True  # the common case: a C-contiguous matrix
    if len(shape) == 1:
        return strides[0] == 1 or shape[0] == 1
    dims = sorted((st, size) for size, st in zip(shape, strides, strict=True) if size != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _write_tensor(ctx: Any, value: Any) -> None:
    """dtype, flags, shape and strides in band; the element bytes through `_oob`."""
    torch = _torch()
    _check_sendable(value)
    flags = (_FLAG_REQUIRES_GRAD if value.requires_grad else 0) | (
        _FLAG_PARAMETER if isinstance(value, torch.nn.Parameter) else 0
    )
    data = value.detach().resolve_conj().resolve_neg()
    if data.numel() and not _dense_strides(tuple(data.shape), data.stride()):
        data = data.contiguous()
    if data.numel() == 0:
        data = torch.empty(data.shape, dtype=data.dtype)
    ctx.write_string(_dtype_name(data.dtype))
    ctx.write_uint8(flags)
    ctx.write_var_uint32(data.dim())
    for size, stride in zip(data.shape, data.stride(), strict=True):
        ctx.write_var_uint64(size)
        ctx.write_var_uint64(stride)
    flat = torch.as_strided(data, (data.numel(),), (1,), data.storage_offset())
    write_raw(ctx, flat.view(torch.uint8).numpy())


def _read_tensor(ctx: Any) -> Any:
    """A tensor viewing the message memory (zero-copy); sizes and strides are checked first."""
    torch = _torch()
    dtype = _dtype_from_name(ctx.read_string())
    flags = ctx.read_uint8()
    ndim = ctx.read_var_uint32()
    if ndim > MAX_NDIM:
        raise CorruptMessage(f"torch tensor with {ndim} dimensions: the message is damaged")
    dims = [(ctx.read_var_uint64(), ctx.read_var_uint64()) for _ in range(ndim)]
    raw, out_of_band = read_raw_view(ctx)
    shape = tuple(size for size, _ in dims)
    strides = tuple(stride for _, stride in dims)
    numel = math.prod(shape)
    itemsize = dtype.itemsize
    if flags & ~(_FLAG_REQUIRES_GRAD | _FLAG_PARAMETER) or raw.nbytes != numel * itemsize:
        raise CorruptMessage(
            f"torch tensor {shape} {dtype} needs {numel * itemsize} bytes, the message holds "
            f"{raw.nbytes} (flags {flags:#x}): the message is damaged"
        )
    if numel and not _dense_strides(shape, strides):
        raise CorruptMessage(
            f"torch tensor strides {strides} for shape {shape} are invalid: the message is damaged"
        )
    if numel == 0:
        tensor = torch.empty(shape, dtype=dtype)
    else:
        if not out_of_band or copy_requested():  # a private copy: in band, or copy=True
            flat = torch.frombuffer(bytearray(raw), dtype=dtype)
        else:
            flat = torch.from_dlpack(np.frombuffer(raw, dtype=np.uint8)).view(dtype)
        tensor = flat.as_strided(shape, strides)
    if flags & _FLAG_PARAMETER:
        return torch.nn.Parameter(tensor, requires_grad=bool(flags & _FLAG_REQUIRES_GRAD))
    if flags & _FLAG_REQUIRES_GRAD:
        try:
            tensor.requires_grad_(True)
        except RuntimeError as exc:
            raise CorruptMessage(
                f"torch tensor of {dtype} cannot require grad: the message is damaged"
            ) from exc
    return tensor


class TensorSerializer(Serializer):
    """torch.Tensor / nn.Parameter on the CPU, any dtype, shape and strides, requires_grad kept."""

    def write(self, write_context: Any, value: Any) -> None:
        _write_tensor(write_context, value)

    def read(self, read_context: Any) -> Any:
        return _read_tensor(read_context)


class SizeSerializer(Serializer):
    """torch.Size as a count and its dimensions."""

    def write(self, write_context: Any, value: Any) -> None:
        write_context.write_var_uint32(len(value))
        for dim in value:
            write_context.write_var_uint64(dim)

    def read(self, read_context: Any) -> Any:
        ndim = read_context.read_var_uint32()
        if ndim > MAX_NDIM:
            raise CorruptMessage(f"torch.Size with {ndim} dimensions: the message is damaged")
        return _torch().Size([read_context.read_var_uint64() for _ in range(ndim)])


class DtypeSerializer(Serializer):
    """torch.dtype by name."""

    def write(self, write_context: Any, value: Any) -> None:
        write_context.write_string(_dtype_name(value))

    def read(self, read_context: Any) -> Any:
        return _dtype_from_name(read_context.read_string())


class DeviceSerializer(Serializer):
    """torch.device by its string form ("cpu", "cuda:1")."""

    def write(self, write_context: Any, value: Any) -> None:
        write_context.write_string(str(value))

    def read(self, read_context: Any) -> Any:
        text = read_context.read_string()
        try:
            return _torch().device(text)
        except RuntimeError as exc:
            raise CorruptMessage(
                f"torch device {text!r} is invalid: the message is damaged"
            ) from exc


NAME = "torch"
"""The name the stream schema carries for this adapter: fixed across releases (it is part
of the wire format), whatever the module is called."""


def install(fory: Any) -> None:
    """Register the torch serializers; alias the real torch classes only if torch is imported."""
    torch = sys.modules.get("torch")
    resolver = fory.type_resolver
    table: list[tuple[type, int, type, list[Any]]] = [
        (_TensorTag, _typeids.TORCH_TENSOR, TensorSerializer, []),
        (_SizeTag, _typeids.TORCH_SIZE, SizeSerializer, []),
        (_DtypeTag, _typeids.TORCH_DTYPE, DtypeSerializer, []),
        (_DeviceTag, _typeids.TORCH_DEVICE, DeviceSerializer, []),
    ]
    if torch is not None and hasattr(torch, "nn"):
        table[0][3].extend([torch.Tensor, torch.nn.Parameter])
        table[1][3].append(torch.Size)
        table[2][3].append(torch.dtype)
        table[3][3].append(torch.device)
    for tag, type_id, serializer_cls, family in table:
        register_family(fory, tag, type_id, serializer_cls(resolver, tag), family)
