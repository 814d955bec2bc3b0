"""Random corruption of valid messages: only zcser.errors escape decode, never a crash or hang.

The mutation loop runs in a child process under a timeout, so a segfault or an endless loop
fails the test with the seed and case number instead of killing or hanging the test run.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT = 300


def _samples() -> list[Any]:
    """Objects covering every serializer and both in-band and out-of-band data."""
    structured = np.zeros(3000, [("a", ">i4"), ("b", "<f8", (2,)), ("c", "S3")])
    structured["a"] = np.arange(3000)
    return [
        {"a": np.arange(5000, dtype=np.float64), "s": "text", "n": [1, 2.5, None, True]},
        [np.asfortranarray(np.ones((80, 90), np.float32)), b"b" * 40_000, bytearray(b"x" * 10)],
        (structured, np.arange(10).astype("M8[ms]"), np.float32(1.5), np.str_("u")),
        {"mv": memoryview(np.arange(6000, dtype=np.int32).reshape(60, 100)), "e": np.zeros((0, 3))},
        {"o": np.array([1, "two", None], dtype=object), "m": np.ma.masked_array([1, 2], [0, 1])},
        {"nested": {"k": [{"x": np.arange(20_000, dtype=np.uint8)}, (1, 2)]}, "f": frozenset({1})},
    ]


def _same(got: Any, want: Any) -> bool:
    """Structural equality that never raises (mutated results can be anything)."""
    try:
        if isinstance(want, np.ma.MaskedArray):
            return (
                isinstance(got, np.ma.MaskedArray)
                and _same(np.ma.getdata(got), np.ma.getdata(want))
                and _same(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
            )
        if isinstance(want, np.ndarray):
            if not isinstance(got, np.ndarray) or got.dtype != want.dtype:
                return False
            if got.shape != want.shape:
                return False
            if want.dtype == object:
                return all(_same(g, w) for g, w in zip(got.ravel(), want.ravel(), strict=True))
            return got.tobytes() == want.tobytes()
        if isinstance(want, (bytes, bytearray, memoryview)):
            return isinstance(got, (bytes, bytearray, memoryview)) and bytes(got) == bytes(want)
        if isinstance(want, (list, tuple)):
            return (
                type(got) is type(want)
                and len(got) == len(want)
                and all(_same(g, w) for g, w in zip(got, want, strict=True))
            )
        if isinstance(want, dict):
            return (
                type(got) is dict
                and got.keys() == want.keys()
                and all(_same(got[k], want[k]) for k in want)
            )
        if isinstance(want, np.generic):
            return type(got) is type(want) and got.tobytes() == want.tobytes()
        return type(got) is type(want) and bool(got == want)
    except Exception:
        return False


_HEADER_FIELDS = [("<H", 4), ("<H", 6), ("<I", 8), ("<I", 12), ("<Q", 16), ("<Q", 24)]


def _interesting(fmt: str, old: int, rng: random.Random) -> int:
    top = (1 << (8 * struct.calcsize(fmt))) - 1
    return rng.choice([0, 1, old - 1, old + 1, old + 64, top, top // 2, rng.randint(0, top)]) & top


def _mutate(msg: bytes, inband: tuple[int, int], rng: random.Random) -> tuple[str, bytes]:
    """One random corruption of `msg` and a short name for it."""
    data = bytearray(msg)
    kind = rng.choice(["flip", "flip-inband", "truncate", "header", "table", "splice"])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    elif kind == "flip-inband" and inband[1] > inband[0]:
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(*inband)] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[rng.randrange(len(data)) :]
    elif kind == "header":
        fmt, off = rng.choice(_HEADER_FIELDS)
        old = struct.unpack_from(fmt, data, off)[0]
        struct.pack_into(fmt, data, off, _interesting(fmt, old, rng))
    elif kind == "table":
        count = struct.unpack_from("<I", data, 8)[0]
        if count:
            off = 32 + 16 * rng.randrange(count) + rng.choice([0, 8])
            old = struct.unpack_from("<Q", data, off)[0]
            struct.pack_into("<Q", data, off, _interesting("<Q", old, rng))
    else:
        start = rng.randrange(*inband) if inband[1] > inband[0] else 0
        data[start : start + 8] = rng.randbytes(8)
    return kind, bytes(data)


def main(seed: int, cases: int, checksum: bool) -> dict[str, Any]:
    """Run the mutation loop; progress on stderr so a crash names its case."""
    import zcser
    from zcser.codec import layout as _message
    from zcser.errors import ZcserError

    codec = zcser.Codec(checksum=checksum, threshold=1024)
    rng = random.Random(seed)
    originals = []
    for obj in _samples():
        plan = codec.plan(obj)
        out = bytearray(plan.nbytes_at(0))
        used = plan.write_into(out, base_address=0)
        msg = bytes(out[:used])
        parsed = _message.parse(memoryview(msg))
        originals.append((obj, msg, (parsed.inband_start, parsed.inband_end)))
    counts = {"error": 0, "same": 0, "different": 0, "foreign": 0}
    foreign: list[str] = []
    different: list[str] = []
    for case in range(cases):
        obj, msg, inband = originals[rng.randrange(len(originals))]
        kind, bad = _mutate(msg, inband, rng)
        print(f"case {case} {kind}", file=sys.stderr, flush=True)
        try:
            got = codec.decode(bad, copy=rng.random() < 0.2)
        except ZcserError:
            counts["error"] += 1
            continue
        except Exception as exc:
            counts["foreign"] += 1
            foreign.append(f"case {case} {kind}: {type(exc).__name__}: {exc}"[:300])
            continue
        if _same(got, obj):
            counts["same"] += 1
        else:
            counts["different"] += 1
            different.append(f"case {case} {kind}")
    return {"counts": counts, "foreign": foreign[:20], "different": different[:20]}


def _run(seed: int, cases: int, checksum: bool) -> dict[str, Any]:
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import test_codec_fuzz as t; "
        f"print(json.dumps(t.main({seed}, {cases}, {checksum})))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        child = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=TIMEOUT, env=env
        )
    except subprocess.TimeoutExpired as exc:
        last = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        pytest.fail(f"mutation loop hung (seed {seed}); last started: {last}")
    last = child.stderr.decode(errors="replace").strip().splitlines()[-3:]
    assert child.returncode == 0, f"child died ({child.returncode}), seed {seed}, last: {last}"
    result: dict[str, Any] = json.loads(child.stdout)
    return result


@pytest.mark.parametrize("checksum", [False, True])
def test_mutations_raise_only_zcser_errors(checksum: bool) -> None:
    result = _run(seed=1234 + checksum, cases=600, checksum=checksum)
    assert result["foreign"] == [], result
    assert sum(result["counts"].values()) == 600
    assert result["counts"]["error"] > 0
    if checksum:
        assert result["counts"]["different"] == 0, result


@pytest.mark.soak
@pytest.mark.parametrize("checksum", [False, True])
def test_mutations_soak(checksum: bool) -> None:
    for seed in range(20):
        result = _run(seed=seed, cases=20_000, checksum=checksum)
        assert result["foreign"] == [], result
        if checksum:
            assert result["counts"]["different"] == 0, result
