"""Vector-wise transform: jagged events to fixed tensors, vectorised on the offsets.

Two layouts, both with a mask (1 = real value, 0 = padding):

* **flat** ``x[N, F]``, ``mask[N, F]``: flat branches, then every jagged
  branch padded (or clipped) to its length, with the spec's column names
  (``Jet_pt_0``, ``Jet_pt_1``, ...), as MLaaS4HEP did;
* **grouped** per collection ``x[N, C, L]`` with ``mask[N, 1, L]`` (all
  ``Jet_*`` branches share ``nJet``), plus the flat branches as ``[N, F]``:
  the layout point-cloud (ParticleNet-style) models take.

Normalisation is applied to real entries before padding, so padding keeps the
pad value (NaN by default). Branches of one collection share the index work:
it is computed once per collection and chunk, never per event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import awkward as ak
import numpy as np

from mlaas4hep.errors import DataError
from mlaas4hep.transform import normalize
from mlaas4hep.transform.spec import BranchSpec, FeatureSpec


@dataclass
class FlatTensors:
    """The flat layout of a chunk."""

    x: np.ndarray
    mask: np.ndarray
    columns: list[str]
    clipped: dict[str, int] = field(default_factory=dict)


@dataclass
class GroupedTensors:
    """The grouped layout of a chunk: per collection ``[N, C, L]`` plus flat branches."""

    collections: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    channels: dict[str, list[str]]
    flat: np.ndarray
    flat_columns: list[str]
    clipped: dict[str, int] = field(default_factory=dict)


def describe(array: ak.Array) -> tuple[str, str]:
    """``(kind, dtype)`` of one event field: ``flat``/``jagged``/``other`` and the dtype name."""
    content = array.type.content
    if isinstance(content, ak.types.NumpyType):
        return "flat", content.primitive
    if isinstance(content, ak.types.ListType) and isinstance(content.content, ak.types.NumpyType):
        return "jagged", content.content.primitive
    return "other", str(content)


def jagged_parts(array: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, content)`` numpy views of a ``var * number`` array (packed fast path)."""
    layout = ak.to_layout(array)
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(
        layout.content, ak.contents.NumpyArray
    ):
        offsets = np.asarray(layout.offsets.data)
        content = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
        return np.diff(offsets), content
    return ak.num(array, axis=1).to_numpy(), ak.flatten(array, axis=1).to_numpy()


class VectorTransform:
    """Turns chunks of events into tensors as a :class:`FeatureSpec` says.

    ``where`` arguments (a file name) go into error messages.
    """

    def __init__(self, spec: FeatureSpec, *, normalize: bool = True) -> None:
        self.spec = spec
        self.normalize = normalize
        self.columns = spec.columns()
        self._flat = spec.flat_branches
        self._groups = spec.collections()
        start = len(self._flat)
        self._starts: dict[str, int] = {}
        for b in spec.jagged_branches:
            self._starts[b.name] = start
            start += b.length

    # -- checks -------------------------------------------------------------

    def validate(self, events: ak.Array, *, where: str = "the events") -> None:
        """Check that every spec branch is present with its kind and dtype."""
        fields = set(events.fields)
        for b in self.spec.branches:
            if b.name not in fields:
                raise DataError(f"branch {b.name!r} of the feature spec is missing in {where}")
            kind, dtype = describe(events[b.name])
            if kind != b.kind:
                raise DataError(
                    f"branch {b.name!r} is {b.kind} in the feature spec but {kind} "
                    f"({events[b.name].type.content}) in {where}"
                )
            if dtype != b.dtype:
                raise DataError(
                    f"branch {b.name!r} has type {dtype} in {where}; the feature spec expects {b.dtype}"
                )

    # -- pieces -------------------------------------------------------------

    def _values(self, values: np.ndarray, b: BranchSpec) -> np.ndarray:
        if self.normalize:
            return normalize.apply(values, b.normalization)
        return values.astype(np.float32, copy=False)

    def _collection_index(
        self, events: ak.Array, branches: list[BranchSpec], where: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Shared work of one collection: counts, kept positions, padded destinations."""
        length = branches[0].length
        counts, _ = jagged_parts(events[branches[0].name])
        total = int(counts.sum())
        starts = np.cumsum(counts) - counts
        local = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
        keep = local < length
        rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        destination = (rows * length + local)[keep]
        clipped = int(np.count_nonzero(counts > length))
        if clipped and self.spec.clip == "error":
            raise DataError(
                f"{clipped} events of {where} have more than {length} "
                f"{branches[0].collection or branches[0].name} entries (clip policy: error)"
            )
        return counts, keep, destination, clipped

    def _padded(
        self, events: ak.Array, b: BranchSpec, counts: np.ndarray, keep: np.ndarray,
        destination: np.ndarray, where: str,
    ) -> np.ndarray:  # fmt: skip
        own_counts, content = jagged_parts(events[b.name])
        if not np.array_equal(own_counts, counts):
            raise DataError(
                f"branch {b.name!r} has other per-event lengths than the rest of its "
                f"collection {b.collection!r} in {where}"
            )
        block = np.full((len(counts), b.length), self.spec.pad_value, dtype=np.float32)
        block.reshape(-1)[destination] = self._values(content[keep], b)
        return block

    def _mask(self, counts: np.ndarray, length: int) -> np.ndarray:
        return (np.arange(length) < counts[:, None]).astype(np.uint8)

    # -- layouts ------------------------------------------------------------

    def flat(
        self, events: ak.Array, *, where: str = "the events", check: bool = True
    ) -> FlatTensors:
        """The flat layout ``[N, F]`` and its mask."""
        if check:
            self.validate(events, where=where)
        n = len(events)
        x = np.empty((n, len(self.columns)), dtype=np.float32)
        mask = np.ones((n, len(self.columns)), dtype=np.uint8)
        for j, b in enumerate(self._flat):
            x[:, j] = self._values(events[b.name].to_numpy(), b)
        clipped = {}
        for name, branches in self._groups.items():
            counts, keep, destination, clipped[name] = self._collection_index(
                events, branches, where
            )
            block_mask = self._mask(counts, branches[0].length)
            for b in branches:
                a = self._starts[b.name]
                x[:, a : a + b.length] = self._padded(events, b, counts, keep, destination, where)
                mask[:, a : a + b.length] = block_mask
        return FlatTensors(x=x, mask=mask, columns=self.columns, clipped=clipped)

    def grouped(
        self, events: ak.Array, *, where: str = "the events", check: bool = True
    ) -> GroupedTensors:
        """The grouped layout: ``[N, C, L]`` and ``[N, 1, L]`` per collection, flat ``[N, F]``."""
        if check:
            self.validate(events, where=where)
        n = len(events)
        flat = np.empty((n, len(self._flat)), dtype=np.float32)
        for j, b in enumerate(self._flat):
            flat[:, j] = self._values(events[b.name].to_numpy(), b)
        collections, masks, channels, clipped = {}, {}, {}, {}
        for name, branches in self._groups.items():
            lengths = {b.length for b in branches}
            if len(lengths) > 1:
                raise DataError(
                    f"the grouped layout needs one length per collection; {name} has {sorted(lengths)}"
                )
            counts, keep, destination, clipped[name] = self._collection_index(
                events, branches, where
            )
            length = branches[0].length
            block = np.empty((n, len(branches), length), dtype=np.float32)
            for k, b in enumerate(branches):
                block[:, k, :] = self._padded(events, b, counts, keep, destination, where)
            collections[name] = block
            masks[name] = self._mask(counts, length)[:, None, :]
            channels[name] = [b.name for b in branches]
        return GroupedTensors(
            collections=collections,
            masks=masks,
            channels=channels,
            flat=flat,
            flat_columns=[b.name for b in self._flat],
            clipped=clipped,
        )
