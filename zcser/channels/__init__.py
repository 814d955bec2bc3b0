"""Channels: `Sender.send(obj)` in one process, `Receiver.recv()` in another.

```
base.py      Sender and Receiver: the classes users construct, and the registry by URL scheme
shm.py       ShmSender / ShmReceiver: one ZeroBuffer ring in shared memory
arena.py     the frame that Sender.empty() allocates arrays in
net.py       NetSender / NetReceiver: ZeroMQ between processes and hosts
lease.py     Lease and Message: how long a received frame stays pinned
schema.py    the stream schema a sender writes and a receiver checks
factory.py   zcser.channel() and the picklable SenderFactory
waiting.py   zcser.wait on many ends; what arecv / asend await
fanout.py    Publisher / Subscriber: one writer, many readers (shared memory or ZeroMQ PUB/SUB)
```
"""

from zcser.channels import fanout, net, shm
from zcser.channels.base import Receiver, Sender
from zcser.channels.factory import SenderFactory, channel
from zcser.channels.fanout import (
    NetPublisher,
    NetSubscriber,
    Publisher,
    PublisherStats,
    ShmPublisher,
    ShmSubscriber,
    Subscriber,
    SubscriberInfo,
    SubscriberStats,
)
from zcser.channels.lease import Message
from zcser.channels.net import NetReceiver, NetReceiverStats, NetSender, NetSenderStats
from zcser.channels.schema import check_stream, stream_schema
from zcser.channels.shm import (
    DEFAULT_CAPACITY,
    DEFAULT_HEADROOM,
    ReceiverStats,
    SenderStats,
    ShmReceiver,
    ShmSender,
)
from zcser.channels.waiting import wait

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_HEADROOM",
    "Message",
    "NetPublisher",
    "NetReceiver",
    "NetReceiverStats",
    "NetSender",
    "NetSenderStats",
    "NetSubscriber",
    "Publisher",
    "PublisherStats",
    "Receiver",
    "ReceiverStats",
    "Sender",
    "SenderFactory",
    "SenderStats",
    "ShmPublisher",
    "ShmReceiver",
    "ShmSender",
    "ShmSubscriber",
    "Subscriber",
    "SubscriberInfo",
    "SubscriberStats",
    "channel",
    "check_stream",
    "fanout",
    "net",
    "shm",
    "stream_schema",
    "wait",
]
