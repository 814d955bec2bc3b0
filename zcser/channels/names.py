"""Which kind of shared-memory endpoint holds a name: a channel (zcser.Receiver) or a fan-out
(zcser.Publisher). The two kinds lay out their names differently in /dev/shm:

```
channel NAME    NAME--pool   control segment: a ZeroBuffer OIEB (reader_pid: the Receiver)
                             with the pool table (magic b"ZCSPOOL1") in its metadata block
                NAME         its ring with one sender; NAME--i with several (then no NAME)
fan-out NAME    NAME         the segment: magic b"ZCFANOUT" at 0, the publisher's PID at 0x30
```

so a channel of several senders and a publisher could both be made under one name, and a
Sender or Subscriber pointed at the other kind got an error about the layout it expected. The
creating side refuses a name the other kind holds, and the connecting side says what is
there. Looking only: each file is opened without following a link or blocking, and read with
pread if it is a regular file.
"""

from __future__ import annotations

import os
import stat

from transports.fanout import layout as F
from transports.zerobuffer import layout as L
from transports.zerobuffer import posix as _shm
from transports.zerobuffer.pool import control_name
from zcser import errors

__all__ = ["channel_pid", "check_free_for", "publisher_pid", "refuse_other_kind"]

_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_ZEROBUFFER = L.HEAD.pack(L.OIEB_SIZE, *L.VERSION)[:5]  # oieb_size and major version


def _head(name: str, size: int) -> bytes | None:
    """The first `size` bytes (or fewer) of regular file /dev/shm/NAME, None if there is none."""
    try:
        fd = os.open(_shm.shm_path(name), _FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.pread(fd, size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


def channel_pid(name: str) -> int | None:
    """The Receiver's PID (0 while it is being created) when a shared-memory channel holds
    NAME (its control segment NAME--pool is a ZeroBuffer), else None."""
    head = _head(control_name(name), L.OIEB_SIZE)
    if head is None or head[:5] != _ZEROBUFFER:
        return None
    if len(head) < L.OIEB_SIZE:
        return 0
    return int(L.U64.unpack_from(head, L.OFF_READER_PID)[0])


def publisher_pid(name: str) -> int | None:
    """The Publisher's PID (0 once it closed) when a fan-out segment holds NAME (its magic is
    at the start of /dev/shm/NAME), else None."""
    head = _head(name, F.OFF_PUB_PID + 8)
    if head is None or head[: len(F.MAGIC)] != F.MAGIC:
        return None
    if len(head) < F.OFF_PUB_PID + 8:
        return 0
    return int(F.U64.unpack_from(head, F.OFF_PUB_PID)[0])


def _who(cls: str, pid: int) -> str:
    if pid and _shm.pid_alive(pid):
        return f"{cls}, pid {pid}"
    return f"{cls}, whose process is gone: `zcser gc` removes what it left"


def check_free_for(kind: str, name: str) -> None:
    """Before a Receiver ("channel") or a Publisher ("fan-out") creates NAME: ChannelError if
    the other kind holds it, naming what is there and what to do."""
    if kind == "channel":
        pid = publisher_pid(name)
        if pid is not None:
            raise errors.ChannelError(
                f"{name!r} is a fan-out publisher ({_who('zcser.Publisher', pid)}); a channel "
                f"cannot share its name. Pick another name for the Receiver, or read the "
                f"publisher with zcser.Subscriber({name!r})"
            )
    else:
        pid = channel_pid(name)
        if pid is not None:
            raise errors.ChannelError(
                f"{name!r} is a shared-memory channel ({_who('zcser.Receiver', pid)}); a "
                f"publisher cannot share its name. Pick another name for the Publisher, or "
                f"send to the channel with zcser.Sender({name!r})"
            )


def refuse_other_kind(kind: str, name: str) -> None:
    """When a Sender ("channel") or a Subscriber ("fan-out") cannot connect to NAME:
    ChannelError if the other kind holds it, saying which class connects to that."""
    if kind == "channel":
        pid = publisher_pid(name)
        if pid is not None:
            raise errors.ChannelError(
                f"{name!r} is a fan-out publisher ({_who('zcser.Publisher', pid)}), not a "
                f"channel: use zcser.Subscriber({name!r}) to read it (only its Publisher "
                "sends to it)"
            )
    else:
        pid = channel_pid(name)
        if pid is not None:
            raise errors.ChannelError(
                f"{name!r} is a shared-memory channel ({_who('zcser.Receiver', pid)}), not a "
                f"fan-out publisher: use zcser.Sender({name!r}) to send to it (only its "
                "Receiver reads it)"
            )
