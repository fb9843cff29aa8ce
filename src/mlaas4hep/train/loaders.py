"""PyTorch loading: events streamed, transformed by the feature spec, batched as tensors.

:class:`TorchEvents` is an ``IterableDataset``. Each DataLoader worker of each
data-parallel rank reads its own shard of every epoch (``rank * workers +
worker`` of ``world_size * workers``, by chunk), so across all ranks and
workers every event is seen exactly once per epoch. Call :meth:`set_epoch`
before each epoch, as with ``DistributedSampler``.
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

Batch = dict[str, torch.Tensor]


def shard_of_this_process() -> tuple[int, int]:
    """``(index, count)`` of this DataLoader worker among all workers of all ranks."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    rank, world = (
        (dist.get_rank(), dist.get_world_size())
        if dist.is_available() and dist.is_initialized()
        else (0, 1)
    )
    return rank * workers + worker, world * workers


def batches(arrays: Iterator[dict[str, np.ndarray]], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Regroup dicts of equally long arrays into batches of ``size`` (the last may be short)."""
    pending: list[dict[str, np.ndarray]] = []
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


@dataclass
class TorchEvents(IterableDataset[Batch]):
    """Batches of ``{"x", "mask", "label", "weight", <identifiers>}`` tensors.

    With the grouped layout the batch also has ``x_<collection>`` ``[B, C, L]``
    and ``mask_<collection>`` ``[B, 1, L]`` (``x`` then holds the flat
    branches). ``stream_options`` go to :class:`EventStream` (``step_size``,
    ``shuffle``, ``interleave``, ``balance``, ...).
    """

    sources: Sequence[Source]
    spec: FeatureSpec
    batch_size: int = 256
    seed: int = 0
    preprocessing: str | None = None
    label_branch: str | None = None
    stream_options: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0

    def __post_init__(self) -> None:
        super().__init__()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration reads (a new shuffle per epoch)."""
        self.epoch = epoch

    def _stream(self) -> EventStream:
        selection = BranchSelection(
            include=stream_branches(self.sources[0], self.spec, self.label_branch),
            identifiers=self.spec.identifiers,
        )
        options = {"step_size": "50 MB", **self.stream_options}
        return EventStream(self.sources, selection, tree=self.spec.tree, seed=self.seed, **options)

    def __iter__(self) -> Iterator[Batch]:
        preprocessing = preprocessing_for(self.spec, self.preprocessing)
        vector = VectorTransform(self.spec)
        shard = shard_of_this_process()
        with self._stream() as stream:
            arrays = (
                transform_chunk(
                    stream, chunk, self.spec, vector, preprocessing, label_branch=self.label_branch
                )[0]
                for chunk in stream.iter_epoch(self.epoch, shard=shard)
            )
            for batch in batches(arrays, self.batch_size):
                yield {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in batch.items()}
