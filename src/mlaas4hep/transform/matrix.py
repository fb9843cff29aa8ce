"""Matrix-wise transform: jagged collections to event images ``[N, C, H, W]``.

Each event becomes a stack of 2-D histograms of the entries of its jagged
collections (particle-flow candidates, jets, ...), the input of a CNN. The
configuration is a small tree of frozen dataclasses stored in ``features.json``
(``to_dict`` / ``from_dict``):

* :class:`ImageView` — which two coordinates of a collection span the image and
  how they are binned: ``x`` / ``y`` are branch suffixes (``"eta"`` and
  ``"phi"`` read ``<collection>_eta`` and ``<collection>_phi``; ``"Px"`` /
  ``"Py"`` give a transverse-plane view), ``bins = (H, W)``, and the ranges.
* :class:`ImageChannel` — which collection fills the cells, with which weight
  (counts, ``pt``, ``energy`` or any attribute) and which reduction
  (``sum`` or ``max``).
* :class:`ImageSpec` — the views and channels; the output has one channel per
  (view, channel) pair, **views outer, channels inner**: output channel
  ``v * len(channels) + c`` is channel ``c`` drawn in view ``v``. All views share
  ``bins`` so that they stack.

Binning rules, used identically by :func:`make_images` and
:func:`make_sparse_images`:

* ``x`` runs along the columns (``W`` bins over ``x_range``), ``y`` along the
  rows (``H`` bins over ``y_range``); row 0 / column 0 hold the lowest values.
  ``image[row, col]`` is thus ``numpy.histogram2d(y, x)``'s layout.
* Bins are equal-width with edges ``numpy.linspace(lo, hi, n + 1)``; bin ``i``
  holds ``edges[i] <= v < edges[i + 1]``, and the last bin also holds
  ``v == hi`` (so ``phi == pi`` lands in the last bin, as in
  ``numpy.histogram``).
* The edges are rounded to the precision of the data: float32 coordinates
  (NanoAOD's) are compared with float32 edges, anything else with float64 edges.
  A float32 ``phi`` equal to ``float32(pi)`` is therefore ``pi`` and lands in the
  last bin instead of falling just outside the range.
* Entries outside the ranges (and entries with a NaN coordinate) are **dropped**:
  they contribute to no cell.

Cell values (the ``reduce`` rule of a channel): ``"sum"`` adds the weights of
all entries falling in the cell, ``"max"`` keeps the largest of them; a cell no
entry falls in is 0 under both rules (a cell whose entries are all negative
keeps that negative maximum under ``"max"``). Weights are used as they are: a NaN
weight makes its cell NaN.

A *branch* of the events that is flat (one number per event, such as
``MET_phi``) counts as a collection with exactly one entry per event, so the
flat ``MET_phi`` / ``MET_pt`` pair can be drawn in a ``phi``-``pt`` view.

Everything is vectorised: a collection is flattened once, the bin indices of all
entries are computed with numpy, and the cells are filled with ``np.bincount``
(sum, in float64, in blocks of events so that the buffer stays small) or
``np.maximum.at`` (max) on a flat linear index; only the cells some entry falls
in are ever written. There is no per-event Python loop.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeAlias, cast

import awkward as ak
import numpy as np
import numpy.typing as npt

from mlaas4hep.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_RANGES",
    "REDUCTIONS",
    "ImageChannel",
    "ImageSpec",
    "ImageView",
    "SparseImages",
    "make_images",
    "make_sparse_images",
]

Array: TypeAlias = npt.NDArray[Any]
Reduce: TypeAlias = Literal["sum", "max"]

#: Default range of a coordinate when a view does not give one.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "eta": (-2.5, 2.5),
    "phi": (-math.pi, math.pi),
}
#: The rules for several entries falling in one cell.
REDUCTIONS: tuple[str, ...] = ("sum", "max")

# Cells per temporary buffer of the dense fill (float64: 2 MiB).
_BLOCK_CELLS = 1 << 18


# --------------------------------------------------------------------------- configuration


def _check_keys(data: Any, cls: type, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(sorted(known))}"
        )
    return dict(data)


def _suffix(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty branch suffix such as 'eta', got {value!r}")
    return value


def _range(value: Any, coordinate: str, what: str) -> tuple[float, float]:
    if value is None:
        if coordinate not in DEFAULT_RANGES:
            raise ConfigError(
                f"{what} is required for coordinate {coordinate!r} "
                f"(defaults exist only for {', '.join(DEFAULT_RANGES)})"
            )
        return DEFAULT_RANGES[coordinate]
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{what} must be two numbers (low, high), got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ConfigError(f"{what} must be finite with low < high, got ({lo}, {hi})")
    return lo, hi


def _bins(value: Any) -> tuple[int, int]:
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(b, int | np.integer) and not isinstance(b, bool) for b in value)
    ):
        raise ConfigError(f"ImageView.bins must be two integers (H, W), got {value!r}")
    if min(value) < 1:
        raise ConfigError(f"ImageView.bins must be ≥ 1 in each direction, got {tuple(value)}")
    return int(value[0]), int(value[1])


def _collection(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"ImageChannel.collection must be a branch prefix such as 'PFCands', got {value!r}"
        )
    if value.endswith("_"):
        raise ConfigError(
            f"ImageChannel.collection is the prefix without the underscore "
            f"({value.rstrip('_')!r}), got {value!r}"
        )
    return value


@dataclass(frozen=True)
class ImageView:
    """Two coordinates of a collection binned into an ``H × W`` image.

    Args:
        x: suffix of the branch along the columns (``"eta"`` reads ``<coll>_eta``).
        y: suffix of the branch along the rows.
        bins: ``(H, W)``: rows (bins of ``y``) and columns (bins of ``x``), each ≥ 1.
        x_range: ``(low, high)`` of ``x``; ``None`` takes :data:`DEFAULT_RANGES`
            (``eta``: ±2.5, ``phi``: ±π) and is an error for other coordinates.
        y_range: the same for ``y``.

    Entries outside the ranges are dropped; ``high`` itself is in the last bin.
    """

    x: str = "eta"
    y: str = "phi"
    bins: tuple[int, int] = (32, 32)
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _suffix(self.x, "ImageView.x")
        _suffix(self.y, "ImageView.y")
        object.__setattr__(self, "bins", _bins(self.bins))
        object.__setattr__(self, "x_range", _range(self.x_range, self.x, "ImageView.x_range"))
        object.__setattr__(self, "y_range", _range(self.y_range, self.y, "ImageView.y_range"))

    @property
    def name(self) -> str:
        """``x-y``, e.g. ``eta-phi``."""
        return f"{self.x}-{self.y}"

    @property
    def ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(x_range, y_range)``, both resolved (never ``None``)."""
        return cast("tuple[float, float]", self.x_range), cast("tuple[float, float]", self.y_range)

    def to_dict(self) -> dict[str, Any]:
        x_range, y_range = self.ranges
        return {
            "x": self.x,
            "y": self.y,
            "bins": list(self.bins),
            "x_range": list(x_range),
            "y_range": list(y_range),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageView:
        body = _check_keys(data, cls, "an image view")
        return cls(**body)


@dataclass(frozen=True)
class ImageChannel:
    """What fills the cells: one collection, a weight and a reduction rule.

    Args:
        collection: branch prefix, e.g. ``"PFCands"`` (reads ``PFCands_eta``, ...).
        weight: ``None`` — each entry counts 1; ``"pt"`` — ``<coll>_pt`` (or
            ``hypot(<coll>_Px, <coll>_Py)`` when there is no ``pt`` branch);
            ``"energy"`` — the ``<coll>_E`` branch if there is one, otherwise
            ``sqrt((pt·cosh η)² + m²)`` from ``<coll>_pt``, ``<coll>_eta`` and
            ``<coll>_mass`` (``pt·cosh η`` without a mass branch); any other
            string — the branch ``<coll>_<weight>`` (``"charge"``, ``"btagDeepB"``).
        reduce: ``"sum"`` adds the weights of the entries falling in one cell,
            ``"max"`` keeps the largest; an empty cell is 0 either way.
    """

    collection: str
    weight: str | None = None
    reduce: Reduce = "sum"

    def __post_init__(self) -> None:
        _collection(self.collection)
        if self.weight is not None:
            _suffix(self.weight, "ImageChannel.weight (or None for counts)")
        if self.reduce not in REDUCTIONS:
            raise ConfigError(
                f"ImageChannel.reduce must be one of {', '.join(REDUCTIONS)}, got {self.reduce!r}"
            )

    @property
    def name(self) -> str:
        """``collection:weight:reduce``, e.g. ``PFCands:pt:sum`` (``count`` for counts)."""
        return f"{self.collection}:{self.weight or 'count'}:{self.reduce}"

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "weight": self.weight, "reduce": self.reduce}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageChannel:
        body = _check_keys(data, cls, "an image channel")
        if "collection" not in body:
            raise ConfigError("an image channel needs a 'collection'")
        return cls(**body)


@dataclass(frozen=True)
class ImageSpec:
    """Views × channels: the complete image configuration.

    The output channels are ordered views outer, channels inner: output channel
    ``v * len(channels) + c`` is ``channels[c]`` drawn in ``views[v]``
    (:attr:`channel_names` lists them). All views must have the same ``bins``.
    """

    views: Sequence[ImageView]
    channels: Sequence[ImageChannel]

    def __post_init__(self) -> None:
        views = tuple(self.views)
        channels = tuple(self.channels)
        if not views:
            raise ConfigError("an image spec needs at least one view")
        if not channels:
            raise ConfigError("an image spec needs at least one channel")
        for v in views:
            if not isinstance(v, ImageView):
                raise ConfigError(f"ImageSpec.views must hold ImageView objects, got {v!r}")
        for c in channels:
            if not isinstance(c, ImageChannel):
                raise ConfigError(f"ImageSpec.channels must hold ImageChannel objects, got {c!r}")
        shapes = {v.bins for v in views}
        if len(shapes) != 1:
            listed = ", ".join(f"{v.name} {v.bins}" for v in views)
            raise ConfigError(f"all image views must have the same bins to stack, got {listed}")
        object.__setattr__(self, "views", views)
        object.__setattr__(self, "channels", channels)

    @property
    def bins(self) -> tuple[int, int]:
        """``(H, W)`` shared by every view."""
        return self.views[0].bins

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one event's image."""
        return (len(self.views) * len(self.channels), *self.bins)

    @property
    def channel_names(self) -> list[str]:
        """One name per output channel, e.g. ``eta-phi/PFCands:pt:sum``, in output order."""
        return [f"{v.name}/{c.name}" for v in self.views for c in self.channels]

    def branches(self, available: Iterable[str]) -> list[str]:
        """The branches :func:`make_images` reads, given the ``available`` branch names.

        Useful to select what to stream. Raises :class:`DataError` like
        :func:`make_images` when a branch is missing.
        """
        table = _Table({}, fields=list(available), length=0, resolve_only=True)
        for view in self.views:
            for channel in self.channels:
                table.coordinate(channel.collection, view.x, view)
                table.coordinate(channel.collection, view.y, view)
                table.weight(channel)
        return list(table.used)

    def to_dict(self) -> dict[str, Any]:
        return {
            "views": [v.to_dict() for v in self.views],
            "channels": [c.to_dict() for c in self.channels],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageSpec:
        body = _check_keys(data, cls, "an image spec")
        for key in ("views", "channels"):
            if key not in body:
                raise ConfigError(f"an image spec needs {key!r}")
        views, channels = body["views"], body["channels"]
        for key, value in (("views", views), ("channels", channels)):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"the image spec's {key!r} must be a list, got {value!r}")
        return cls(
            views=tuple(ImageView.from_dict(v) for v in views),
            channels=tuple(ImageChannel.from_dict(c) for c in channels),
        )


# --------------------------------------------------------------------------- output


@dataclass
class SparseImages:
    """Event images in coordinate (COO) form: one entry per non-empty cell.

    ``event``, ``channel``, ``row``, ``col`` (int64) and ``value`` are parallel
    arrays, sorted by (event, channel, row, col), each cell at most once;
    ``shape`` is ``(N, C, H, W)`` of the dense form. A cell some entry fell in is
    listed even when its value is 0 (e.g. a charge sum of 0).
    """

    event: Array
    channel: Array
    row: Array
    col: Array
    value: Array
    shape: tuple[int, int, int, int]

    @property
    def nnz(self) -> int:
        """Number of stored cells."""
        return len(self.value)

    def to_dense(self, dtype: npt.DTypeLike | None = None) -> Array:
        """The ``[N, C, H, W]`` array (``dtype`` defaults to that of ``value``)."""
        out = np.zeros(self.shape, dtype=self.value.dtype if dtype is None else dtype)
        out[self.event, self.channel, self.row, self.col] = self.value
        return out


# --------------------------------------------------------------------------- reading events


def _float_values(values: Array) -> Array:
    """float32 stays float32 (compared with float32 edges); anything else → float64."""
    if values.dtype.kind == "f" and values.dtype.itemsize == 4:
        return values.astype(np.float32, copy=False)
    return values.astype(np.float64, copy=False)


class _Table:
    """Flattened branches of a batch of events, read once and cached."""

    def __init__(
        self,
        events: Any,
        *,
        fields: list[str],
        length: int,
        resolve_only: bool = False,
    ) -> None:
        self.events = events
        self.fields = fields
        self._field_set = set(fields)
        self.length = length
        self.resolve_only = resolve_only
        self.used: dict[str, None] = {}
        self._values: dict[str, Array] = {}
        self._counts: dict[str, tuple[str, Array]] = {}

    @classmethod
    def of(cls, events: Any) -> _Table:
        if isinstance(events, ak.Array):
            if events.ndim != 1 or not events.fields:
                raise DataError(
                    f"events must be a record array with one field per branch, got {events.type}"
                )
            return cls(events, fields=list(events.fields), length=len(events))
        if isinstance(events, Mapping):
            lengths = {name: len(v) for name, v in events.items()}
            if len(set(lengths.values())) > 1:
                listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
                raise DataError(f"the event branches have different lengths ({listed})")
            length = next(iter(lengths.values()), 0)
            return cls(events, fields=[str(k) for k in events], length=length)
        raise DataError(
            f"events must be an awkward record array or a mapping of branch name to array, "
            f"got {type(events).__name__}"
        )

    def has(self, name: str) -> bool:
        return name in self._field_set

    def missing(self, name: str, what: str) -> DataError:
        prefix = name.split("_", 1)[0] + "_"
        same = [f for f in self.fields if f.startswith(prefix)]
        if same:
            shown = ", ".join(same[:30]) + (f", ... ({len(same)} in all)" if len(same) > 30 else "")
            hint = f"fields starting with {prefix!r}: {shown}"
        else:
            close = difflib.get_close_matches(name, self.fields, n=5)
            hint = f"no field starts with {prefix!r}" + (
                f"; close matches: {', '.join(close)}" if close else ""
            )
        return DataError(f"branch {name!r} ({what}) is not in the events; {hint}")

    def column(self, collection: str, suffix: str, what: str) -> Array:
        """The flattened values of ``<collection>_<suffix>`` (dtype as read)."""
        name = f"{collection}_{suffix}"
        if not self.has(name):
            raise self.missing(name, what)
        self.used[name] = None
        if self.resolve_only:
            return np.zeros(0)
        if name in self._values:
            return self._values[name]
        values, counts = self._flatten(name)
        if collection in self._counts:
            first, expected = self._counts[collection]
            if len(counts) != len(expected) or not np.array_equal(counts, expected):
                raise DataError(
                    f"branch {name!r} does not have the same number of entries per event as "
                    f"{first!r}: they cannot describe the same collection {collection!r}"
                )
        else:
            self._counts[collection] = (name, counts)
        self._values[name] = values
        return values

    def counts(self, collection: str) -> Array:
        return self._counts[collection][1]

    def _flatten(self, name: str) -> tuple[Array, Array]:
        raw = self.events[name]
        try:
            if isinstance(raw, np.ndarray) and raw.ndim == 1:
                values = raw
                counts = np.ones(len(raw), dtype=np.int64)
            else:
                array = ak.Array(raw) if not isinstance(raw, ak.Array) else raw
                if array.ndim == 1:
                    values = ak.to_numpy(array, allow_missing=False)
                    counts = np.ones(len(values), dtype=np.int64)
                elif array.ndim == 2:
                    counts = ak.to_numpy(ak.num(array, axis=1), allow_missing=False)
                    values = ak.to_numpy(ak.flatten(array, axis=1), allow_missing=False)
                else:
                    raise DataError(
                        f"branch {name!r} is {array.type}: an image needs one number per "
                        f"entry (var * number) or per event"
                    )
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"branch {name!r} cannot be read as numbers per entry "
                f"(missing values or not numeric): {exc}"
            ) from exc
        values = np.asarray(values)
        if values.dtype.kind not in "biuf":
            raise DataError(f"branch {name!r} has dtype {values.dtype}; an image needs numbers")
        return values, np.asarray(counts, dtype=np.int64)

    # -- derived quantities ------------------------------------------------

    def coordinate(self, collection: str, suffix: str, view: ImageView) -> Array:
        values = self.column(collection, suffix, f"coordinate of view {view.name}")
        if self.resolve_only:
            return values
        return _float_values(values)

    def weight(self, channel: ImageChannel) -> Array | None:
        """Per-entry weights of the channel in float64, ``None`` for counts."""
        coll, weight = channel.collection, channel.weight
        what = f"weight {weight!r} of channel {channel.name}"
        if weight is None:
            return None
        if weight == "pt" and not self.has(f"{coll}_pt"):
            for px, py in (("Px", "Py"), ("px", "py")):
                if self.has(f"{coll}_{px}") and self.has(f"{coll}_{py}"):
                    x = self._f64(coll, px, what)
                    y = self._f64(coll, py, what)
                    return None if self.resolve_only else np.hypot(x, y)
        if weight == "energy":
            return self._energy(coll, what)
        return self._f64(coll, weight, what)

    def _f64(self, collection: str, suffix: str, what: str) -> Array:
        values = self.column(collection, suffix, what)
        return values if self.resolve_only else values.astype(np.float64, copy=False)

    def _energy(self, coll: str, what: str) -> Array | None:
        if self.has(f"{coll}_E"):
            return self._f64(coll, "E", what)
        if not (self.has(f"{coll}_pt") and self.has(f"{coll}_eta")):
            absent = next(n for n in (f"{coll}_pt", f"{coll}_eta") if not self.has(n))
            raise self.missing(
                absent, f"{what}: needs {coll}_E, or {coll}_pt and {coll}_eta (and {coll}_mass)"
            )
        pt = self._f64(coll, "pt", what)
        eta = self._f64(coll, "eta", what)
        mass = self._f64(coll, "mass", what) if self.has(f"{coll}_mass") else None
        if self.resolve_only:
            return None
        p = pt * np.cosh(eta)
        return p if mass is None else np.sqrt(p * p + mass * mass)


# --------------------------------------------------------------------------- binning


def _bin(values: Array, lo: float, hi: float, n: int) -> Array:
    """Bin index (int64) of every value, all within ``[lo, hi]`` in the values' precision.

    A first guess from arithmetic, then corrected against the edges themselves
    (``linspace(lo, hi, n + 1)`` rounded to the values' dtype) until every value
    satisfies ``edges[i] <= v < edges[i + 1]`` (``<= hi`` for the last bin): exact
    and, unlike ``np.searchsorted``, a few fast passes.
    """
    with np.errstate(over="ignore"):
        edges = np.linspace(lo, hi, n + 1).astype(values.dtype)
    lower = edges[:-1]
    upper = edges[1:].copy()
    upper[-1] = np.inf
    kind = values.dtype.type
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        guess = (values - kind(edges[0])) * kind(n / (float(edges[-1]) - float(edges[0])))
        index: Array = guess.astype(np.int64)
    np.clip(index, 0, n - 1, out=index)
    # Converges monotonically: the edges are sorted and every value is within them.
    while True:
        down = values < np.take(lower, index)
        up = values >= np.take(upper, index)
        if not (down.any() or up.any()):
            return index
        index -= down
        index += up


def _edge(value: float, dtype: np.dtype[Any]) -> Any:
    with np.errstate(over="ignore"):  # a float64 range beyond float32's: ±inf
        return np.asarray(value).astype(dtype)[()]


@dataclass
class _Cells:
    """The entries of one collection that fall in one view, and their cells.

    Per kept entry: ``entries`` its index in the flattened collection, ``event``
    its event and ``linear`` = ``event * H * W + row * W + col``. Entries stay
    grouped by event (``event`` is non-decreasing), in their original order.
    """

    entries: Array
    event: Array
    linear: Array


def _cells(table: _Table, collection: str, view: ImageView) -> _Cells:
    x = table.coordinate(collection, view.x, view)
    y = table.coordinate(collection, view.y, view)
    (x_lo, x_hi), (y_lo, y_hi) = view.ranges
    h, w = view.bins
    # NaN compares false: entries with a NaN coordinate are dropped with those out of range.
    inside = x >= _edge(x_lo, x.dtype)
    inside &= x <= _edge(x_hi, x.dtype)
    inside &= y >= _edge(y_lo, y.dtype)
    inside &= y <= _edge(y_hi, y.dtype)
    entries = np.flatnonzero(inside)
    col = _bin(x[entries], x_lo, x_hi, w)
    row = _bin(y[entries], y_lo, y_hi, h)
    counts = table.counts(collection)
    event = np.repeat(np.arange(len(counts), dtype=np.int64), counts)[entries]
    linear = event * (h * w)
    linear += row * w
    linear += col
    return _Cells(entries=entries, event=event, linear=linear)


def _prepare(
    events: Any, spec: ImageSpec
) -> tuple[_Table, list[tuple[_Cells, Array | None, Reduce]]]:
    """For every output channel: its cells, weights of the kept entries and reduction."""
    if not isinstance(spec, ImageSpec):
        raise ConfigError(f"spec must be an ImageSpec, got {type(spec).__name__}")
    table = _Table.of(events)
    cells: dict[tuple[str, ImageView], _Cells] = {}
    weights: dict[tuple[str, str | None], Array | None] = {}
    plan: list[tuple[_Cells, Array | None, Reduce]] = []
    for view in spec.views:
        for channel in spec.channels:
            key = (channel.collection, view)
            if key not in cells:
                cells[key] = _cells(table, channel.collection, view)
            wkey = (channel.collection, channel.weight)
            if wkey not in weights:
                # Reading the weight branches checks their entries against the collection's.
                weights[wkey] = table.weight(channel)
            c = cells[key]
            w = weights[wkey]
            plan.append((c, None if w is None else w[c.entries], channel.reduce))
    return table, plan


def _check_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    try:
        out = np.dtype(dtype)
    except TypeError as exc:
        raise ConfigError(f"dtype must be a numpy number type, got {dtype!r}") from exc
    if out.kind != "f":
        raise ConfigError(f"dtype must be a floating type such as float32, got {out}")
    return out


def _check_out(out: Any, shape: tuple[int, int, int, int]) -> None:
    if not isinstance(out, np.ndarray):
        raise ConfigError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape:
        raise ConfigError(f"out must have the shape [N, C, H, W] = {shape}, got {out.shape}")
    _check_dtype(out.dtype)
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ConfigError("out must be a writeable C-contiguous array")


# --------------------------------------------------------------------------- public API


def make_images(
    events: ak.Array | Mapping[str, Any],
    spec: ImageSpec,
    *,
    dtype: npt.DTypeLike = np.float32,
    out: Array | None = None,
) -> Array:
    """Event images ``[N, C, H, W]`` of ``events`` as configured by ``spec``.

    Args:
        events: an awkward record array with one field per branch (a streamed
            chunk's ``arrays``), or a mapping of branch name to array (what
            :func:`mlaas4hep.datasets.generate_events` returns).
        spec: the views and channels; output channel ``v * len(spec.channels) + c``
            is channel ``c`` in view ``v``.
        dtype: floating type of the result; sums are computed in float64, then cast.
        out: optionally, a C-contiguous ``[N, C, H, W]`` floating array to fill
            instead of allocating one (``dtype`` is then ignored): reusing one
            buffer per batch saves the page faults of a fresh array, which are
            most of the cost of a large batch.

    Returns:
        The images (``out`` when given); ``float32`` by default.

    Raises:
        DataError: a branch is missing (the message lists the fields with the
            same prefix), not numeric, or inconsistent with its collection.
        ConfigError: an invalid spec, dtype or ``out``.
    """
    table, plan = _prepare(events, spec)
    n = table.length
    h, w = spec.bins
    hw = h * w
    n_channels = len(plan)
    if out is None:
        out = np.zeros((n, n_channels, h, w), dtype=_check_dtype(dtype))
    else:
        _check_out(out, (n, n_channels, h, w))
        out.fill(0)
    flat = out.reshape(-1)
    # Only the cells some entry falls in are written: a fresh output stays untouched
    # (zero, and not even paged in) elsewhere. Values beyond a small dtype become inf.
    with np.errstate(over="ignore"):
        _fill(flat, plan, n, hw)
    return out


def _fill(flat: Array, plan: list[tuple[_Cells, Array | None, Reduce]], n: int, hw: int) -> None:
    n_channels = len(plan)
    for c, (cells, weights, reduce) in enumerate(plan):
        target = cells.event * ((n_channels - 1) * hw)
        target += cells.linear
        target += c * hw
        if reduce == "max":
            if weights is None:
                flat[target] = 1
            else:
                # The cast to the output type is monotonic: max then cast = cast then max.
                flat[target] = -np.inf
                np.maximum.at(flat, target, weights.astype(flat.dtype))
        else:
            _add_into(flat, target, cells.linear, weights, n, hw)


def _add_into(
    flat: Array, target: Array, linear: Array, weights: Array | None, n: int, hw: int
) -> None:
    """``flat[target] = `` the float64 sums of ``weights`` (1 each if ``None``) per cell.

    Sums are computed with ``np.bincount`` in blocks of events whose cell buffer
    stays small (entries are grouped by event: a block of events is a slice of
    entries), then scattered to the cells that received an entry.
    """
    block = max(1, _BLOCK_CELLS // hw)
    starts = np.arange(0, n + block, block, dtype=np.int64)
    starts[-1] = n
    bounds = np.searchsorted(linear, starts * hw)
    for b in range(len(starts) - 1):
        s, t = int(bounds[b]), int(bounds[b + 1])
        if s == t:
            continue
        e0, e1 = int(starts[b]), int(starts[b + 1])
        local = linear[s:t] - e0 * hw
        sums = np.bincount(
            local, weights=None if weights is None else weights[s:t], minlength=(e1 - e0) * hw
        )
        flat[target[s:t]] = sums[local]


def make_sparse_images(
    events: ak.Array | Mapping[str, Any], spec: ImageSpec, *, dtype: npt.DTypeLike = np.float32
) -> SparseImages:
    """The images of :func:`make_images` as COO arrays, built without a dense array.

    Same arguments, rules and errors as :func:`make_images`;
    ``make_sparse_images(...).to_dense()`` equals ``make_images(...)``. Memory is
    proportional to the number of entries, not to ``N × C × H × W``.
    """
    out_dtype = _check_dtype(dtype)
    table, plan = _prepare(events, spec)
    n = table.length
    h, w = spec.bins
    hw = h * w
    n_channels = len(plan)
    keys: list[Array] = []
    values: list[Array] = []
    for c, (cells, weights, reduce) in enumerate(plan):
        linear = cells.linear
        order = np.argsort(linear, kind="stable")
        ordered = linear[order]
        first = np.ones(len(ordered), dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        unique = ordered[starts]
        cell_values: Array
        if reduce == "sum":
            group = np.empty(len(order), dtype=np.int64)
            group[order] = np.cumsum(first) - 1
            cell_values = np.bincount(group, weights=weights, minlength=len(unique))
        elif weights is None:
            cell_values = np.ones(len(unique))
        elif len(unique):
            cell_values = np.maximum.reduceat(weights[order], starts)
        else:
            cell_values = np.zeros(0)
        event, cell = np.divmod(unique, hw)
        keys.append((event * n_channels + c) * hw + cell)
        with np.errstate(over="ignore"):
            values.append(cell_values.astype(out_dtype))
    key = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    value = np.concatenate(values) if values else np.zeros(0, dtype=out_dtype)
    order = np.argsort(key, kind="stable")
    key, value = key[order], value[order]
    event_channel, cell = np.divmod(key, hw)
    event, channel = np.divmod(event_channel, n_channels)
    row, col = np.divmod(cell, w)
    return SparseImages(
        event=event.astype(np.int64),
        channel=channel.astype(np.int64),
        row=row.astype(np.int64),
        col=col.astype(np.int64),
        value=value,
        shape=(n, n_channels, h, w),
    )
