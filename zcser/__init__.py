"""zcser: move Python objects holding big arrays between processes without copying them.

```
zcser/
  errors.py    the one error tree users catch
  codec/       objects to messages and back (pyfory with every large buffer out of band)
  channels/    Sender / Receiver, Publisher / Subscriber over shared memory or ZeroMQ
  snapshot/    save / load: one message in a file, loaded as zero-copy views
  tools/       command line, demo, benchmarks (the library never imports it)
```
"""

import logging as _logging
from importlib import metadata as _metadata

from transports import compat as _compat
from zcser import errors
from zcser.channels import (
    DEFAULT_CAPACITY,
    DEFAULT_HEADROOM,
    Message,
    NetReceiver,
    NetReceiverStats,
    NetSender,
    NetSenderStats,
    Publisher,
    Receiver,
    ReceiverStats,
    Sender,
    SenderFactory,
    SenderStats,
    ShmReceiver,
    ShmSender,
    Subscriber,
    channel,
    wait,
)
from zcser.codec import CODEC_VERSION, DEFAULT_THRESHOLD, Codec, Plan, dumps, loads
from zcser.snapshot import load, save, snapshot_info

try:
    __version__: str = _metadata.version("zcser")
    """The installed package's version (`CODEC_VERSION` is the message format's)."""
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_logging.getLogger("zcser").addHandler(_logging.NullHandler())  # silent unless configured

_compat.install(
    aliases={},
    gone={
        "zcser.channel": (
            "zcser.channel is the function that creates a channel; the module it once hid is "
            "now zcser.channels (import Sender, Receiver, SenderFactory and the stats classes "
            "from zcser or zcser.channels)"
        ),
    },
)

__all__ = [
    "CODEC_VERSION",
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
    "Publisher",
    "Receiver",
    "ReceiverStats",
    "Sender",
    "SenderFactory",
    "SenderStats",
    "ShmReceiver",
    "ShmSender",
    "Subscriber",
    "__version__",
    "channel",
    "dumps",
    "errors",
    "load",
    "loads",
    "save",
    "snapshot_info",
    "wait",
]
