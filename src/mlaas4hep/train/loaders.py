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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.sources import Source
from mlaas4hep.errors import ConfigError
from mlaas4hep.transform.pipeline import preprocessing_for, stream_branches, transform_chunk
from mlaas4hep.transform.spec import FeatureSpec
from mlaas4hep.transform.vector import VectorTransform

NumpyBatch = dict[str, np.ndarray]
Shard = tuple[int, int]


def batches(arrays: Iterator[NumpyBatch], size: int) -> Iterator[NumpyBatch]:
    """Regroup dicts of equally long arrays into batches of ``size`` (the last may be short)."""
    pending: list[NumpyBatch] = []
    count = 0
    for part in arrays:
        pending.append(part)
        count += len(next(iter(part.values())))
        while count >= size:
            merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            yield {k: v[:size] for k, v in merged.items()}
            rest = {k: v[size:] for k, v in merged.items()}
            count -= size
            pending = [rest] if count else []
    if count:
        yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}


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
    """

    sources: Sequence[Source]
    spec: FeatureSpec
    batch_size: int = 256
    seed: int = 0
    preprocessing: str | None = None
    label_branch: str | None = None
    stream_options: dict[str, Any] = field(default_factory=dict)
    padding_value: float | None = None
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.sources:
            raise ConfigError("a loader needs at least one source")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration reads (a new shuffle per epoch)."""
        self.epoch = epoch

    def stream(self) -> EventStream:
        """A stream of this split's sources, reading what the spec needs."""
        selection = BranchSelection(
            include=stream_branches(self.sources[0], self.spec, self.label_branch),
            identifiers=self.spec.identifiers,
        )
        options = {"step_size": "50 MB", **self.stream_options}
        return EventStream(self.sources, selection, tree=self.spec.tree, seed=self.seed, **options)

    def events(self) -> int:
        """Events one epoch reads (before a preprocessing selection or class balancing)."""
        with self.stream() as stream:
            return stream.total_events

    def iter_shard(self, shard: Shard = (0, 1)) -> Iterator[NumpyBatch]:
        """The batches of shard ``(index, count)`` of the current epoch."""
        preprocessing = preprocessing_for(self.spec, self.preprocessing)
        vector = VectorTransform(self.spec)
        with self.stream() as stream:
            arrays = (
                transform_chunk(
                    stream, chunk, self.spec, vector, preprocessing, label_branch=self.label_branch
                )[0]
                for chunk in stream.iter_epoch(self.epoch, shard=shard)
            )
            for batch in batches(arrays, self.batch_size):
                yield (
                    batch if self.padding_value is None else fill_padding(batch, self.padding_value)
                )

    def __iter__(self) -> Iterator[NumpyBatch]:
        return self.iter_shard()


def shard_of_this_process() -> Shard:
    """``(index, count)`` of this DataLoader worker among all workers of all ranks."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    rank, world = (
        (dist.get_rank(), dist.get_world_size())
        if dist.is_available() and dist.is_initialized()
        else (0, 1)
    )
    return rank * workers + worker, world * workers


class TorchEvents(EventBatches, IterableDataset[dict[str, torch.Tensor]]):
    """A PyTorch ``IterableDataset`` of tensor batches, sharded by rank and worker.

    Use it with ``DataLoader(dataset, batch_size=None, num_workers=...)``: the
    dataset batches itself.
    """

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:  # type: ignore[override]
        for batch in self.iter_shard(shard_of_this_process()):
            yield {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in batch.items()}


def __getattr__(name: str) -> Any:
    # The Keras loader imports Keras, which torch-only users need not have.
    if name == "KerasEvents":
        from mlaas4hep.train.keras_events import KerasEvents

        return KerasEvents
    raise AttributeError(name)
