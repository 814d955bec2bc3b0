"""Byte transports (no serialization): they move bytes and know nothing of what they mean.

```
zerobuffer/   the ZeroBuffer shared-memory ring (wire compatible with zerobuffer-ipc)
zeromq/       frames over ZeroMQ sockets, between processes and hosts
mmapfile.py   crash-safe file writes and read-only or copy-on-write mappings
admin.py      list, inspect and garbage-collect rings on this machine
errors.py     the transports' error tree
native.py     the loader of the compiled module (_native.c)
compat.py     old module paths of the previous release
```
"""

import logging as _logging

from transports import compat as _compat

_logging.getLogger("transports").addHandler(_logging.NullHandler())  # silent unless configured

_compat.install(
    aliases={"transports.inspect": "transports.admin", "transports.zmq": "transports.zeromq"},
    gone={},
)

__all__: list[str] = []
