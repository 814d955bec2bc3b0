"""zcser for PyTorch: a DataLoader whose workers hand batches over shared-memory rings.

```
loader.py      DataLoader (torch's, with the multi-process iterator replaced)
worker.py      the worker loop and the collate that stacks batches inside the ring
transport.py   one ring per worker, read in order or by whichever is ready (the one seam)
```

Importing this package imports torch.
"""

from zcser.torch.loader import DataLoader

__all__ = ["DataLoader"]
