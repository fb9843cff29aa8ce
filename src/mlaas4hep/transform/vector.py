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
import numba
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


def _layout_parts(layout: ak.contents.Content) -> tuple[np.ndarray, np.ndarray] | None:
    """``(counts, content)`` of a list-of-numbers layout without awkward calls, if simple."""
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(
        layout.content, ak.contents.NumpyArray
    ):
        offsets = np.asarray(layout.offsets.data)
        return np.diff(offsets), np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
    if isinstance(layout, ak.contents.ListArray) and isinstance(
        layout.content, ak.contents.NumpyArray
    ):
        # a shuffled (carried) list: gather its entries in event order
        starts, stops = np.asarray(layout.starts.data), np.asarray(layout.stops.data)
        counts = stops - starts
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        return counts, np.asarray(layout.content.data)[np.repeat(starts, counts) + within]
    return None


def jagged_parts(array: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, content)`` numpy arrays of a ``var * number`` array."""
    parts = _layout_parts(ak.to_layout(array))
    if parts is not None:
        return parts
    return ak.num(array, axis=1).to_numpy(), ak.flatten(array, axis=1).to_numpy()


@numba.njit(cache=True, nogil=True)
def _pad_collection(
    out: np.ndarray, mask: np.ndarray, start: int, counts: np.ndarray, values: np.ndarray,
    length: int, pad: float,
) -> None:  # fmt: skip
    """Write a collection's branches, padded to ``length``, into ``out[i, start:]``.

    ``values[k]`` holds branch ``k``'s (normalised) entries of all events, in
    event order. One pass over the events writes each row's whole collection
    region (``C * length`` adjacent columns) and, when ``mask`` has rows, sets
    1 where a value is real. Entries beyond ``length`` are skipped (clipped).
    """
    pad32 = np.float32(pad)
    with_mask = mask.shape[0] > 0
    position = 0
    for i in range(counts.shape[0]):
        count = counts[i]
        kept = min(count, length)
        for k in range(values.shape[0]):
            base = start + k * length
            for j in range(kept):
                out[i, base + j] = values[k, position + j]
            for j in range(kept, length):
                out[i, base + j] = pad32
            if with_mask:
                for j in range(kept):
                    mask[i, base + j] = 1
        position += count


_NO_MASK = np.zeros((0, 0), dtype=np.uint8)


@numba.njit(cache=True, nogil=True)
def _normalise_into(
    out: np.ndarray, content: np.ndarray, log: bool, shift: float, scale: float
) -> None:
    """``out = (f(content) - shift) / scale`` in float32, in one pass (``f``: log1p or identity)."""
    shift32, inverse = np.float32(shift), np.float32(1.0 / scale)
    for i in range(content.shape[0]):
        value = np.float32(content[i])
        if log:
            value = np.log1p(value)
        out[i] = (value - shift32) * inverse


def _two_zero_events(b: BranchSpec) -> ak.Array | np.ndarray:
    """Two events of branch ``b``'s kind and type, all zeros (one entry each if jagged)."""
    values = np.zeros(2, dtype=b.dtype)
    return values if b.kind == "flat" else ak.unflatten(values, np.ones(2, dtype=np.int64))


class EventColumns:
    """Field access on the layout level.

    A high-level ``events[name]`` costs about 0.1 ms, which adds up over the
    ~1000 branches of a NanoAOD file; the layout's fields cost microseconds.
    """

    def __init__(self, events: ak.Array) -> None:
        layout = ak.to_layout(events)
        if isinstance(layout, ak.contents.IndexedArray):
            layout = layout.project()
        self._record = layout if isinstance(layout, ak.contents.RecordArray) else None
        self._events = events

    def flat(self, name: str) -> np.ndarray:
        """A flat field as numpy."""
        if self._record is not None:
            content = self._record.content(name)
            if isinstance(content, ak.contents.NumpyArray):
                return np.asarray(content.data)
        return np.asarray(ak.to_numpy(self._events[name]))

    def jagged(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, content)`` of a jagged field."""
        if self._record is not None:
            parts = _layout_parts(self._record.content(name))
            if parts is not None:
                return parts
        return jagged_parts(self._events[name])


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
        for branches in self._groups.values():
            for b in branches:
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

    def _values(
        self, values: np.ndarray, b: BranchSpec, out: np.ndarray | None = None
    ) -> np.ndarray:
        if self.normalize:
            return normalize.apply(values, b.normalization, out)
        if out is None:
            return values.astype(np.float32, copy=False)
        out[...] = values
        return out

    def _pad(
        self, out: np.ndarray, mask: np.ndarray, start: int, columns: EventColumns,
        branches: list[BranchSpec], counts: np.ndarray, where: str,
    ) -> None:  # fmt: skip
        """Write ``branches`` (one length) padded and normalised from column ``start`` on."""
        values = np.empty((len(branches), int(counts.sum())), dtype=np.float32)
        for k, b in enumerate(branches):
            own_counts, content = columns.jagged(b.name)
            if not np.array_equal(own_counts, counts):
                raise DataError(
                    f"branch {b.name!r} has other per-event lengths than the rest of its "
                    f"collection {b.collection!r} in {where}"
                )
            if not content.dtype.isnative:
                content = content.astype(content.dtype.newbyteorder("="))
            if self.normalize:
                norm = b.normalization
                _normalise_into(values[k], content, norm.log, norm.shift, norm.scale)
            else:
                values[k] = content
        _pad_collection(out, mask, start, counts, values, branches[0].length, self.spec.pad_value)

    def _counts(
        self, columns: EventColumns, name: str, branches: list[BranchSpec], where: str
    ) -> tuple[np.ndarray, int]:
        """The collection's per-event counts and the events it clips."""
        counts = columns.jagged(branches[0].name)[0]
        length = branches[0].length
        clipped = int(np.count_nonzero(counts > length))
        if clipped and self.spec.clip == "error":
            raise DataError(
                f"{clipped} events of {where} have more than {length} {name} entries "
                "(clip policy: error)"
            )
        return counts, clipped

    def load_kernels(self) -> None:
        """Compile, or load from numba's cache, the kernels for this spec's branch types.

        A fresh process takes about half a second for that on its first chunk.
        Loaders call this before DataLoader workers are forked, so the workers
        inherit the kernels instead of each loading them again.
        """
        if not self.spec.branches:
            return
        try:
            two_events = ak.Array({b.name: _two_zero_events(b) for b in self.spec.branches})
            if self.spec.layout == "grouped":
                self.grouped(two_events, check=False)
            else:
                self.flat(two_events, check=False)
        except (DataError, TypeError, ValueError):
            return  # a spec the data will fail on anyway, with the data's own message

    # -- layouts ------------------------------------------------------------

    def flat(
        self, events: ak.Array, *, where: str = "the events", check: bool = True
    ) -> FlatTensors:
        """The flat layout ``[N, F]`` and its mask."""
        if check:
            self.validate(events, where=where)
        n, width = len(events), len(self.columns)
        columns = EventColumns(events)
        x = np.empty((n, width), dtype=np.float32)
        mask = np.zeros((n, width), dtype=np.uint8)
        if self._flat:
            # filled as contiguous rows, then written as one block: column writes are strided
            rows = np.empty((len(self._flat), n), dtype=np.float32)
            for j, b in enumerate(self._flat):
                self._values(columns.flat(b.name), b, out=rows[j])
            x[:, : len(self._flat)] = rows.T
            mask[:, : len(self._flat)] = 1
        clipped = {}
        for name, branches in self._groups.items():
            counts, clipped[name] = self._counts(columns, name, branches, where)
            # a collection's columns are adjacent; branches of one length go in one pass
            for run in _same_length_runs(branches):
                start = self._starts[run[0].name]
                self._pad(x, mask, start, columns, run, counts, where)
        return FlatTensors(x=x, mask=mask, columns=self.columns, clipped=clipped)

    def grouped(
        self, events: ak.Array, *, where: str = "the events", check: bool = True
    ) -> GroupedTensors:
        """The grouped layout: ``[N, C, L]`` and ``[N, 1, L]`` per collection, flat ``[N, F]``."""
        if check:
            self.validate(events, where=where)
        n = len(events)
        columns = EventColumns(events)
        rows = np.empty((len(self._flat), n), dtype=np.float32)
        for j, b in enumerate(self._flat):
            self._values(columns.flat(b.name), b, out=rows[j])
        flat = np.ascontiguousarray(rows.T)
        collections, masks, channels, clipped = {}, {}, {}, {}
        for name, branches in self._groups.items():
            lengths = {b.length for b in branches}
            if len(lengths) > 1:
                raise DataError(
                    f"the grouped layout needs one length per collection; {name} has {sorted(lengths)}"
                )
            counts, clipped[name] = self._counts(columns, name, branches, where)
            (length,) = lengths
            block = np.empty((n, len(branches), length), dtype=np.float32)
            rows_view = block.reshape(n, len(branches) * length)
            self._pad(rows_view, _NO_MASK, 0, columns, branches, counts, where)
            collections[name] = block
            masks[name] = _mask(counts, length)[:, None, :]
            channels[name] = [b.name for b in branches]
        return GroupedTensors(
            collections=collections,
            masks=masks,
            channels=channels,
            flat=flat,
            flat_columns=[b.name for b in self._flat],
            clipped=clipped,
        )


def _same_length_runs(branches: list[BranchSpec]) -> list[list[BranchSpec]]:
    """Consecutive branches grouped by equal length."""
    runs: list[list[BranchSpec]] = []
    for b in branches:
        if runs and runs[-1][0].length == b.length:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def _mask(counts: np.ndarray, length: int) -> np.ndarray:
    """``[N, length]``: 1 where an event has an entry, 0 for padding."""
    return (np.arange(length) < counts[:, None]).astype(np.uint8)
