"""The stream schema: what a sender writes once per stream so the receiver can refuse a stream
it would decode wrongly (another codec, other registered classes, another format version).

Shared-memory channels keep it in the ring's metadata block; network channels send it with
every message. It is JSON: the stream format and version plus `Codec.schema()`.
"""

from __future__ import annotations

import json
from typing import Any

from zcser import errors
from zcser.codec import Codec

__all__ = ["STREAM_FORMAT", "STREAM_VERSION", "check_stream", "schema_bytes", "stream_schema"]

STREAM_FORMAT = "zcser-channel"
STREAM_VERSION = 1


def stream_schema(codec: Codec) -> dict[str, Any]:
    """What a Sender writes into the ring's metadata block: stream format plus codec schema."""
    return {"stream": STREAM_FORMAT, "stream_version": STREAM_VERSION, **codec.schema()}


def schema_bytes(codec: Codec) -> bytes:
    """`stream_schema(codec)` as the bytes a sender writes (sorted keys: equal codecs give
    equal bytes)."""
    return json.dumps(stream_schema(codec), sort_keys=True).encode()


def check_stream(codec: Codec, raw: Any) -> None:
    """Raise IncompatibleStream unless `raw` (metadata bytes) is a stream `codec` can decode.

    The metadata comes from the peer: missing, unparsable (also nested too deeply) or malformed
    (a field of the wrong type) metadata is IncompatibleStream too, a CorruptData like every
    error about bad peer bytes; never TypeError or RecursionError."""
    if raw is None or not len(raw):
        raise errors.IncompatibleStream(
            "the writer wrote no stream schema: it is not a zcser.Sender (raw ZeroBuffer "
            "writers need transports.zerobuffer.Reader, not zcser.Receiver)"
        )
    try:
        other = json.loads(bytes(raw))
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python goes
        other = None
    if not isinstance(other, dict) or other.get("stream") != STREAM_FORMAT:
        raise errors.IncompatibleStream(
            "the ring's metadata is not a zcser stream schema: the writer is not a zcser.Sender"
        )
    if other.get("stream_version") != STREAM_VERSION:
        raise errors.IncompatibleStream(
            f"stream version {other.get('stream_version')!r} (writer, zcser "
            f"{other.get('codec_version')}) vs {STREAM_VERSION} (this reader): use the same "
            "zcser version on both sides"
        )
    codec.check_schema(other)
