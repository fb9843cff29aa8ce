"""Raw events to a model's inputs, exactly as in training.

A model package carries its feature spec (and, when it was trained with one,
its preprocessing module), so events as they are in NanoAOD — jagged
collections and all — can be scored without any hand-written padding:
:class:`EventInputs` checks the events against the spec, runs the selection
and derived variables, and builds the tensors with the training pipeline's own
code (:func:`~mlaas4hep.transform.pipeline.model_arrays`). The server's
``/events`` endpoint and ``mlaas4hep predict`` both go through it.

Events from JSON or from other files may store a branch with another numeric
type than the training data (``nJet`` is ``uint32`` in some NanoAOD files and
``int32`` in others, JSON has only ``int64`` and ``float64``): numbers are
converted to the spec's type. A flat branch given as lists, a jagged one given
as numbers, or anything that is not a number is an error naming the branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np

from mlaas4hep.errors import DataError
from mlaas4hep.transform.pipeline import model_arrays, preprocessing_for
from mlaas4hep.transform.preprocess import Preprocessing
from mlaas4hep.transform.spec import BranchSpec, FeatureSpec
from mlaas4hep.transform.vector import VectorTransform

GROUPED_EVENT_INPUT = "event"
"""The input name of a grouped-layout model's per-event (flat) features: ``x``."""


@dataclass
class PreparedEvents:
    """A block of events made ready for the model.

    ``inputs`` are by model input name, one row per *selected* event;
    ``selected`` is the boolean mask of the selected events among the events
    given (``None`` when the preprocessing has no selection: all are kept);
    ``identifiers`` are the spec's identifier branches that the events carry,
    for every event given; ``clipped`` counts the events whose collection was
    longer than the spec's length (clipped as the spec says).
    """

    inputs: dict[str, np.ndarray]
    events: int
    selected: np.ndarray | None = None
    identifiers: dict[str, np.ndarray] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Events that reach the model."""
        return self.events if self.selected is None else int(np.count_nonzero(self.selected))

    def scatter(self, outputs: np.ndarray) -> np.ndarray:
        """``outputs`` of the selected events placed at their events' rows: one row per
        event given, NaN for the events the selection dropped."""
        if self.selected is None:
            return outputs
        full = np.full((self.events, *outputs.shape[1:]), np.nan, dtype=np.float32)
        full[self.selected] = outputs
        return full


class EventInputs:
    """How raw events become one model's inputs: its feature spec, preprocessing and
    input names (``x``, ``mask``, ``x_<collection>``, ``mask_<collection>``, or
    ``event`` for the per-event features of a grouped model)."""

    def __init__(
        self,
        spec: FeatureSpec,
        input_names: Sequence[str],
        preprocessing: Preprocessing | None = None,
    ) -> None:
        self.spec = spec
        self.input_names = list(input_names)
        self.preprocessing = preprocessing
        self._vector = VectorTransform(spec)

    @classmethod
    def from_package_files(
        cls, spec: FeatureSpec, input_names: Sequence[str], preprocessing: Path | None
    ) -> EventInputs:
        """The inputs of a package whose spec may record a preprocessing module,
        which must then be ``preprocessing`` (checked by its SHA-256)."""
        if spec.preprocessing is not None and preprocessing is None:
            raise DataError(
                "the feature spec was computed with preprocessing, but the model package "
                "does not carry the module"
            )
        loaded = preprocessing_for(spec, preprocessing) if spec.preprocessing else None
        return cls(spec, input_names, loaded)

    @property
    def branches(self) -> list[str]:
        """The branches events must have (derived variables are computed)."""
        return self.spec.source_branches

    def prepare(self, events: ak.Array, *, where: str = "the events") -> PreparedEvents:
        """Check, preprocess and transform ``events`` (a record array, one entry per event)."""
        events = conform(events, self.spec, where=where)
        n = len(events)
        identifiers = {
            name: np.asarray(ak.to_numpy(events[name]))
            for name in self.spec.identifiers
            if name in events.fields and describe_kind(events[name]) == "flat"
        }
        selected = None
        if self.preprocessing is not None:
            events, selected, _ = self.preprocessing.apply(events, where=where)
            if selected is not None:
                events = events[selected]
        arrays, clipped = model_arrays(events, self.spec, self._vector, where=where)
        inputs = {
            name: arrays["x" if name == GROUPED_EVENT_INPUT else name] for name in self.input_names
        }
        return PreparedEvents(
            inputs=inputs,
            events=n,
            selected=selected,
            identifiers=identifiers,
            clipped={k: v for k, v in clipped.items() if v},
        )


def describe_kind(array: ak.Array) -> str:
    """``flat`` (one number per event), ``jagged`` (a list of numbers), or ``other``."""
    content = array.type.content
    if isinstance(content, ak.types.OptionType):
        content = content.content
    if isinstance(content, ak.types.NumpyType):
        return "flat"
    if isinstance(content, ak.types.ListType | ak.types.RegularType):
        inner = content.content
        if isinstance(inner, ak.types.OptionType):
            inner = inner.content
        if isinstance(inner, ak.types.NumpyType | ak.types.UnknownType):
            return "jagged"
    if isinstance(content, ak.types.UnknownType):
        return "flat"  # no event at all
    return "other"


def conform(events: ak.Array, spec: FeatureSpec, *, where: str = "the events") -> ak.Array:
    """``events`` with every spec branch present and of the spec's kind and type.

    Numbers are converted to the spec's type; a missing branch, one of the
    other kind, a non-number or a missing value (``null``) raises
    :class:`DataError` naming the branch.
    """
    if not isinstance(events, ak.Array) or not events.fields:
        raise DataError(f"{where} are not records of branches (one record per event)")
    wanted = {b.name: b for b in spec.branches if not b.derived}
    missing = [name for name in wanted if name not in events.fields]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{where} lack the branch(es) {shown}{more} that the model needs")
    columns = {name: events[name] for name in events.fields}
    for name, branch in wanted.items():
        columns[name] = _conformed(columns[name], branch, where)
    return ak.zip(columns, depth_limit=1)


def _conformed(array: ak.Array, branch: BranchSpec, where: str) -> ak.Array:
    kind = describe_kind(array)
    expected = "a list of numbers per event" if branch.kind == "jagged" else "one number per event"
    if kind != branch.kind:
        got = {"flat": "a number", "jagged": "a list"}.get(kind, str(array.type.content))
        raise DataError(f"branch {branch.name!r} in {where} must be {expected}, got {got}")
    dtype = np.dtype(branch.dtype)
    try:
        if kind == "flat":
            values = ak.to_numpy(array, allow_missing=False)
            return ak.Array(_numbers(values, dtype, branch.name, where))
        counts = np.asarray(ak.to_numpy(ak.num(array, axis=1), allow_missing=False))
        content = ak.to_numpy(ak.flatten(array, axis=1), allow_missing=False)
    except ValueError as exc:
        raise DataError(_nulls(array, branch.name, where, expected)) from exc
    return ak.unflatten(_numbers(content, dtype, branch.name, where), counts)


def _nulls(array: ak.Array, name: str, where: str, expected: str) -> str:
    """The message for a branch with missing values (absent in some records, or null)."""
    absent = np.asarray(ak.to_numpy(ak.is_none(array)))
    if absent.any():
        first = int(np.flatnonzero(absent)[0])
        return (
            f"branch {name!r} in {where} is missing or null in {int(absent.sum())} of "
            f"{len(absent)} events (the first: event {first}); {expected} expected"
        )
    return f"branch {name!r} in {where} has null entries in its lists; {expected} expected"


def _numbers(values: np.ndarray, dtype: np.dtype[np.generic], name: str, where: str) -> np.ndarray:
    """``values`` as ``dtype``; anything that is not a number is an error."""
    if values.dtype.kind not in "biuf":
        raise DataError(f"branch {name!r} in {where} holds {values.dtype} values, not numbers")
    if values.dtype == dtype:
        return values
    fractional = dtype.kind in "iu" and values.dtype.kind == "f" and len(values) > 0
    if fractional and not (np.all(np.isfinite(values)) and np.all(values == np.round(values))):
        raise DataError(f"branch {name!r} in {where} must hold integers ({dtype})")
    return values.astype(dtype)
