"""zcser.snapshot: round trips, zero-copy by address, modes, lifetime, crash safety, corruption."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from conftest import unique_name
from fixtures.maps import mappings
from fixtures.procs import namespaces_work

import zcser
from transports.mmapfile import remove_stale_temp_files
from zcser import snapshot
from zcser.codec import Codec
from zcser.errors import (
    CorruptSnapshot,
    IncompatibleStream,
    UnsupportedVersion,
    UsageError,
    ZcserError,
)

REPO = Path(__file__).resolve().parents[3]
CHILD_TIMEOUT = 60
BIG = 1 << 16


def _inside(address: int, nbytes: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start <= address and address + nbytes <= end for start, end in ranges)


def _family() -> dict[str, Any]:
    """One object holding every type family the codec handles, most of them out of band."""
    rng = np.random.default_rng(3)
    return {
        "f64": rng.standard_normal((64, 300)),
        "i8": np.arange(BIG, dtype=np.int8),
        "u16": np.arange(BIG, dtype=np.uint16),
        "bool": rng.random(BIG) > 0.5,
        "c128": np.arange(4096, dtype=np.complex128) * (1 + 2j),
        "f16_fortran": np.asfortranarray(rng.standard_normal((200, 100)).astype(np.float16)),
        "datetime": np.arange(4096).astype("datetime64[s]"),
        "structured": np.zeros(4096, dtype=[("x", "<f4"), ("n", "<i8")]),
        "small": np.arange(5),
        "bytes": os.urandom(BIG),
        "nested": {"list": [1, "two", 3.0, None, [b"x" * 10]], "tuple": (1, 2)},
        "table": pa.table({"x": np.arange(BIG), "s": [str(i) for i in range(BIG)]}),
        "tensor": torch.arange(BIG, dtype=torch.float32).reshape(256, 256),
        "frame": pd.DataFrame(
            {"x": np.arange(BIG, dtype=np.float64), "k": ["a", "b"] * (BIG // 2)}
        ),
    }


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)
    for key in ("f64", "i8", "u16", "bool", "c128", "f16_fortran", "datetime", "structured"):
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key])
    assert got["f16_fortran"].flags.f_contiguous
    np.testing.assert_array_equal(got["small"], want["small"])
    assert bytes(got["bytes"]) == want["bytes"]
    assert got["nested"] == want["nested"]
    assert got["table"].equals(want["table"])
    assert torch.equal(got["tensor"], want["tensor"])
    pd.testing.assert_frame_equal(got["frame"], want["frame"])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / f"{unique_name('s')}.zcs"


@pytest.fixture
def family() -> dict[str, Any]:
    return _family()


def test_round_trip_every_type_family_zero_copy_into_the_mapping(
    path: Path, family: dict[str, Any]
) -> None:
    zcser.save(family, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.warns(RuntimeWarning, match="SIGSEGV"):  # the family holds a torch tensor
        got = zcser.load(path, mode="r")
    _assert_same(got, family)
    ranges = mappings(path)
    assert ranges
    for key in ("f64", "i8", "bool", "c128", "f16_fortran", "structured"):
        arr = got[key]
        assert _inside(arr.ctypes.data, arr.nbytes, ranges), key
        assert arr.ctypes.data % 64 == 0, key
        assert not arr.flags.writeable, key
    assert _inside(np.frombuffer(got["bytes"], np.uint8).ctypes.data, BIG, ranges)
    column = got["table"].column("x").chunk(0).buffers()[1]
    assert _inside(column.address, column.size, ranges)
    tensor = got["tensor"]
    assert _inside(tensor.data_ptr(), tensor.numel() * 4, ranges)
    assert not _inside(got["small"].ctypes.data, 1, ranges)


def test_buffers_sit_at_64_aligned_file_offsets(path: Path, family: dict[str, Any]) -> None:
    zcser.save(family, path)
    info = zcser.snapshot_info(path)
    assert len(info["buffers"]) >= 10
    assert all(b["offset"] % 64 == 0 for b in info["buffers"])
    assert info["message_offset"] % 64 == 0
    weights = np.arange(BIG, dtype=np.float64)
    zcser.save({"w": weights}, path)
    (only,) = zcser.snapshot_info(path)["buffers"]
    with open(path, "rb") as file:
        file.seek(only["offset"])
        assert file.read(only["length"]) == weights.tobytes()


def test_snapshot_info_describes_the_file(path: Path) -> None:
    obj = {"a": np.ones(BIG), "b": [1, 2]}
    zcser.save(obj, path)
    info = zcser.snapshot_info(path)
    assert info["format_version"] == snapshot.VERSION
    assert info["file_size"] == path.stat().st_size
    assert info["root_type"] == "builtins.dict"
    assert info["schema"] == Codec().schema()
    assert info["buffers"] == [{"offset": info["buffers"][0]["offset"], "length": BIG * 8}]
    assert info["checksum"] == {"algorithm": "xxh3_64", "segments": 2, "message_digests": False}
    json.dumps(info)
    zcser.save(obj, path, checksum=False)
    assert zcser.snapshot_info(path)["checksum"]["algorithm"] is None
    assert not mappings(path)


def test_read_only_mode_refuses_writes(path: Path) -> None:
    zcser.save({"a": np.zeros(BIG)}, path)
    got = zcser.load(path, mode="r")
    with pytest.raises(ValueError, match="read-only"):
        got["a"][0] = 1.0


def test_copy_on_write_mode_is_writable_and_never_reaches_the_file(path: Path) -> None:
    zcser.save({"a": np.zeros(BIG), "t": torch.zeros(BIG), "b": bytes(BIG)}, path)
    before = path.read_bytes()
    got = zcser.load(path, mode="c")
    ranges = mappings(path)
    assert _inside(got["a"].ctypes.data, got["a"].nbytes, ranges)
    got["a"][:] = 7.0
    got["t"][:] = 3.0
    got["b"][:4] = b"abcd"
    assert got["a"][5] == 7.0 and got["t"][5] == 3.0
    assert path.read_bytes() == before
    with pytest.warns(RuntimeWarning, match="SIGSEGV"):
        again = zcser.load(path, mode="r")
    assert again["a"][5] == 0.0 and again["t"][5] == 0.0


def test_the_default_mode_is_private_copy_on_write(path: Path) -> None:
    zcser.save({"a": np.zeros(BIG)}, path)
    before = path.read_bytes()
    got = zcser.load(path)
    assert got["a"].flags.writeable and _inside(got["a"].ctypes.data, BIG * 8, mappings(path))
    got["a"][:] = 1.0
    assert path.read_bytes() == before


def test_copy_mode_closes_the_file_and_survives_its_deletion(path: Path) -> None:
    obj = {"a": np.arange(BIG, dtype=np.float64), "table": pa.table({"x": np.arange(BIG)})}
    zcser.save(obj, path)
    got = zcser.load(path, mode="copy", verify=True)
    assert not mappings(path)
    path.unlink()
    gc.collect()
    np.testing.assert_array_equal(got["a"], obj["a"])
    assert got["table"].equals(obj["table"])
    got["a"][0] = -1.0
    assert got["a"][0] == -1.0


def test_mapping_lives_while_a_view_lives_then_the_file_can_be_replaced(path: Path) -> None:
    zcser.save({"a": np.full(BIG, 1.0), "b": np.full(BIG, 2.0)}, path)
    got = zcser.load(path)
    keep = got["b"][10:20]
    del got
    gc.collect()
    assert mappings(path), "unmapped while a view is alive"
    assert keep[0] == 2.0
    del keep
    gc.collect()
    assert not mappings(path), "still mapped after the last view died"
    zcser.save({"a": np.full(BIG, 5.0)}, path)
    assert zcser.load(path)["a"][0] == 5.0


def test_object_without_buffers_does_not_keep_the_file_mapped(path: Path) -> None:
    zcser.save({"x": [1, 2, 3], "s": "text"}, path)
    assert zcser.load(path) == {"x": [1, 2, 3], "s": "text"}
    gc.collect()
    assert not mappings(path)


def test_overwrite_while_old_snapshot_is_loaded_keeps_old_views_intact(path: Path) -> None:
    zcser.save({"a": np.full(BIG, 1.0)}, path)
    old = zcser.load(path)
    zcser.save({"a": np.full(BIG, 9.0)}, path)
    assert old["a"][100] == 1.0
    assert zcser.load(path)["a"][100] == 9.0


def test_progress_bar_reports_the_bytes_written(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zcser.save({"a": np.zeros(BIG)}, path, progress=True)
    err = capsys.readouterr().err
    assert f"save {path.name}" in err
    assert "100%" in err


def test_progress_without_tqdm_says_what_to_install(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(UsageError, match=r"zcser\[progress\]"):
        zcser.save({"a": 1}, path, progress=True)
    assert not path.exists()


def test_save_streams_without_a_whole_file_copy_in_memory(path: Path) -> None:
    """Peak RSS grows by far less than the 256 MiB written (the page cache is not RSS)."""
    code = textwrap.dedent(
        """
        import resource, sys
        import numpy as np
        import zcser
        data = {"a": np.ones(16 << 20), "b": np.ones(16 << 20)}
        zcser.save({"warm": np.ones(4)}, sys.argv[1])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        zcser.save(data, sys.argv[1])
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 32 << 20, f"peak RSS grew by {int(done.stdout)} bytes"
    assert path.stat().st_size > 256 << 20


def test_unsupported_object_leaves_no_file_and_keeps_the_old_one(path: Path) -> None:
    zcser.save({"a": 1}, path)

    class Unknown:
        pass

    with pytest.raises(ZcserError):
        zcser.save({"a": Unknown()}, path)
    assert zcser.load(path) == {"a": 1}
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_bad_mode_is_a_usage_error(path: Path) -> None:
    zcser.save(1, path)
    with pytest.raises(UsageError, match="mode must be"):
        zcser.load(path, mode="w")  # type: ignore[arg-type]


def test_reader_codec_must_match_the_writer_schema(path: Path) -> None:
    class Point:
        def __init__(self, x: int = 0) -> None:
            self.x = x

    writer = Codec()
    writer.register(Point, name="test.Point")
    zcser.save(Point(3), path, codec=writer)
    with pytest.raises(IncompatibleStream, match=r"test\.Point"):
        zcser.load(path)
    reader = Codec()
    reader.register(Point, name="test.Point")
    assert zcser.load(path, codec=reader).x == 3


# --- crash safety ---------------------------------------------------------------------------------

_SAVER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import zcser

    target, first, kill_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    steps = 0

    def step(*_):
        global steps
        if steps == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        steps += 1

    real_fsync, real_rename, real_pwrite = os.fsync, os.rename, os.pwrite
    os.fsync = lambda fd: (step(), real_fsync(fd))[1]
    os.rename = lambda a, b: (step(), real_rename(a, b))[1]
    os.pwrite = lambda fd, data, off: (step(), real_pwrite(fd, data, off))[1]
    print("ready", flush=True)
    for v in range(first, first + 1000):
        zcser.save({"v": v, "a": np.full(1 << 20, v, dtype=np.int32), "b": bytes([v % 256]) * 70000}, target)
    """
)


def _check_complete(path: Path, allowed: set[int]) -> int:
    got = zcser.load(path, verify=True)
    v = got["v"]
    assert v in allowed, f"version {v} never written"
    assert (got["a"] == v).all() and bytes(got["b"]) == bytes([v % 256]) * 70000
    return int(v)


def _spawn_saver(path: Path, first: int, kill_step: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(path), str(first), str(kill_step)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )


def _temps(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if ".zcser-tmp-" in n]


def test_sigkill_at_seeded_random_steps_leaves_a_complete_snapshot(path: Path) -> None:
    """Each save makes ~6 steps (pwrite per piece, fsync, rename, dir fsync); kill at one."""
    zcser.save({"v": 0, "a": np.full(1 << 20, 0, dtype=np.int32), "b": bytes(70000)}, path)
    rng = random.Random(7)
    version = 0
    for first in (100, 200, 300, 400):
        proc = _spawn_saver(path, first, rng.randrange(0, 24))
        try:
            proc.wait(timeout=CHILD_TIMEOUT)
        finally:
            proc.kill()
            assert proc.stdout is not None
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        version = _check_complete(path, {version, *range(first, first + 1000)})
        remove_stale_temp_files(path.parent)
        assert _temps(path.parent) == []


def test_sigkill_at_random_times_leaves_a_complete_snapshot(path: Path) -> None:
    zcser.save({"v": 0, "a": np.full(1 << 20, 0, dtype=np.int32), "b": bytes(70000)}, path)
    rng = random.Random(13)
    version = 0
    for first in (100, 200, 300):
        proc = _spawn_saver(path, first, -1)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=rng.uniform(0.02, 0.4))
        finally:
            proc.kill()
            proc.wait(timeout=CHILD_TIMEOUT)
            assert proc.stdout is not None
            proc.stdout.close()
        version = _check_complete(path, {version, *range(first, first + 1000)})


# --- corruption, truncation, foreign files --------------------------------------------------------


def _bad_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_empty_foreign_and_truncated_files_raise_corrupt_snapshot(path: Path) -> None:
    zcser.save({"a": np.ones(BIG)}, path)
    good = path.read_bytes()
    bad = path.with_name(unique_name("bad"))
    cases = {
        b"": "is empty",
        b"hello world, not a snapshot at all" * 3: "not a zcser snapshot",
        good[:5]: "truncated",
        good[:40]: "truncated",
        good[:-1]: "truncated",
        good[: len(good) // 2]: "truncated",
        good + b"\0": "extended",
    }
    for data, reason in cases.items():
        with pytest.raises(CorruptSnapshot, match=reason):
            zcser.load(_bad_file(bad, data))
        with pytest.raises(CorruptSnapshot):
            zcser.snapshot_info(bad)
    np.save(bad.with_suffix(".npy"), np.ones(10))
    with pytest.raises(CorruptSnapshot, match="not a zcser snapshot"):
        zcser.load(bad.with_suffix(".npy"))


def test_newer_format_version_raises_unsupported_version(path: Path) -> None:
    zcser.save({"a": 1}, path)
    data = bytearray(path.read_bytes())
    data[8:10] = (snapshot.VERSION + 1).to_bytes(2, "little")
    with pytest.raises(UnsupportedVersion, match="upgrade zcser"):
        zcser.load(_bad_file(path, bytes(data)))


def test_flip_in_array_data_is_caught_only_with_verify(path: Path) -> None:
    zcser.save({"a": np.zeros(BIG)}, path)
    offset = zcser.snapshot_info(path)["buffers"][0]["offset"]
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0x40
    _bad_file(path, bytes(data))
    assert zcser.load(path)["a"].any(), "documented: unverified loads see flipped array bytes"
    with pytest.raises(CorruptSnapshot, match="checksum mismatch in segment 1"):
        zcser.load(path, verify=True)


def test_flip_in_header_or_in_band_bytes_is_always_caught(path: Path) -> None:
    zcser.save({"a": np.zeros(BIG), "name": "weights"}, path)
    info = zcser.snapshot_info(path)
    good = path.read_bytes()
    for pos in (20, 70, info["message_offset"] + 40, info["message_offset"] + 60):
        data = bytearray(good)
        data[pos] ^= 0x01
        with pytest.raises(CorruptSnapshot):
            zcser.load(_bad_file(path, bytes(data)))


def _fuzz_cases(good: bytes, rng: random.Random, n: int) -> list[tuple[bytes, int | None]]:
    """Seeded mutations: (bytes, flipped position or None for a truncation)."""
    cases: list[tuple[bytes, int | None]] = []
    for _ in range(n):
        if rng.random() < 0.25:
            cases.append((good[: rng.randrange(len(good))], None))
            continue
        data = bytearray(good)
        pos = rng.randrange(len(good)) if rng.random() < 0.5 else rng.randrange(600)
        data[pos] ^= 1 << rng.randrange(8)
        cases.append((bytes(data), pos))
    return cases


def test_fuzz_truncations_and_flips_give_only_zcser_errors(path: Path) -> None:
    """verify=True: an error or the exact object. Without verify: a wrong value only in arrays."""
    obj = {"a": np.arange(4096, dtype=np.float64), "b": os.urandom(20000), "s": "x" * 100}
    zcser.save(obj, path)
    good = path.read_bytes()
    spans = [(b["offset"], b["offset"] + b["length"]) for b in zcser.snapshot_info(path)["buffers"]]
    bad = path.with_name(unique_name("fz"))
    outcomes = {"error": 0, "same": 0, "array": 0}
    for data, pos in _fuzz_cases(good, random.Random(2024), 300):
        _bad_file(bad, data)
        for verify in (True, False):
            try:
                got = zcser.load(bad, verify=verify)
            except ZcserError:
                outcomes["error"] += 1
                continue
            assert pos is not None, "a truncated file loaded"
            same = (
                got["s"] == obj["s"]
                and np.array_equal(got["a"], obj["a"])
                and bytes(got["b"]) == obj["b"]
            )
            if same:
                outcomes["same"] += 1
                continue
            assert not verify, f"verified load returned a wrong object (flip at {pos})"
            assert any(lo <= pos < hi for lo, hi in spans), f"wrong value, flip at {pos}"
            outcomes["array"] += 1
    assert outcomes["error"] > 100 and outcomes["array"] > 10 and outcomes["same"] > 0


# --- strict deserialization -----------------------------------------------------------------------


class _Payload:
    """Unpickling this object makes a directory: stands in for running arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.marker,))


def test_crafted_reduce_payload_cannot_run_code_on_load(path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.warns(UserWarning, match="arbitrary code"):
        unsafe = Codec(trusted=True)
    zcser.save({"x": _Payload(str(marker))}, path, codec=unsafe)
    with pytest.raises(CorruptSnapshot):
        zcser.load(path)
    assert not marker.exists()
    zcser.load(path, codec=unsafe)
    assert marker.exists(), "the payload is real: a trusted codec runs it"


# --- Plan.segments (added to the codec for streamed writes) ---------------------------------------


@pytest.mark.parametrize("checksum", [False, True])
def test_plan_segments_match_write_into(checksum: bool) -> None:
    plan = Codec(checksum=checksum).plan(
        {"a": np.arange(BIG, dtype=np.float32), "b": os.urandom(BIG), "c": [1, 2]}
    )
    for base in (0, 64, 4096 + 192, 17 * 64):
        size = plan.nbytes_at(base)
        expected = bytearray(size)
        assert plan.write_into(expected, base_address=base) == size
        streamed = bytearray(size)
        pieces = plan.segments(base)
        assert [v.obj for _, v in pieces[1:]] == [b.obj for b in plan.buffers]
        for off, view in pieces:
            streamed[off : off + view.nbytes] = view
        assert streamed == expected


def test_decode_writable_refuses_an_owner() -> None:
    with pytest.raises(UsageError, match="pass no owner"):
        Codec().decode(bytearray(zcser.dumps(1)), writable=True, owner=object())


# --- command line ---------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zcser", "snapshot", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )


def test_cli_info_verify_and_clean(path: Path) -> None:
    zcser.save({"a": np.ones(BIG)}, path)
    done = _cli("info", str(path), "--verify")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["checksum"]["verified"] is True
    assert info["buffers"] == zcser.snapshot_info(path)["buffers"]
    data = bytearray(path.read_bytes())
    data[info["buffers"][0]["offset"]] ^= 1
    path.write_bytes(bytes(data))
    assert _cli("info", str(path)).returncode == 0
    failed = _cli("info", str(path), "--verify")
    assert failed.returncode == 1
    assert "checksum mismatch" in failed.stderr
    stale = path.with_name(f".{path.name}.zcser-tmp-999999-0000")
    stale.write_bytes(b"partial")
    cleaned = _cli("clean", str(path.parent))
    assert cleaned.returncode == 0 and str(stale) in cleaned.stdout
    assert not stale.exists() and path.exists()


def test_verify_file_needs_digests(path: Path) -> None:
    zcser.save({"a": np.ones(BIG)}, path, checksum=False)
    with pytest.raises(CorruptSnapshot, match="nothing to verify"):
        snapshot.verify_file(path)
    zcser.save({"a": np.ones(BIG)}, path)
    snapshot.verify_file(path)


def test_quick_snapshot_bench_rows_have_every_peer() -> None:
    from zcser.tools.bench.snapshot import bench_snapshot

    rows = bench_snapshot(quick=True)
    loads, saves = rows[:-1], rows[-1]
    assert len(loads) == 2 and all(r["zcser"] > 0 and r["npy"] > 0 for r in loads)
    for peer in ("npy", "pickle5", "arrow_ipc"):
        assert saves[peer] > 0 and saves[f"{peer}_sync"] > 0
    best = max(v for k, v in saves.items() if k.endswith("_sync"))
    assert saves["ratio_vs_best_synced_peer"] == saves["zcser"] / best


def test_snapshot_info_lists_every_array_by_name_dtype_and_shape(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "model.zcs"
    zcser.save(
        {"layer": {"w": np.ones((3, 4), np.float32)}, "t": torch.zeros(5), "l": [np.arange(3)]},
        path,
    )
    arrays = zcser.snapshot_info(path)["arrays"]
    assert {a["name"]: (a["dtype"], a["shape"]) for a in arrays} == {
        "layer.w": ("float32", [3, 4]),
        "t": ("torch.float32", [5]),
        "l[0]": ("int64", [3]),
    }


def test_snapshot_info_says_why_it_cannot_list_arrays_of_unregistered_classes(
    tmp_path: Path,
) -> None:
    @dataclasses.dataclass
    class Box:
        a: np.ndarray

    codec = zcser.Codec()
    codec.register(Box, name="test.Box")
    path = tmp_path / "box.zcs"
    zcser.save(Box(np.ones(3)), path, codec=codec)
    info = zcser.snapshot_info(path)
    assert info["arrays"] is None and "Box" in info["arrays_error"]


TRAIN_IN_PLACE = """
import hashlib, sys, warnings
import torch, zcser
torch.manual_seed(0)
path, mode = sys.argv[1], sys.argv[2]
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
zcser.save(model.state_dict(), path)
before = hashlib.sha256(open(path, "rb").read()).hexdigest()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = zcser.load(path) if mode == "default" else zcser.load(path, mode=mode)
print("warned", any("SIGSEGV" in str(w.message) for w in caught), flush=True)
model.load_state_dict(state, assign=True)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    opt.zero_grad()
    model(torch.randn(8, 64)).sum().backward()
    opt.step()
print("trained", flush=True)
print("file unchanged", hashlib.sha256(open(path, "rb").read()).hexdigest() == before, flush=True)
"""


@pytest.mark.parametrize("mode", ["default", "c", "copy"])
def test_load_state_dict_then_optimizer_step_trains_in_place(tmp_path: Path, mode: str) -> None:
    """The everyday checkpoint pattern: load, assign, train. It must neither crash nor write
    the file (before: SIGSEGV, exit 139, under the read-only default)."""
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_IN_PLACE, str(tmp_path / "m.zcs"), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split("\n")[:3] == ["warned False", "trained", "file unchanged True"]


def test_read_only_mode_with_tensors_warns_that_writes_would_crash(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            TRAIN_IN_PLACE.split("model.load_state_dict")[0],
            str(tmp_path / "m.zcs"),
            "r",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "warned True"


def test_writing_into_a_received_tensor_does_not_crash_the_receiver(shm_name: str) -> None:
    import torch

    with zcser.Receiver(shm_name, capacity=8 << 20) as rx, zcser.Sender(shm_name) as tx:
        tx.send({"t": torch.ones(100_000)})
        got = rx.recv(timeout=10)["t"]
        got.add_(1)  # lands in this message's own frame, which nobody else reads
        assert float(got[0]) == 2.0


def test_a_snapshot_saved_by_the_previous_release_still_loads() -> None:
    """tests/fixtures/snapshot-0.1.0.zcs was written by zcser 0.1.0 (before the modules moved):
    the stream schema names adapters by their fixed NAME, not by their module."""
    import collections

    import torch

    got = zcser.load(Path(__file__).resolve().parents[2] / "fixtures" / "snapshot-0.1.0.zcs")
    np.testing.assert_array_equal(got["a"], np.arange(10000, dtype=np.float32).reshape(100, 100))
    assert got["small"].tolist() == list(range(5)) and bytes(got["b"]) == b"x" * 20000
    assert torch.equal(got["t"], torch.arange(6000, dtype=torch.int16))
    assert got["table"].column("s").to_pylist()[:3] == ["0", "1", "2"]
    assert got["od"] == collections.OrderedDict(k=1) and type(got["od"]) is collections.OrderedDict
    assert got["c"] == 1 + 2j and got["n"] is None and got["l"] == [1, "two", 3.0]


def test_adapter_names_in_the_schema_are_fixed() -> None:
    assert zcser.Codec().schema()["adapters"] == [
        "pytypes", "numpy", "buffers", "arrow", "torch", "pandas", "datetime",
    ]  # fmt: skip


@pytest.mark.skipif(not namespaces_work(), reason="needs root and unshare -m for a small tmpfs")
def test_saving_onto_a_full_disk_raises_disk_full_from_zcser_errors() -> None:
    code = (
        "import numpy as np, zcser\n"
        "try:\n"
        "    zcser.save({'a': np.ones(1 << 20)}, '/mnt/big.zcs')\n"
        "except zcser.errors.DiskFull as exc:\n"
        "    print('DiskFull', isinstance(exc, zcser.errors.ZcserError))\n"
    )
    done = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o size=1m tmpfs /mnt && exec "$0" "$@"',
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "DiskFull True", done.stderr[-1500:]
