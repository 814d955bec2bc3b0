"""zcser: zero-copy serialization of objects holding big arrays."""

from zcser import errors
from zcser.channel import Message, Receiver, Sender, SenderFactory, channel
from zcser.codec import CODEC_VERSION as __version__
from zcser.codec import DEFAULT_THRESHOLD, Codec, Plan, dumps, loads
from zcser.snapshot import load, save, snapshot_info

__all__ = [
    "DEFAULT_THRESHOLD",
    "Codec",
    "Message",
    "Plan",
    "Receiver",
    "Sender",
    "SenderFactory",
    "__version__",
    "channel",
    "dumps",
    "errors",
    "load",
    "loads",
    "save",
    "snapshot_info",
]
