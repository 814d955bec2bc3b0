"""A snapshot's metadata is read from a file that may be damaged or hostile: malformed or
deeply nested JSON gives CorruptSnapshot from load and snapshot_info, never TypeError or
RecursionError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import zcser
from zcser.errors import CorruptSnapshot
from zcser.snapshot.layout import Segment, _header_layout, pack_header, parse_header

DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's JSON parser can recurse


def _with_metadata(path: Path, meta: bytes) -> None:
    """Rewrite a saved snapshot with other metadata bytes, digests recomputed (as a hostile
    writer would)."""
    data = path.read_bytes()
    header = parse_header(memoryview(data))
    message = data[header.message_offset :]
    _, offset = _header_layout(len(meta), len(header.segments))
    shift = offset - header.message_offset
    segments = [Segment(s.offset + shift, s.length, s.digest) for s in header.segments]
    head = pack_header(meta, segments, offset, len(message), header.algorithm is not None)
    path.write_bytes(head + bytes(offset - len(head)) + message)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "s.zcs"
    zcser.save({"a": np.arange(1 << 15)}, path)
    return path


def _meta(path: Path) -> dict:
    return dict(parse_header(memoryview(path.read_bytes())).meta)


def test_rewritten_metadata_helper_keeps_a_good_file_loadable(saved: Path) -> None:
    meta = _meta(saved)
    _with_metadata(saved, json.dumps(meta | {"note": "x" * 100}).encode())
    assert np.array_equal(zcser.load(saved)["a"], np.arange(1 << 15))


@pytest.mark.parametrize(
    "change",
    [
        {"adapters": 5},
        {"adapters": [["numpy"]]},
        {"types": "tests.Point"},
        {"types": [1]},
        {"checksum": "yes"},
        {"format_version": [1]},
    ],
)
def test_malformed_schema_in_metadata_is_corrupt_snapshot(saved: Path, change: dict) -> None:
    meta = _meta(saved)
    meta["schema"] |= change
    _with_metadata(saved, json.dumps(meta).encode())
    for read in (zcser.load, zcser.snapshot_info):
        with pytest.raises(CorruptSnapshot, match="malformed codec schema"):
            read(saved)


def test_root_type_of_the_wrong_type_is_corrupt_snapshot(saved: Path) -> None:
    _with_metadata(saved, json.dumps(_meta(saved) | {"root_type": {"x": 1}}).encode())
    with pytest.raises(CorruptSnapshot, match="root_type"):
        zcser.snapshot_info(saved)


@pytest.mark.parametrize("where", ["whole", "inside"])
def test_deeply_nested_metadata_json_is_corrupt_snapshot(saved: Path, where: str) -> None:
    meta = DEEP if where == "whole" else json.dumps(_meta(saved))[:-1] + ', "x": ' + DEEP + "}"
    _with_metadata(saved, meta.encode())
    for read in (zcser.load, zcser.snapshot_info):
        with pytest.raises(CorruptSnapshot, match="not valid JSON"):
            read(saved)
