"""Loaders: events streamed, transformed by the feature spec, delivered in batches.

:class:`EventBatches` is the framework-neutral core: an iterable of numpy batches
(``{"x", "mask", "label", "weight", <identifiers>}``; with the grouped layout also
``x_<collection>`` ``[B, C, L]`` and ``mask_<collection>`` ``[B, 1, L]``), which is
also the loader for numpy and JAX (``jax.numpy.asarray`` takes the arrays as they
are). :class:`TorchEvents` is a PyTorch ``IterableDataset`` and
:class:`~mlaas4hep.train.keras_events.KerasEvents` (also importable from
here) a Keras 3 ``PyDataset`` over the same batches.

Sharding: each DataLoader worker of each data-parallel rank reads its own shard of
every epoch (``rank * workers + worker`` of ``world_size * workers``, by chunk), so
across all ranks and workers every event is seen exactly once per epoch. Call
``set_epoch`` before each epoch, as with ``DistributedSampler``: each epoch is
shuffled anew.

Mask convention (everywhere in mlaas4hep): 1 = real value, 0 = padding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, default_collate, get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.shuffle import epoch_rng
from mlaas4hep.data.sources import Source
from mlaas4hep.errors import ConfigError
from mlaas4hep.transform.pipeline import preprocessing_for, stream_branches, transform_chunk
from mlaas4hep.transform.spec import FeatureSpec
from mlaas4hep.transform.vector import VectorTransform

NumpyBatch = dict[str, np.ndarray]
Shard = tuple[int, int]


def batches(
    arrays: Iterator[NumpyBatch], size: int, rng: np.random.Generator | None = None
) -> Iterator[NumpyBatch]:
    """Regroup dicts of equally long arrays into batches of ``size`` (the last may be short).

    Without ``rng``, batches inside one part are views of it and only a batch
    that spans parts is copied. With ``rng`` the rows of each part are taken in a random order (one
    permutation per part) and each batch is gathered from its part: no copy of
    a whole part is made, which matters for a cached shard reshuffled every epoch.
    """
    carry: list[NumpyBatch] = []  # pieces of the next batch, fewer than ``size`` rows
    carried = 0
    for part in arrays:
        rows = len(next(iter(part.values())))
        rows_of = _rows_in_order(part, None if rng is None else rng.permutation(rows))
        start = 0
        if carried:
            start = min(size - carried, rows)
            carry.append(rows_of(0, start))
            carried += start
            if carried < size:
                continue
            yield {k: np.concatenate([c[k] for c in carry]) for k in carry[0]}
            carry, carried = [], 0
        while rows - start >= size:
            yield rows_of(start, start + size)
            start += size
        if start < rows:
            carry, carried = [rows_of(start, rows)], rows - start
    if carried:
        yield {k: np.concatenate([c[k] for c in carry]) for k in carry[0]}


def _rows_in_order(part: NumpyBatch, order: np.ndarray | None) -> Callable[[int, int], NumpyBatch]:
    """Rows ``[a, b)`` of ``part``: a view, or with ``order`` the rows ``order[a:b]``."""
    if order is None:
        return lambda a, b: {k: v[a:b] for k, v in part.items()}
    # np.take copies whole rows; indexing with ``v[order]`` is 2-3x slower on 2-d arrays
    return lambda a, b: {k: np.take(v, order[a:b], axis=0) for k, v in part.items()}


def _kept_in(parts: Iterator[NumpyBatch], kept: list[NumpyBatch]) -> Iterator[NumpyBatch]:
    """``parts`` as they are, each also appended to ``kept``."""
    for part in parts:
        kept.append(part)
        yield part


def fill_padding(batch: NumpyBatch, value: float) -> NumpyBatch:
    """``batch`` with padded feature entries (mask 0) set to ``value``.

    Models that take no mask need a number there (the spec's pad value may be NaN).
    """
    out = dict(batch)
    if "x" in out and "mask" in out:
        out["x"] = np.where(out["mask"] > 0, out["x"], np.float32(value))
    for name in [k for k in out if k.startswith("x_")]:
        mask = out.get("mask_" + name[2:])
        if mask is not None:
            out[name] = np.where(mask > 0, out[name], np.float32(value))
    return out


@dataclass
class EventBatches:
    """Numpy batches of one dataset split, epoch by epoch.

    ``stream_options`` go to :class:`~mlaas4hep.data.reader.EventStream`
    (``step_size``, ``shuffle``, ``interleave``, ``balance``, ...).
    ``padding_value``, when set, replaces the padded feature entries.

    ``cache=True`` keeps the tensors of a shard in memory after its first
    complete epoch; later epochs reshuffle them without reading or transforming
    again. A shard then keeps the same events every epoch (still each exactly
    once), and class balancing, which draws anew every epoch, turns it off.
    """

    sources: Sequence[Source]
    spec: FeatureSpec
    batch_size: int = 256
    seed: int = 0
    preprocessing: str | None = None
    label_branch: str | None = None
    stream_options: dict[str, Any] = field(default_factory=dict)
    padding_value: float | None = None
    cache: bool = False
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.sources:
            raise ConfigError("a loader needs at least one source")
        self._kept: tuple[int, EventStream] | None = None  # (process id, open stream)
        self._busy = False
        self._cached: dict[Shard, NumpyBatch] = {}  # the tensors of each complete shard
        VectorTransform(self.spec).load_kernels()  # here, before any worker forks

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration reads (a new shuffle per epoch)."""
        self.epoch = epoch

    @property
    def _dense_shuffle(self) -> bool:
        # Rows of the dense tensors are permuted here, which costs less than
        # reordering jagged events in the stream; an explicit shuffle buffer
        # (mixing across chunks) keeps the stream's event shuffle instead.
        options = self.stream_options
        return bool(options.get("shuffle", True)) and "shuffle_buffer" not in options

    def stream(self) -> EventStream:
        """A new stream of this split's sources, reading what the spec needs."""
        selection = BranchSelection(
            include=stream_branches(self.sources[0], self.spec, self.label_branch),
            identifiers=self.spec.identifiers,
        )
        options = {"step_size": "50 MB", **self.stream_options}
        if self._dense_shuffle:
            options["shuffle_events"] = False
        return EventStream(self.sources, selection, tree=self.spec.tree, seed=self.seed, **options)

    @contextmanager
    def _open_stream(self) -> Iterator[EventStream]:
        """This process's stream, kept open across epochs (files are opened once).

        A DataLoader worker (another process) opens its own; an iteration
        nested in another gets a stream of its own, closed after it.
        """
        if self._busy:
            with self.stream() as stream:
                yield stream
            return
        if self._kept is None or self._kept[0] != os.getpid():
            self._kept = (os.getpid(), self.stream())
        self._busy = True
        try:
            yield self._kept[1]
        finally:
            self._busy = False

    def close(self) -> None:
        """Close the stream kept open by this process."""
        if self._kept is not None and self._kept[0] == os.getpid():
            self._kept[1].close()
        self._kept = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started with "spawn" get the loader without its stream
        return {**self.__dict__, "_kept": None, "_busy": False, "_cached": {}}

    def events(self) -> int:
        """Events one epoch reads (before a preprocessing selection or class balancing)."""
        with self._open_stream() as stream:
            return stream.total_events

    def iter_shard(self, shard: Shard = (0, 1), epoch: int | None = None) -> Generator[NumpyBatch]:
        """The batches of shard ``(index, count)`` of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        rng = epoch_rng(self.seed, epoch, shard[0], 1) if self._dense_shuffle else None
        cached = self._cached.get(shard)
        if cached is not None:
            yield from self._batches(iter([cached]), rng)
            return
        keep = self.cache and self.stream_options.get("balance") is None
        kept: list[NumpyBatch] = []
        with self._open_stream() as stream:
            preprocessing = preprocessing_for(self.spec, self.preprocessing)
            vector = VectorTransform(self.spec)
            parts: Iterator[NumpyBatch] = (
                transform_chunk(
                    stream, chunk, self.spec, vector, preprocessing, label_branch=self.label_branch
                )[0]
                for chunk in stream.iter_epoch(epoch, shard=shard)
            )
            if keep:
                parts = _kept_in(parts, kept)
            yield from self._batches(parts, rng)
        if keep and kept:  # reached only when the epoch was read to its end
            self._cached[shard] = {k: np.concatenate([p[k] for p in kept]) for k in kept[0]}

    def _batches(
        self, parts: Iterator[NumpyBatch], rng: np.random.Generator | None
    ) -> Iterator[NumpyBatch]:
        for batch in batches(parts, self.batch_size, rng):
            yield batch if self.padding_value is None else fill_padding(batch, self.padding_value)

    def __iter__(self) -> Iterator[NumpyBatch]:
        return self.iter_shard()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this data-parallel process (``(0, 1)`` without DDP)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_of_this_process() -> Shard:
    """``(index, count)`` of this DataLoader worker among all workers of all ranks."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    rank, world = rank_and_world()
    return rank * workers + worker, world * workers


class TorchEvents(EventBatches, IterableDataset[dict[str, torch.Tensor]]):
    """A PyTorch ``IterableDataset`` of tensor batches, sharded by rank and worker.

    Use it with ``DataLoader(dataset, batch_size=None, num_workers=...)``: the
    dataset batches itself. With ``persistent_workers=True`` the workers keep
    their files open across epochs; each pass then reads the next epoch,
    counting from the epoch set before the first pass.
    """

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:  # type: ignore[override]
        in_worker = get_worker_info() is not None
        for batch in self.iter_shard(shard_of_this_process(), self._epoch_of_this_pass()):
            if in_worker:
                # a dict of tensors once it reaches the training process
                yield _SentAsArrays(batch)  # type: ignore[misc]
            else:
                yield as_tensors(batch)

    def _epoch_of_this_pass(self) -> int:
        """The epoch to read: :attr:`epoch`, or in a DataLoader worker its own count.

        A worker holds a copy of the dataset made when it started. Started anew
        each epoch, its copy has the epoch set last; kept across epochs
        (``persistent_workers=True``, which also keeps its files open) it moves
        on by one epoch per pass, starting from the epoch set before the first.
        """
        if get_worker_info() is None:
            return self.epoch
        passes = getattr(self, "_worker_passes", 0)
        self._worker_passes = passes + 1
        return self.epoch + passes


def as_tensors(batch: NumpyBatch) -> dict[str, torch.Tensor]:
    """A numpy batch as torch tensors (sharing their memory where contiguous)."""
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in batch.items()}


class _SentAsArrays:
    """A batch on its way from a DataLoader worker, which arrives as a dict of tensors.

    Its numpy arrays travel inside the pickle, copied through the worker's pipe.
    Sent as tensors, torch would move each one into a shared-memory segment of
    its own and pass its file descriptor: five times the cost for batches of
    this size (``benchmarks/RESULTS.md``, Loader). The DataLoader leaves objects
    of unknown types to the pickle, so unpickling in the training process is
    where the tensors are made.
    """

    __slots__ = ("arrays",)

    def __init__(self, arrays: NumpyBatch) -> None:
        self.arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}

    def __reduce__(self) -> tuple[Any, tuple[NumpyBatch]]:
        return as_tensors, (self.arrays,)


def _collate_sent(batch: list[_SentAsArrays], *, collate_fn_map: Any = None) -> Any:  # noqa: ARG001 - torch passes it
    """A DataLoader with a ``batch_size`` of its own stacks the tensors they stand for."""
    return default_collate([as_tensors(item.arrays) for item in batch])


# torch's documented way to teach its default collation a new type
default_collate_fn_map[_SentAsArrays] = _collate_sent


def __getattr__(name: str) -> Any:
    # The Keras loader imports Keras, which torch-only users need not have.
    if name == "KerasEvents":
        from mlaas4hep.train.keras_events import KerasEvents

        return KerasEvents
    raise AttributeError(name)
