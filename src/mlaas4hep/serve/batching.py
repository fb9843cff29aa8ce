"""Dynamic batching: concurrent requests to one model share one model call.

Requests wait in a queue; whenever a model instance is free, the queued
requests (up to ``max_batch_size`` rows) are concatenated along the batch axis,
run in a worker thread, and the outputs are split back per request. Under load
the instances are busy, requests accumulate while they are, and batches form by
themselves; ``max_queue_delay`` lets an idle model wait a little for a fuller
batch (Triton's ``max_queue_delay_microseconds``; 0 dispatches at once).

Requests can only share a batch when their inputs agree in every dimension but
the first, so a batch is built from the oldest request and the queued requests
of the same shapes; the others wait for the next batch, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlaas4hep.errors import ConfigError

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
RunBatch = Callable[[Arrays], Arrays]


@dataclass(frozen=True)
class BatchingConfig:
    """How one model batches: ``max_batch_size`` rows per model call, at most
    ``max_queue_delay`` seconds of waiting for a fuller batch, ``instances``
    model calls running at once. ``max_batch_size`` 0 or 1 turns batching off
    (every request is its own call)."""

    max_batch_size: int = 64
    max_queue_delay: float = 0.0
    instances: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ConfigError(f"max_batch_size must be ≥ 0, not {self.max_batch_size}")
        if not 0 <= self.max_queue_delay <= 10:
            raise ConfigError(
                f"max_queue_delay must be between 0 and 10 seconds, not {self.max_queue_delay}"
            )
        if self.instances < 1:
            raise ConfigError(f"instances must be ≥ 1, not {self.instances}")


@dataclass
class BatchStats:
    """Counters of one batcher (read by ``/status`` and ``/metrics``)."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    failures: int = 0
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    success_seconds: float = 0.0
    """Time from arrival to answer, summed over the requests that succeeded."""
    failure_seconds: float = 0.0
    last_inference: float = 0.0
    """Wall-clock time (s since the epoch) of the last answered request."""
    batch_sizes: dict[int, int] = field(default_factory=dict)
    """Number of model calls per batch size (rows)."""
    batch_seconds: dict[int, float] = field(default_factory=dict)
    """Compute time per batch size (rows), summed over the model calls."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary with averages."""
        return {
            "requests": self.requests,
            "rows": self.rows,
            "batches": self.batches,
            "failures": self.failures,
            "mean_batch_rows": self.rows / self.batches if self.batches else 0.0,
            "mean_queue_ms": 1e3 * self.queue_seconds / self.requests if self.requests else 0.0,
            "mean_compute_ms": 1e3 * self.compute_seconds / self.batches if self.batches else 0.0,
        }


BatchObserver = Callable[[int, int, float, float], None]
"""Called after each model call with (requests, rows, queue seconds summed over
the requests, compute seconds)."""


@dataclass(eq=False, slots=True)
class _Pending:
    inputs: Arrays
    rows: int
    signature: tuple[tuple[str, tuple[int, ...], str], ...]
    future: asyncio.Future[Arrays]
    queued_at: float


class DynamicBatcher:
    """Batches the calls of ``run`` (a thread-safe function of named arrays).

    Create it inside the event loop that will call :meth:`infer`.
    """

    def __init__(
        self,
        run: RunBatch,
        config: BatchingConfig,
        executor: Executor,
        *,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self.config = config
        self._executor = executor
        self._observer = observer
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self.stats = BatchStats()

    @property
    def idle(self) -> bool:
        """True when nothing is queued or running."""
        return not self._queue and not self._running

    async def infer(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """The outputs of ``run`` for ``inputs`` (arrays sharing their first dimension)."""
        arrays = dict(inputs)
        rows = len(next(iter(arrays.values()))) if arrays else 0
        signature = tuple([(n, a.shape[1:], a.dtype.str) for n, a in arrays.items()])
        pending = _Pending(arrays, rows, signature, self._loop.create_future(), time.perf_counter())
        self._queue.append(pending)
        self._queued_rows += rows
        self._schedule()
        return await pending.future

    def _schedule(self) -> None:
        if self._running >= self.config.instances or not self._queue:
            return
        full = self._queued_rows >= self.config.max_batch_size
        if self.config.max_queue_delay <= 0 or full:
            self._dispatch()
        elif self._timer is None:
            waited = time.perf_counter() - self._queue[0].queued_at
            self._timer = self._loop.call_later(
                max(0.0, self.config.max_queue_delay - waited), self._on_timer
            )

    def _on_timer(self) -> None:
        self._timer = None
        if self._running < self.config.instances and self._queue:
            self._dispatch()

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._take_batch()
        self._running += 1
        started = time.perf_counter()
        future = self._loop.run_in_executor(self._executor, self._call, batch)
        future.add_done_callback(lambda done: self._finish(batch, started, done))
        # Another instance may be free for what is left in the queue.
        self._schedule()

    def _take_batch(self) -> list[_Pending]:
        first = self._queue.popleft()
        batch = [first]
        rows = first.rows
        limit = max(self.config.max_batch_size, 1)
        if rows < limit and self._queue:
            kept: deque[_Pending] = deque()
            while self._queue:
                pending = self._queue.popleft()
                if pending.signature == first.signature and rows + pending.rows <= limit:
                    batch.append(pending)
                    rows += pending.rows
                else:
                    kept.append(pending)
            self._queue = kept
        self._queued_rows -= rows
        return batch

    def _call(self, batch: list[_Pending]) -> list[Arrays | Exception]:
        """Runs in the executor: one model call for the whole batch, split back.

        If a batch of several requests fails, each request is run alone, so a
        request that breaks the model fails by itself and never its neighbours.
        """
        if len(batch) > 1:
            try:
                return list(self._joined(batch))
            except Exception as error:  # noqa: BLE001 - retried one by one below
                log.debug(
                    "a batch of %d requests failed (%s); running them one by one", len(batch), error
                )
        results: list[Arrays | Exception] = []
        for pending in batch:
            try:
                results.append(self._run(pending.inputs))
            except Exception as error:  # noqa: BLE001 - handed to that request
                results.append(error)
        return results

    def _joined(self, batch: list[_Pending]) -> list[Arrays]:
        names = batch[0].inputs.keys()
        joined = {n: np.concatenate([p.inputs[n] for p in batch]) for n in names}
        outputs = self._run(joined)
        bounds = np.cumsum([p.rows for p in batch])[:-1]
        split = {n: np.split(a, bounds) for n, a in outputs.items()}
        return [{n: parts[i] for n, parts in split.items()} for i in range(len(batch))]

    def _finish(
        self,
        batch: list[_Pending],
        started: float,
        done: asyncio.Future[list[Arrays | Exception]],
    ) -> None:
        self._running -= 1
        finished = time.perf_counter()
        rows = sum(p.rows for p in batch)
        queued = sum(started - p.queued_at for p in batch)
        stats = self.stats
        stats.requests += len(batch)
        stats.rows += rows
        stats.batches += 1
        stats.queue_seconds += queued
        stats.compute_seconds += finished - started
        stats.batch_sizes[rows] = stats.batch_sizes.get(rows, 0) + 1
        stats.batch_seconds[rows] = stats.batch_seconds.get(rows, 0.0) + finished - started
        stats.last_inference = time.time()
        error = done.exception()
        results: list[Arrays | BaseException] = (
            [error] * len(batch) if error is not None else list(done.result())
        )
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                stats.failures += 1
                stats.failure_seconds += finished - pending.queued_at
                pending.future.set_exception(result)
            else:
                stats.success_seconds += finished - pending.queued_at
                pending.future.set_result(result)
        if self._observer is not None:
            self._observer(len(batch), rows, queued, finished - started)
        self._schedule()

    async def drain(self) -> None:
        """Wait until every queued and running request has finished."""
        while not self.idle:
            await asyncio.sleep(0.005)
