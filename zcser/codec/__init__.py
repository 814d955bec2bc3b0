"""The codec: objects to messages and back.

```
core.py      Codec: pyfory set up with zcser's adapters; plan (encode), decode
plan.py      Plan: an encoded message that writes itself into any memory
layout.py    the message layout (pure): header, buffer table, checks
oob.py       the out-of-band bridge between pyfory and the adapters
memory.py    buffer addresses; copies of large buffers split over threads
typeids.py   pyfory type ids owned by zcser
adapters/    numpy, Arrow, torch, pandas, bytes-likes, builtins: one `install(fory)` each
```
"""

from zcser.codec.core import (
    CODEC_NAME,
    CODEC_VERSION,
    DEFAULT_THRESHOLD,
    FORMAT_NAME,
    Codec,
    default_codec,
    dumps,
    loads,
)
from zcser.codec.plan import Plan

__all__ = [
    "CODEC_NAME",
    "CODEC_VERSION",
    "DEFAULT_THRESHOLD",
    "FORMAT_NAME",
    "Codec",
    "Plan",
    "default_codec",
    "dumps",
    "loads",
]
