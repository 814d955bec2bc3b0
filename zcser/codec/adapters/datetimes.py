"""`datetime.datetime` with zcser's serializer (naive stays naive, aware keeps its offset).

Installed last, on its own: replacing pyfory's datetime serializer takes the next internal type
slot, and every adapter installed after it would shift its own, which would change the bytes of
numpy arrays and bytes-likes that earlier releases wrote and read.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from zcser.codec.adapters.builtins import DateTimeSerializer

NAME = "datetime"
"""The name the stream schema carries for this adapter (part of the wire format)."""


def install(fory: Any) -> None:
    """Serialize `datetime.datetime` with zcser's serializer."""
    fory.register_serializer(_dt.datetime, DateTimeSerializer(fory.type_resolver, _dt.datetime))
