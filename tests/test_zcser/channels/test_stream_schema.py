"""The stream schema from a peer is hostile input: malformed or deeply nested JSON is refused
with IncompatibleStream (a CorruptData), never TypeError or RecursionError."""

from __future__ import annotations

import json
from typing import Any

import pytest

import zcser
from transports.zerobuffer import Writer
from zcser import errors
from zcser.channels import check_stream, stream_schema

WAIT = 30.0  # seconds: a bug fails the test instead of hanging it
MIB = 1 << 20
DEEP = b"[" * 100_000 + b"]" * 100_000  # deeper than Python's JSON parser can recurse


def _malformed() -> list[dict[str, Any]]:
    good = stream_schema(zcser.Codec())
    return [
        good | {"adapters": 5},
        good | {"adapters": [["numpy"]]},
        good | {"types": "tests.Point"},
        good | {"types": [1, 2]},
        good | {"types": {"a": 1}},
        good | {"checksum": "yes"},
        good | {"format_version": [1]},
        good | {"pyfory_version": {"v": 1}},
    ]


@pytest.mark.parametrize("schema", _malformed(), ids=range(len(_malformed())))
def test_malformed_schema_fields_raise_incompatible_stream(schema: dict[str, Any]) -> None:
    with pytest.raises(errors.IncompatibleStream, match="malformed"):
        check_stream(zcser.Codec(), json.dumps(schema).encode())


def test_deeply_nested_schema_json_raises_incompatible_stream() -> None:
    with pytest.raises(errors.IncompatibleStream, match="not a zcser stream schema"):
        check_stream(zcser.Codec(), DEEP)
    nested = b'{"stream": "zcser-channel", "x": ' + DEEP + b"}"
    with pytest.raises(errors.IncompatibleStream, match="not a zcser stream schema"):
        check_stream(zcser.Codec(), nested)


@pytest.mark.parametrize("which", ["wrong-type", "deep"])
def test_receiver_refuses_a_writer_with_a_malformed_schema(shm_name: str, which: str) -> None:
    if which == "deep":
        metadata = DEEP[:30_000] + DEEP[-30_000:]
    else:
        metadata = json.dumps(stream_schema(zcser.Codec()) | {"adapters": 5}).encode()
    with (
        zcser.Receiver(shm_name, capacity=MIB, metadata_size=64 * 1024) as rx,
        Writer(shm_name) as raw,
    ):
        raw.set_metadata(metadata)
        raw.write(zcser.dumps({"x": 1}))
        with pytest.raises(errors.IncompatibleStream):
            rx.recv(timeout=WAIT)
