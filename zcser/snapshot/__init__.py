"""Snapshot files: `save(obj, path)` writes one message to a file, `load(path)` maps it back.

```
layout.py    the file header and segment table (pure)
file.py      save / load / snapshot_info / verify_file over transports.mmapfile
```
"""

from zcser.snapshot.file import load, save, snapshot_info, verify_file
from zcser.snapshot.layout import VERSION

__all__ = ["VERSION", "load", "save", "snapshot_info", "verify_file"]
