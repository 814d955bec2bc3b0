"""Fan-out over shared memory: one publisher writes each frame once into a segment that any
number of subscribers (up to its slots) read in place (docs/protocol.md, "Fan-out").

```
layout.py    the segment's header, slots, skip table, metadata and ring (constants)
ring.py      placement around pins and cursors, what a subscriber holds (pure)
segment.py   the operating system: creating, attaching, stale removal, bells (FIFOs)
writer.py    FanoutWriter: the publisher
reader.py    FanoutReader, FanoutFrame: a subscriber
```
"""

from transports.fanout.reader import FanoutFrame, FanoutReader, SlotsTaken
from transports.fanout.writer import FanoutWriter, SubscriberInfo, WriterStats

__all__ = [
    "FanoutFrame",
    "FanoutReader",
    "FanoutWriter",
    "SlotsTaken",
    "SubscriberInfo",
    "WriterStats",
]
