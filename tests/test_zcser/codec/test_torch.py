"""torch adapter: every dtype and layout round-trips, zero-copy by data_ptr, lazy torch import."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pyfory
import pytest
import torch

import zcser
from zcser.codec.adapters import torch as _torch
from zcser.errors import CorruptMessage, UnsupportedType

THRESHOLD = 64
CODEC = zcser.Codec(threshold=THRESHOLD)

DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def roundtrip(obj: Any, copy: bool = False) -> tuple[Any, np.ndarray]:
    """Encode `obj` into fresh memory and decode it from there; returns (result, memory)."""
    plan = CODEC.plan(obj)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return CODEC.decode(mem[:used], copy=copy), mem[:used]


def inside(t: torch.Tensor, mem: np.ndarray) -> bool:
    """True when the tensor's data lies in the message memory."""
    return mem.ctypes.data <= t.data_ptr() < mem.ctypes.data + mem.nbytes


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and element bytes (works for float8 and NaN alike)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    raw_a = a.detach().contiguous().reshape(-1).view(torch.uint8)
    raw_b = b.detach().contiguous().reshape(-1).view(torch.uint8)
    return torch.equal(raw_a, raw_b)


def _sample(dtype: torch.dtype, shape: tuple[int, ...] = (32, 6)) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(0, 100, shape, dtype=torch.int64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_zero_copy(dtype: torch.dtype) -> None:
    t = _sample(dtype)
    out, mem = roundtrip(t)
    assert type(out) is torch.Tensor
    assert same_bytes(out, t)
    assert inside(out, mem)


def strides_that_matter(t: torch.Tensor) -> list[int]:
    """Strides of the dimensions longer than 1 (others never move the address)."""
    return [st for size, st in zip(t.shape, t.stride(), strict=True) if size != 1]


LAYOUTS = {
    "contiguous": lambda: torch.arange(600.0).reshape(20, 30),
    "transposed": lambda: torch.arange(600.0).reshape(20, 30).T,
    "channels_last": lambda: torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last),
    "permuted_3d": lambda: torch.randn(4, 5, 6).permute(2, 0, 1),
    "size_one_dims": lambda: torch.randn(1, 64, 1),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_dense_layouts_keep_their_strides_and_are_zero_copy(name: str) -> None:
    t = LAYOUTS[name]()
    out, mem = roundtrip(t)
    assert torch.equal(out, t)
    assert strides_that_matter(out) == strides_that_matter(t)
    assert inside(out, mem)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(800.0).reshape(40, 20)[::2, 1::3],
        lambda: torch.ones(5, 1).expand(5, 40),
    ],
    ids=["step_slice", "expanded"],
)
def test_tensors_with_gaps_or_overlaps_are_copied_contiguous_on_write(make: Any) -> None:
    t = make()
    out, mem = roundtrip(t)
    assert torch.equal(out, t)
    assert out.is_contiguous()
    assert inside(out, mem)


def test_module_state_dict_round_trips_zero_copy_in_order() -> None:
    """state_dict() is an OrderedDict: it must travel as one, keys in order, tensors zero-copy."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    state = model.state_dict()
    out, mem = roundtrip(state)
    assert type(out) is type(state) and list(out) == list(state)
    for key, tensor in state.items():
        assert same_bytes(out[key], tensor)
        assert inside(out[key], mem) == (tensor.nbytes >= THRESHOLD)
    restored = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    restored.load_state_dict(out)
    assert torch.equal(restored[0].weight, model[0].weight)


def test_zero_dim_and_empty_tensors() -> None:
    scalar = torch.tensor(2.5, dtype=torch.float64)
    obj = {
        "scalar": scalar,
        "empty": torch.empty(0, 7),
        "empty_int": torch.zeros(3, 0, dtype=torch.int8),
    }
    out, _ = roundtrip(obj)
    assert out["scalar"].shape == () and out["scalar"].item() == 2.5
    assert out["empty"].shape == (0, 7) and out["empty"].dtype == torch.float32
    assert out["empty_int"].shape == (3, 0) and out["empty_int"].dtype == torch.int8


def test_conjugate_and_negative_views_are_resolved() -> None:
    z = torch.randn(64, dtype=torch.complex64)
    out, _ = roundtrip({"conj": z.conj(), "neg": z.conj().imag})
    assert torch.equal(out["conj"], z.conj().resolve_conj())
    assert torch.equal(out["neg"], z.conj().imag.resolve_neg())


def test_requires_grad_and_parameters_are_kept() -> None:
    leaf = torch.randn(40, requires_grad=True)
    param = torch.nn.Parameter(torch.randn(8, 8))
    frozen = torch.nn.Parameter(torch.randn(8, 8), requires_grad=False)
    out, mem = roundtrip([leaf, param, frozen, leaf * 2])
    assert out[0].requires_grad and out[0].is_leaf and type(out[0]) is torch.Tensor
    assert type(out[1]) is torch.nn.Parameter and out[1].requires_grad
    assert type(out[2]) is torch.nn.Parameter and not out[2].requires_grad
    assert out[3].requires_grad and torch.equal(out[3], leaf.detach() * 2)
    assert inside(out[1], mem)


def test_size_dtype_and_device_inside_objects() -> None:
    obj = {"size": torch.Size([2, 3, 4]), "dtype": torch.bfloat16, "device": torch.device("cuda:1")}
    out, _ = roundtrip(obj)
    assert out == obj
    assert type(out["size"]) is torch.Size


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("make", "advice"),
    [
        (lambda: torch.empty(4, device="meta"), r"\.cpu\(\)"),
        (lambda: torch.eye(3).to_sparse(), r"\.to_dense\(\)"),
        (lambda: torch.eye(3).to_sparse_csr(), r"\.to_dense\(\)"),
        (
            lambda: torch.quantize_per_tensor(torch.rand(4), 0.1, 0, torch.quint8),
            r"\.dequantize\(\)",
        ),
    ],
    ids=["non_cpu", "sparse_coo", "sparse_csr", "quantized"],
)
def test_unsendable_tensors_raise_with_advice(make: Any, advice: str) -> None:
    with pytest.raises(UnsupportedType, match=advice):
        CODEC.plan(make())


def test_copy_true_gives_private_memory() -> None:
    t = torch.arange(1000, dtype=torch.int32)
    out, mem = roundtrip(t, copy=True)
    assert torch.equal(out, t) and not inside(out, mem)
    out += 1
    assert torch.equal(out, t + 1)


def test_received_tensor_keeps_the_owner_alive_until_the_last_view_dies() -> None:
    class Lease:
        pass

    t = torch.randn(256)
    plan = CODEC.plan(t)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem)
    lease = Lease()
    released = weakref.ref(lease)
    out = CODEC.decode(mem[:used], owner=lease)
    view = out[10:20]
    del lease, out
    gc.collect()
    assert released() is not None
    assert torch.equal(view, t[10:20])
    del view
    gc.collect()
    assert released() is None


def _message_with_tensor() -> tuple[np.ndarray, int]:
    """A message holding one float32 tensor, and the offset of its shape varint."""
    t = torch.zeros(16, 8)
    plan = CODEC.plan(t)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem)
    inband = mem[:used].tobytes()
    at = inband.find(b"float32") + len("float32") + 2
    assert torch.equal(CODEC.decode(mem[:used]), t)
    return mem[:used], at


@pytest.mark.parametrize(("delta", "what"), [(1, "dim"), (3, "stride")])
def test_shape_or_stride_that_disagrees_with_the_bytes_raises(delta: int, what: str) -> None:
    mem, at = _message_with_tensor()
    assert (mem[at], mem[at + 1]) == (16, 8)
    mem[at + (0 if what == "dim" else 1)] += delta
    with pytest.raises(CorruptMessage):
        CODEC.decode(mem)


def test_install_is_idempotent() -> None:
    fory = pyfory.Fory(xlang=False, ref=False, strict=True)
    _torch.install(fory)
    _torch.install(fory)
    data = fory.serialize(torch.arange(4))
    assert torch.equal(fory.deserialize(data), torch.arange(4))


def _run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_reader_that_never_imported_torch_decodes_tensors(tmp_path: Path) -> None:
    t = torch.arange(300, dtype=torch.bfloat16).reshape(30, 10).T
    obj = {"t": t, "dtype": torch.float16, "size": t.shape}
    plan = CODEC.plan(obj)
    mem = np.zeros(plan.nbytes, np.uint8)
    used = plan.write_into(mem, base_address=0)
    path = tmp_path / "tensor.msg"
    path.write_bytes(mem[:used].tobytes())
    out = _run(
        f"""
        import mmap, sys, numpy as np, zcser
        codec = zcser.Codec(threshold={THRESHOLD})
        assert "torch" not in sys.modules, "torch imported too early"
        with open({str(path)!r}, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mem = np.frombuffer(mm, np.uint8)
        got = codec.decode(mem)
        import torch
        t = got["t"]
        want = torch.arange(300, dtype=torch.bfloat16).reshape(30, 10).T
        assert torch.equal(t, want) and t.stride() == want.stride()
        assert got["dtype"] is torch.float16 and got["size"] == torch.Size([10, 30])
        assert mem.ctypes.data <= t.data_ptr() < mem.ctypes.data + mem.nbytes, "not zero-copy"
        print("ok")
        """
    )
    assert out == "ok"


def test_a_codec_made_before_torch_was_imported_sends_tensors() -> None:
    out = _run(
        """
        import zcser
        codec, packer = zcser.Codec(), zcser.Codec()
        import torch
        plan = codec.plan(torch.ones(3))
        mem = bytearray(plan.nbytes_at(0))
        used = plan.write_into(mem, base_address=0)
        print(torch.equal(codec.decode(bytes(mem[:used])), torch.ones(3)))
        packed = packer.pack(torch.ones(3))  # pack's own serialize retries as well
        print(isinstance(packed, bytes) and torch.equal(packer.decode_small(packed), torch.ones(3)))
        """
    )
    assert out.splitlines()[-2:] == ["True", "True"]


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 3)


@pytest.mark.parametrize(
    "make", [lambda: torch.nn.Linear(2, 3), _Net, lambda: {"model": _Net()}], ids=range(3)
)
def test_a_module_is_refused_with_state_dict_advice_not_register(make: Any, tmp_path: Path) -> None:
    with pytest.raises(zcser.errors.UnregisteredType, match=r"send model\.state_dict\(\)") as info:
        zcser.save(make(), tmp_path / "model.zcs")
    assert "codec.register" not in str(info.value)
    assert not (tmp_path / "model.zcs").exists()


def test_tensor_metadata_with_more_than_64_dimensions_is_corrupt() -> None:
    class Forge(pyfory.serializer.Serializer):
        def write(self, write_context: Any, value: Any) -> None:
            write_context.write_string("float32")
            write_context.write_uint8(0)
            write_context.write_var_uint32(65)

    codec = zcser.Codec()
    info = codec._fory.type_resolver.get_type_info(torch.Tensor)
    info.serializer = Forge(codec._fory.type_resolver, torch.Tensor)
    message = codec.pack(torch.zeros(1))
    with pytest.raises(CorruptMessage, match="65 dimensions"):
        zcser.Codec().decode(message)
