"""zcser: zero-copy serialization of objects holding big arrays."""

from zcser import errors
from zcser._net import NetReceiver, NetReceiverStats, NetSender, NetSenderStats
from zcser.channel import (
    DEFAULT_CAPACITY,
    DEFAULT_HEADROOM,
    Message,
    Receiver,
    ReceiverStats,
    Sender,
    SenderFactory,
    SenderStats,
    channel,
)
from zcser.codec import CODEC_VERSION as __version__
from zcser.codec import DEFAULT_THRESHOLD, Codec, Plan, dumps, loads
from zcser.snapshot import load, save, snapshot_info

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_HEADROOM",
    "DEFAULT_THRESHOLD",
    "Codec",
    "Message",
    "NetReceiver",
    "NetReceiverStats",
    "NetSender",
    "NetSenderStats",
    "Plan",
    "Receiver",
    "ReceiverStats",
    "Sender",
    "SenderFactory",
    "SenderStats",
    "__version__",
    "channel",
    "dumps",
    "errors",
    "load",
    "loads",
    "save",
    "snapshot_info",
]
