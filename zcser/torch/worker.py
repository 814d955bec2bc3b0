"""The DataLoader worker: torch's worker loop, with results sent through the worker's own ring.

Rules of this file:
- seeds, `get_worker_info()`, `worker_init_fn`, the fetcher, the iterable-dataset end marker and
  the resume/stop protocol on the index queue are torch's (torch/utils/data/_utils/worker.py),
  so the same dataset gives the same samples in the same worker;
- every result is one message `(kind, idx, payload)` on the worker's ring: DATA (the batch),
  STOP (this iterable dataset's worker is exhausted), ERROR (type module, type name, traceback
  text), RESUME (acknowledges a new epoch of persistent workers);
- the default collate stacks each tensor field straight into an array allocated in the ring's
  next frame (`Sender.empty`), so a stacked batch is written once and never copied again;
  anything it cannot place there (dtypes numpy lacks, ragged or mixed inputs) is collated as
  torch does, then copied once by the send.
"""

from __future__ import annotations

import math
import queue
import random
import traceback
from typing import Any

import numpy as np
import torch
from torch.utils.data._utils import collate as _collate
from torch.utils.data._utils import signal_handling as _signals
from torch.utils.data._utils import worker as _torch_worker

from zcser.channels import Sender, SenderFactory
from zcser.errors import BufferFull, Closed, PeerDead, ZcserError

__all__ = ["DATA", "ERROR", "RESUME", "STOP", "ring_collate", "worker_loop"]

DATA, STOP, ERROR, RESUME = 0, 1, 2, 3
_STATUS_INTERVAL = 1.0  # seconds between checks that the main process is alive

_sender: Sender | None = None  # this worker's sender, for the ring collate
_blocked: Any = None  # shared flag: 1 while this worker waits for space in its ring
_SPACE_CHECK = 0.5  # seconds between tries while the ring has no space (the flag stays up)
_numpy_dtypes: dict[torch.dtype, np.dtype[Any] | None] = {}


def _numpy_dtype(dtype: torch.dtype) -> np.dtype[Any] | None:
    """The numpy dtype of torch `dtype`, or None (bfloat16, float8, quantized, ...)."""
    if dtype not in _numpy_dtypes:
        try:
            _numpy_dtypes[dtype] = torch.empty(0, dtype=dtype).numpy().dtype
        except (TypeError, RuntimeError):
            _numpy_dtypes[dtype] = None
    return _numpy_dtypes[dtype]


def _stack_in_ring(batch: Any, *, collate_fn_map: Any = None) -> Any:
    """torch.stack(batch) into an array of the ring's next frame (or an ordinary stack)."""
    elem = batch[0]
    np_dtype = _numpy_dtype(elem.dtype)
    plain = (
        _sender is not None
        and np_dtype is not None
        and elem.layout == torch.strided
        and not elem.is_nested
        and all(
            type(t) is type(elem)
            and t.dtype == elem.dtype
            and t.shape == elem.shape
            and not t.requires_grad  # stack(out=) refuses autograd inputs
            for t in batch
        )
    )
    shape = (len(batch), *elem.shape)
    if not plain or math.prod(shape) * elem.element_size() < _sender.codec.threshold:  # type: ignore[union-attr]
        return torch.stack(batch, 0)  # torch's own errors for ragged or mixed inputs
    out = torch.from_numpy(_waiting_for_space(_sender.empty, shape, np_dtype))  # type: ignore[union-attr]
    return torch.stack(batch, 0, out=out)


_RING_COLLATE_MAP = {**_collate.default_collate_fn_map, torch.Tensor: _stack_in_ring}


def ring_collate(batch: Any) -> Any:
    """torch's `default_collate`, stacking tensors into the ring (see the module rules)."""
    return _collate.collate(batch, collate_fn_map=_RING_COLLATE_MAP)


def _waiting_for_space(call: Any, *args: Any) -> Any:
    """`call(*args, timeout=...)` retried while the ring is full, with the shared flag up so the
    main process can tell a worker waiting for ring space from a slow one."""
    try:
        while True:
            try:
                return call(*args, timeout=_SPACE_CHECK)
            except BufferFull:
                if _blocked is not None:
                    _blocked.value = 1
    finally:
        if _blocked is not None:
            _blocked.value = 0


def _error_payload(where: str) -> tuple[str, str, str]:
    """(module, qualified name, traceback text) of the exception being handled."""
    wrapper = _ExceptionText(where)
    return wrapper.module, wrapper.name, wrapper.text


class _ExceptionText:
    def __init__(self, where: str) -> None:
        import sys

        exc_type, exc, tb = sys.exc_info()
        assert exc_type is not None
        self.module = exc_type.__module__
        self.name = exc_type.__qualname__
        self.text = "".join(traceback.format_exception(exc_type, exc, tb))
        self.where = where


def _seed(base_seed: int, worker_id: int) -> int:
    seed = base_seed + worker_id
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(_torch_worker._generate_state(base_seed, worker_id))
    return seed


def worker_loop(
    dataset_kind: Any,
    dataset: Any,
    index_queue: Any,
    make_sender: SenderFactory,
    blocked: Any,
    done_event: Any,
    auto_collation: bool,
    collate_fn: Any,
    drop_last: bool,
    base_seed: int,
    init_fn: Any,
    worker_id: int,
    num_workers: int,
    persistent_workers: bool,
    shared_seed: Any,
) -> None:
    """One worker process (its arguments are torch's `_worker_loop`'s, with the ring's sender
    factory in place of the result queue and the shared `blocked` flag; `collate_fn` None
    means the ring collate)."""
    global _sender, _blocked
    _blocked = blocked
    try:
        _signals._set_worker_signal_handlers()
        torch.multiprocessing._set_thread_name("pt_data_worker")
        torch.set_num_threads(1)
        seed = _seed(base_seed, worker_id)

        from torch.utils.data import IterDataPipe, _DatasetKind
        from torch.utils.data.graph_settings import apply_random_seed

        shared_rng = torch.Generator()
        if isinstance(dataset, IterDataPipe):
            shared_rng.manual_seed(shared_seed)
            dataset = apply_random_seed(dataset, shared_rng)
        _torch_worker._worker_info = _torch_worker.WorkerInfo(
            id=worker_id, num_workers=num_workers, seed=seed, dataset=dataset
        )
        collate = ring_collate if collate_fn is None else collate_fn
        where = f"in DataLoader worker process {worker_id}"
        init_error: tuple[str, str, str] | None = None
        fetcher = None
        try:
            if init_fn is not None:
                init_fn(worker_id)
            fetcher = _DatasetKind.create_fetcher(
                dataset_kind, dataset, auto_collation, collate, drop_last
            )
        except Exception:
            init_error = _error_payload(where)

        with make_sender() as tx:
            _sender = tx
            iteration_end = False
            watchdog = _torch_worker.ManagerWatchdog()
            while watchdog.is_alive():
                try:
                    r = index_queue.get(timeout=_STATUS_INTERVAL)
                except queue.Empty:
                    continue
                if isinstance(r, _torch_worker._ResumeIteration):
                    if not _send(tx, (RESUME, -1, None), ""):
                        break
                    iteration_end = False
                    if isinstance(dataset, IterDataPipe):
                        shared_rng.manual_seed(r.seed or 0)
                        dataset = apply_random_seed(dataset, shared_rng)
                    fetcher = _DatasetKind.create_fetcher(
                        dataset_kind, dataset, auto_collation, collate, drop_last
                    )
                    continue
                if r is None:
                    break
                if done_event.is_set() or iteration_end:
                    continue
                idx, index = r
                if init_error is not None:
                    message: tuple[int, int, Any] = (ERROR, idx, (*init_error, where))
                    init_error = None
                else:
                    try:
                        message = (DATA, idx, fetcher.fetch(index))  # type: ignore[union-attr]
                    except StopIteration:
                        if dataset_kind != _DatasetKind.Iterable:
                            message = (ERROR, idx, (*_error_payload(where), where))
                        else:
                            message = (STOP, idx, worker_id)
                            iteration_end = True
                    except Exception:
                        message = (ERROR, idx, (*_error_payload(where), where))
                if not _send(tx, message, where):
                    break
                del message, idx, index, r
    except KeyboardInterrupt:
        pass
    finally:
        _sender = None


def _send(tx: Sender, message: tuple[int, int, Any], where: str) -> bool:
    """Send one result; a batch the codec refuses goes as that error. False: the main
    process's ring is gone (it stopped or died), so the worker ends."""
    try:
        _waiting_for_space(tx.send, message)
    except (PeerDead, Closed):
        return False
    except ZcserError:
        try:
            _waiting_for_space(tx.send, (ERROR, message[1], (*_error_payload(where), where)))
        except (PeerDead, Closed):
            return False
    return True
