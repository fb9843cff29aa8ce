"""User preprocessing: a Python file with optional ``selection``, ``new_variables``, ``label``.

::

    # preproc.py
    def selection(events):        # -> boolean mask, one entry per event
        return events.MET_pt > 20
    def new_variables(events):    # -> {name: array}, flat or jagged, one entry per event
        return {"HT": ak.sum(events.Jet_pt, axis=1)}
    def label(events):            # -> one label per event
        return events.nMuon > 0

The file is loaded from its path (no ``PYTHONPATH`` needed); its SHA-256 goes
into the feature spec so a model is never used with other preprocessing. The
functions see an awkward record array of the events of one chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep.data.rootfile import describe_exception
from mlaas4hep.errors import ConfigError, MlaasError
from mlaas4hep.usercode import load_user_module

FUNCTIONS = ("selection", "new_variables", "label")


class PreprocessError(MlaasError):
    """A user preprocessing function failed or returned something unusable."""


@dataclass
class Preprocessing:
    """A loaded preprocessing module."""

    path: Path
    sha256: str
    module: ModuleType

    @property
    def functions(self) -> list[str]:
        return [name for name in FUNCTIONS if callable(getattr(self.module, name, None))]

    def describe(self) -> dict[str, Any]:
        """What the feature spec records about it."""
        return {"path": str(self.path), "sha256": self.sha256, "functions": self.functions}

    def _call(self, name: str, events: ak.Array, where: str) -> Any:
        function: Callable[[ak.Array], Any] = getattr(self.module, name)
        try:
            return function(events)
        except Exception as exc:
            raise PreprocessError(
                f"{name}() in {self.path} failed on {where}: {describe_exception(exc)}"
            ) from exc

    def _per_event(self, value: Any, what: str, n: int, where: str) -> ak.Array:
        try:
            array = ak.Array(value) if not isinstance(value, ak.Array) else value
        except Exception as exc:
            raise PreprocessError(
                f"{what} in {self.path} returned {type(value).__name__}, not an array"
            ) from exc
        if array.ndim == 0 or len(array) != n:
            got = "a scalar" if array.ndim == 0 else f"{len(array)} entries"
            raise PreprocessError(f"{what} in {self.path} returned {got} for {n} events of {where}")
        return array

    def selection(self, events: ak.Array, *, where: str) -> np.ndarray | None:
        """The boolean event mask, or ``None`` without a ``selection`` function."""
        if "selection" not in self.functions:
            return None
        mask = self._per_event(
            self._call("selection", events, where), "selection()", len(events), where
        )
        kind, dtype = _leaf_kind(mask)
        if kind != "flat" or dtype != "bool":
            raise PreprocessError(
                f"selection() in {self.path} must return one boolean per event, got {mask.type}"
            )
        return np.asarray(ak.to_numpy(mask), dtype=bool)

    def new_variables(self, events: ak.Array, *, where: str) -> dict[str, ak.Array]:
        """Derived variables, each with one (flat or jagged) entry per event."""
        if "new_variables" not in self.functions:
            return {}
        result = self._call("new_variables", events, where)
        if not isinstance(result, dict):
            raise PreprocessError(
                f"new_variables() in {self.path} must return a dict of name -> array, "
                f"got {type(result).__name__}"
            )
        return {
            str(name): self._per_event(value, f"new_variables()[{name!r}]", len(events), where)
            for name, value in result.items()
        }

    def label(self, events: ak.Array, *, where: str) -> np.ndarray | None:
        """Per-event labels, or ``None`` without a ``label`` function."""
        if "label" not in self.functions:
            return None
        labels = self._per_event(self._call("label", events, where), "label()", len(events), where)
        try:
            return np.asarray(ak.to_numpy(labels), dtype=np.float64)
        except Exception as exc:
            raise PreprocessError(
                f"label() in {self.path} must return one number per event, got {labels.type}"
            ) from exc

    def apply(
        self, events: ak.Array, *, where: str
    ) -> tuple[ak.Array, np.ndarray | None, np.ndarray | None]:
        """``(events with derived variables, selection mask, labels)`` — all before selecting."""
        derived = self.new_variables(events, where=where)
        if derived:
            clash = sorted(set(derived) & set(events.fields))
            if clash:
                raise PreprocessError(
                    f"new_variables() in {self.path} redefines existing branches {clash}"
                )
            events = ak.zip({**{f: events[f] for f in events.fields}, **derived}, depth_limit=1)
        return events, self.selection(events, where=where), self.label(events, where=where)


def _leaf_kind(array: ak.Array) -> tuple[str, str]:
    from mlaas4hep.transform.vector import describe  # noqa: PLC0415 - avoids an import cycle

    return describe(array)


def load_preprocessing(path: str | Path) -> Preprocessing:
    """Load a preprocessing file by path; errors name the file and the problem."""
    source = Path(path)
    module, sha256 = load_user_module(
        source, what="preprocessing module", prefix="mlaas4hep_preproc"
    )
    loaded = Preprocessing(path=source.resolve(), sha256=sha256, module=module)
    if not loaded.functions:
        raise ConfigError(f"{source} defines none of {', '.join(FUNCTIONS)}")
    return loaded
