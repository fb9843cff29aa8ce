"""The unit the streaming layer yields: a block of events and what travels with them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np


@dataclass
class Chunk:
    """A block of events, possibly mixed from several sources.

    ``arrays`` is a record array with one field per feature branch followed by
    the identifier branches. Per event: ``label`` (NaN where the source has
    none), ``weight``, ``source`` (index into the stream's source list) and
    ``entry`` (entry number in that source's tree), so any event can be traced
    back to its file and entry.
    """

    arrays: ak.Array
    features: list[str]
    identifiers: list[str]
    label: np.ndarray
    weight: np.ndarray
    source: np.ndarray
    entry: np.ndarray

    def __len__(self) -> int:
        return len(self.entry)

    @property
    def data(self) -> ak.Array:
        """The feature branches only."""
        return self.arrays[self.features]

    @property
    def ids(self) -> ak.Array | None:
        """The identifier branches, or ``None`` when there are none."""
        return self.arrays[self.identifiers] if self.identifiers else None

    @property
    def nbytes(self) -> int:
        """Bytes of the event data in memory (uncompressed)."""
        return int(self.arrays.nbytes)

    def take(self, index: np.ndarray | slice) -> Chunk:
        """A chunk of the events selected by ``index`` (a permutation, mask or slice)."""
        return Chunk(
            arrays=self.arrays[index],
            features=self.features,
            identifiers=self.identifiers,
            label=self.label[index],
            weight=self.weight[index],
            source=self.source[index],
            entry=self.entry[index],
        )

    @staticmethod
    def concatenate(chunks: Sequence[Chunk]) -> Chunk:
        """One chunk holding the events of ``chunks`` in order."""
        if len(chunks) == 1:
            return chunks[0]
        first = chunks[0]
        return Chunk(
            arrays=ak.concatenate([c.arrays for c in chunks]),
            features=first.features,
            identifiers=first.identifiers,
            label=np.concatenate([c.label for c in chunks]),
            weight=np.concatenate([c.weight for c in chunks]),
            source=np.concatenate([c.source for c in chunks]),
            entry=np.concatenate([c.entry for c in chunks]),
        )
