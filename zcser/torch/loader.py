"""`zcser.torch.DataLoader`: torch's DataLoader with worker results over shared-memory rings.

Rules of this file:
- arguments, samplers, `len()`, `num_workers=0` and persistent-worker bookkeeping are torch's
  own (this class subclasses `torch.utils.data.DataLoader`); only the multi-process iterator is
  replaced;
- the iterator follows torch's `_MultiProcessingDataLoaderIter` step for step (index
  assignment round-robin over active workers, `prefetch_factor * num_workers` tasks in flight,
  in_order bookkeeping, the iterable end marker, resume for persistent workers, shutdown), so
  it yields the same batches in the same order; the result queue is replaced by one ring per
  worker (transport.py), read from the owner of the next index when in_order;
- a batch is a view of its frame in the worker's ring: torch tensors over shared memory, no
  copy. Each frame carries one batch and nothing else reads it, so writing into a batch is safe;
  the frame goes back to its worker when the last tensor of the batch is collected. Keeping
  batches keeps their ring space: a worker waiting for space that live batches hold (a shared
  flag says it waits) raises RuntimeError here instead of a hang; `copy=True` gives private
  tensors (one copy per batch);
- a worker that dies raises RuntimeError naming its id, pid and exit (code or signal), and
  `timeout` raises torch's RuntimeError; shutdown stops the workers and removes the rings.
"""

from __future__ import annotations

import gc
import itertools
import logging
import signal
import sys
import time
import warnings
from typing import Any

import torch.multiprocessing as torch_mp
from torch.utils.data import DataLoader as _TorchDataLoader
from torch.utils.data import IterDataPipe, MapDataPipe
from torch.utils.data import _utils as _torch_utils
from torch.utils.data._utils.collate import default_collate
from torch.utils.data._utils.worker import _IterableDatasetStopIteration, _ResumeIteration
from torch.utils.data.dataloader import _BaseDataLoaderIter, _sharding_worker_init_fn

from zcser.codec import Codec
from zcser.errors import Timeout
from zcser.torch import worker as _worker
from zcser.torch.transport import WorkerChannels, WorkerGone

__all__ = ["DataLoader"]

_log = logging.getLogger("zcser.torch")
_SLICE = 0.5  # seconds between checks that the workers live while waiting for a batch
# A worker waiting for ring space that this process's batches hold: a warning after
# _STUCK_WARN seconds, RuntimeError after _STUCK_SECONDS (a single-threaded loop would hang;
# a consumer thread that releases batches later gets that long to do it).
_STUCK_WARN = 10.0
_STUCK_SECONDS = 60.0


class DataLoader(_TorchDataLoader):
    """`torch.utils.data.DataLoader` whose workers collate into shared memory.

    Same arguments and behaviour as torch's (batches, order, seeds, `get_worker_info()`,
    `timeout`, `persistent_workers`, `in_order`, ...), plus:

    copy: False (default): batches are tensors over the worker's ring, written once by the
        worker and never copied; writing into them is safe (each batch has its own frame),
        keeping them holds ring space until they are collected (holding a ring's worth raises
        RuntimeError rather than hang). True: private tensors, one copy per batch, nothing
        held.
    capacity: bytes of each worker's ring (None: zcser's default, 256 MiB when /dev/shm has
        room); the largest batch is half of it.
    codec: the `zcser.Codec` for batches (to `register` your classes); default: zcser's.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Any = None,
        batch_sampler: Any = None,
        num_workers: int = 0,
        collate_fn: Any = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Any = None,
        multiprocessing_context: Any = None,
        generator: Any = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        copy: bool = False,
        capacity: int | None = None,
        codec: Codec | None = None,
    ) -> None:
        super().__init__(
            dataset,
            batch_size,
            shuffle,
            sampler,
            batch_sampler,
            num_workers,
            collate_fn,
            pin_memory,
            drop_last,
            timeout,
            worker_init_fn,
            multiprocessing_context,
            generator,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
            in_order=in_order,
        )
        self.copy = copy
        self.capacity = capacity
        self.codec = codec

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        return _RingLoaderIter(self)


def _exit_text(exitcode: int | None) -> str:
    if exitcode is None:
        return "closed its channel while still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by signal {-exitcode} ({name})"
    return f"exit code {exitcode}"


def _exception_class(module: str, name: str) -> type[BaseException] | None:
    """The worker's exception class if this process has it (modules already imported)."""
    found: Any = sys.modules.get(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return None


def _wrapped_error(payload: tuple[str, str, str, str]) -> Any:
    """A torch ExceptionWrapper of the worker's exception (reraised like torch's)."""
    module, name, text, where = payload
    wrapper = _torch_utils.ExceptionWrapper.__new__(_torch_utils.ExceptionWrapper)
    wrapper.exc_type = _exception_class(module, name) or RuntimeError
    wrapper.exc_msg = text
    wrapper.where = where
    return wrapper


class _RingLoaderIter(_BaseDataLoaderIter):
    """torch's `_MultiProcessingDataLoaderIter` with one ring per worker for the results."""

    _shutdown = True  # until the workers exist (so __del__ of a half-built one is quiet)

    def __init__(self, loader: DataLoader) -> None:
        super().__init__(loader)
        self._prefetch_factor: int = loader.prefetch_factor or 2
        self._in_order = loader.in_order
        self._shutdown = True  # until the workers exist
        self._workers: list[Any] = []
        self._index_queues: list[Any] = []
        self._channels: WorkerChannels | None = None
        self._workers_status = [True] * self._num_workers
        ctx = loader.multiprocessing_context or torch_mp
        init_fn = loader.worker_init_fn
        if isinstance(self._dataset, (IterDataPipe, MapDataPipe)):
            init_fn = _partial_sharding(init_fn, self._world_size, self._rank)
        # the default collate stacks into the ring (worker.py); any other runs as given
        collate = None if self._collate_fn is default_collate else self._collate_fn
        self._channels = WorkerChannels(
            self._num_workers, loader.capacity, loader.codec, loader.copy
        )
        self._workers_done_event = ctx.Event()
        self._blocked = [ctx.Value("b", 0, lock=False) for _ in range(self._num_workers)]
        self._shutdown = False
        try:
            for i in range(self._num_workers):
                index_queue = ctx.Queue()
                index_queue.cancel_join_thread()
                w = ctx.Process(
                    target=_worker.worker_loop,
                    args=(
                        self._dataset_kind,
                        self._dataset,
                        index_queue,
                        self._channels.factories[i],
                        self._blocked[i],
                        self._workers_done_event,
                        self._auto_collation,
                        collate,
                        self._drop_last,
                        self._base_seed,
                        init_fn,
                        i,
                        self._num_workers,
                        self._persistent_workers,
                        self._shared_seed,
                    ),
                )
                w.daemon = True
                w.start()
                self._index_queues.append(index_queue)
                self._workers.append(w)
            self._reset(loader, first_iter=True)
        except BaseException:
            self._shutdown_workers()
            raise

    # -- torch's bookkeeping ----------------------------------------------------------------

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        super()._reset(loader, first_iter)
        self._send_idx = 0
        self._rcvd_idx = 0
        self._task_info: dict[int, tuple[Any, ...]] = {}
        self._tasks_outstanding = 0
        self._workers_status = [True] * self._num_workers
        self._workers_num_tasks = [0] * self._num_workers
        self._worker_queue_idx_cycle = itertools.cycle(range(self._num_workers))
        if not first_iter:
            for idx in range(self._num_workers):
                self._index_queues[idx].put(_ResumeIteration(self._shared_seed))
            for idx in range(self._num_workers):  # drop what the last epoch left, up to RESUME
                while self._get_data(idx)[0] != _worker.RESUME:
                    pass
        for _ in range(self._prefetch_factor * self._num_workers):
            self._try_put_index()

    def _try_put_index(self) -> None:
        max_tasks = self._prefetch_factor * self._num_workers
        try:
            index = self._next_index()
        except StopIteration:
            return
        for _ in range(self._num_workers):  # the next active worker, if any
            worker_queue_idx = next(self._worker_queue_idx_cycle)
            if self._workers_status[worker_queue_idx]:
                if self._in_order:
                    break
                if self._workers_num_tasks[worker_queue_idx] < max_tasks // sum(
                    self._workers_status
                ):
                    break
        else:
            return
        self._index_queues[worker_queue_idx].put((self._send_idx, index))
        self._task_info[self._send_idx] = (worker_queue_idx,)
        self._workers_num_tasks[worker_queue_idx] += 1
        self._tasks_outstanding += 1
        self._send_idx += 1

    def _next_data(self) -> Any:
        while True:
            while self._rcvd_idx < self._send_idx:
                info = self._task_info.get(self._rcvd_idx, None)
                if info:
                    worker_id = info[0]
                    if len(info) == 2 or self._workers_status[worker_id]:
                        break
                    del self._task_info[self._rcvd_idx]
                self._rcvd_idx += 1
            else:
                if not self._persistent_workers:
                    self._shutdown_workers()
                raise StopIteration

            if len(self._task_info[self._rcvd_idx]) == 2:
                worker_id, data = self._task_info.pop(self._rcvd_idx)
                self._rcvd_idx += 1
                return self._process_data(data, worker_id)

            owner = self._task_info[self._rcvd_idx][0] if self._in_order else None
            kind, idx, data = self._get_data(owner)
            self._tasks_outstanding -= 1
            if kind == _worker.STOP:
                if self._persistent_workers:
                    self._workers_status[data.worker_id] = False
                else:
                    self._mark_worker_as_unavailable(data.worker_id)
                self._try_put_index()
                continue
            if idx != self._rcvd_idx:
                if not self._in_order:
                    worker_id = self._task_info.pop(idx)[0]
                    return self._process_data(data, worker_id)
                self._task_info[idx] += (data,)
            else:
                worker_id = self._task_info.pop(idx)[0]
                self._rcvd_idx += 1
                return self._process_data(data, worker_id)

    def _process_data(self, data: Any, worker_idx: int) -> Any:
        self._workers_num_tasks[worker_idx] -= 1
        self._try_put_index()
        if isinstance(data, _torch_utils.ExceptionWrapper):
            data.reraise()
        if self._pin_memory:
            data = _torch_utils.pin_memory.pin_memory(data, self._pin_memory_device)
        return data

    def _mark_worker_as_unavailable(self, worker_id: int, shutdown: bool = False) -> None:
        self._index_queues[worker_id].put(None)
        self._workers_status[worker_id] = False

    # -- the rings ----------------------------------------------------------------------------

    def _get_data(self, worker: int | None) -> tuple[int, int, Any]:
        """The next (kind, idx, data) from `worker` (None: from any active worker), with
        torch's errors for a timeout and a dead worker."""
        channels = self._channels
        assert channels is not None
        deadline = time.monotonic() + self._timeout if self._timeout > 0 else None
        stuck: tuple[Any, ...] | None = None  # (since when, bytes held[, warned]): _check_held
        while True:
            step = (
                _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - time.monotonic()))
            )
            try:
                if worker is not None:
                    message = channels.recv(worker, step)
                else:
                    active = [i for i, up in enumerate(self._workers_status) if up]
                    _, message = channels.recv_any(active or range(self._num_workers), step)
                break
            except WorkerGone as exc:
                self._raise_dead([exc.worker])
            except Timeout:
                self._check_workers()
                if deadline is not None and time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"DataLoader timed out after {self._timeout} seconds"
                    ) from None
                stuck = self._check_held(worker, stuck)
        kind, idx, payload = message
        if kind == _worker.STOP:
            return kind, idx, _IterableDatasetStopIteration(payload)
        if kind == _worker.ERROR:
            return kind, idx, _wrapped_error(payload)
        return kind, idx, payload

    def _check_workers(self) -> None:
        dead = [
            i for i, w in enumerate(self._workers) if self._workers_status[i] and not w.is_alive()
        ]
        if dead:
            self._raise_dead(dead)

    def _raise_dead(self, worker_ids: list[int]) -> None:
        parts = []
        for i in worker_ids:
            w = self._workers[i]
            w.join(timeout=1.0)
            parts.append(f"worker {i} (pid {w.pid}) {_exit_text(w.exitcode)}")
            if self._workers_status[i]:
                self._mark_worker_as_unavailable(i)
        self._shutdown_workers()
        raise RuntimeError(f"DataLoader worker exited unexpectedly: {'; '.join(parts)}")

    def _check_held(
        self, worker: int | None, stuck: tuple[Any, ...] | None
    ) -> tuple[Any, ...] | None:
        """RuntimeError when the awaited workers (`worker`, or every active one with tasks)
        have waited `_STUCK_SECONDS` for ring space that this process's live batches hold, the
        held bytes unchanged (another thread that releases batches would change them), a
        collection included (cycles may hold the last references): the loader would hang.
        `stuck` is what the previous call returned."""
        channels = self._channels
        assert channels is not None
        awaited = [worker] if worker is not None else [
            i for i, up in enumerate(self._workers_status) if up and self._workers_num_tasks[i]
        ]  # fmt: skip
        held = [channels.pinned(i) for i in awaited]
        total = sum(pinned for pinned, _ in held)
        if not awaited or not all(
            self._blocked[i].value and pinned for i, (pinned, _) in zip(awaited, held, strict=True)
        ):
            return None
        now = time.monotonic()
        if stuck is None or stuck[1] != total:  # (again) since now
            gc.collect()
            return now, total
        waited = now - stuck[0]
        if waited < _STUCK_WARN:
            return stuck
        i, (pinned, capacity) = awaited[0], held[0]
        text = (
            f"DataLoader worker {i} cannot hand over its next batch: this process still holds "
            f"{pinned / 2**20:.1f} MiB of earlier batches in its {capacity >> 20} MiB ring (a "
            "batch's memory goes back to its worker when the last tensor of the batch is "
            "collected). Keep clones of what you keep (t.clone()), or pass copy=True for "
            "private batches, or a larger capacity="
        )
        if waited >= _STUCK_SECONDS:
            raise RuntimeError(text)
        if len(stuck) == 2:  # warned once per wait
            warnings.warn(
                f"{text} (an error after {_STUCK_SECONDS:g} s)", RuntimeWarning, stacklevel=5
            )
        return (*stuck, 1)

    # -- shutdown -------------------------------------------------------------------------------

    def _shutdown_workers(self) -> None:
        if _torch_utils is None or _torch_utils.python_exit_status is not False:
            return
        if self._shutdown:
            return
        self._shutdown = True
        try:
            self._workers_done_event.set()
            for worker_id in range(len(self._workers)):
                if self._persistent_workers or self._workers_status[worker_id]:
                    self._mark_worker_as_unavailable(worker_id, shutdown=True)
            for w in self._workers:
                w.join(timeout=_SLICE)
            for q in self._index_queues:
                q.cancel_join_thread()
                q.close()
        finally:
            for w in self._workers:
                if w.is_alive():
                    w.terminate()
                    w.join(timeout=_SLICE)
            if self._channels is not None:
                self._channels.close()

    def __del__(self) -> None:
        self._shutdown_workers()


def _partial_sharding(init_fn: Any, world_size: int, rank: int) -> Any:
    import functools

    return functools.partial(_sharding_worker_init_fn, init_fn, world_size, rank)
