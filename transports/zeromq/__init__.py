"""Frames over ZeroMQ sockets (PUSH/PULL, PUB/SUB) between processes and hosts.

```
wire.py      the multipart wire format (pure)
sockets.py   ZmqWriter and ZmqReader
```
"""

from transports.zeromq.sockets import (
    DEFAULT_HEARTBEAT,
    DEFAULT_HWM,
    DEFAULT_SPIN,
    PATTERNS,
    Received,
    ZmqReader,
    ZmqReaderStats,
    ZmqWriter,
    ZmqWriterStats,
    is_url,
)

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_HWM",
    "DEFAULT_SPIN",
    "PATTERNS",
    "Received",
    "ZmqReader",
    "ZmqReaderStats",
    "ZmqWriter",
    "ZmqWriterStats",
    "is_url",
]
