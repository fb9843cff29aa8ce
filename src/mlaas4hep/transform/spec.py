"""The feature spec: what a model's inputs are and how raw events become tensors.

Written by ``mlaas4hep scan`` as ``features.json``, stored in every model
package and read by the server, so it is a stable, versioned JSON document::

    {"schema": "mlaas4hep.features", "version": 1, "tree": "Events",
     "layout": "flat", "pad_value": null, "branches": [...], "inputs": [...],
     "data_hash": "...", "preprocessing": {...} | null, "images": {...} | null}

``pad_value`` ``null`` means NaN (JSON has no NaN). Per branch: dtype, kind
(flat or jagged), the collection (counter) of jagged branches, the chosen
length and the policy that chose it, length and value statistics measured on
real entries, and the normalisation. Column names of the flat layout are
stable: flat branches in spec order, then the jagged branches collection by
collection (in order of first appearance), each padded to its length as
``Jet_pt_0``, ``Jet_pt_1``, ...
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlaas4hep.errors import ConfigError, DataError

SCHEMA = "mlaas4hep.features"
VERSION = 1
LAYOUTS = ("flat", "grouped")
Kind = Literal["flat", "jagged"]


@dataclass
class ValueStats:
    """Statistics of a branch's real entries (padding never counts).

    ``log_mean`` / ``log_std`` are those of ``log1p(x)``, kept for
    non-negative branches so a log normalisation can be standardised.
    """

    count: int
    min: float
    max: float
    mean: float
    std: float
    quantiles: dict[str, float]
    log_mean: float | None = None
    log_std: float | None = None


@dataclass
class LengthStats:
    """Per-event lengths of a jagged branch: ``counts[k]`` events have length ``k``."""

    counts: list[int]

    @property
    def events(self) -> int:
        return sum(self.counts)

    @property
    def max(self) -> int:
        return max((k for k, n in enumerate(self.counts) if n), default=0)

    @property
    def mean(self) -> float:
        return sum(k * n for k, n in enumerate(self.counts)) / max(1, self.events)

    def quantile(self, q: float) -> int:
        """The smallest length ``L`` with at least a fraction ``q`` of events of length ≤ L."""
        if not 0 <= q <= 1:
            raise ConfigError(f"a length quantile must be within [0, 1], got {q}")
        needed = q * self.events
        running = 0
        for length, n in enumerate(self.counts):
            running += n
            if running >= needed and running > 0:
                return length
        return self.max

    def clipped(self, length: int) -> int:
        """Events with more entries than ``length``."""
        return sum(self.counts[length + 1 :])


@dataclass
class Normalization:
    """``x' = (f(x) - shift) / scale`` with ``f = log1p`` when ``log`` else identity.

    ``method`` records how shift and scale were chosen: ``none`` (0, 1),
    ``minmax`` (min, max - min), ``standard`` (mean, std) or ``robust``
    (median, q75 - q25).
    """

    method: str = "none"
    log: bool = False
    shift: float = 0.0
    scale: float = 1.0


@dataclass
class BranchSpec:
    """One input branch (or derived variable) of the model."""

    name: str
    dtype: str
    kind: Kind
    collection: str | None = None
    length: int = 1
    length_policy: str = "max"
    stats: ValueStats | None = None
    lengths: LengthStats | None = None
    normalization: Normalization = field(default_factory=Normalization)
    derived: bool = False

    @property
    def width(self) -> int:
        """Columns this branch takes in the flat layout."""
        return self.length if self.kind == "jagged" else 1

    def columns(self) -> list[str]:
        """The flat-layout column names of this branch."""
        if self.kind == "flat":
            return [self.name]
        return [f"{self.name}_{i}" for i in range(self.length)]


@dataclass
class InputFile:
    """One file the spec was computed on, identified by content, not by path."""

    url: str
    uuid: str
    entries: int


@dataclass
class FeatureSpec:
    """The versioned description of a model's inputs (``features.json``)."""

    branches: list[BranchSpec]
    tree: str | None = None
    layout: str = "flat"
    pad_value: float = math.nan
    identifiers: list[str] = field(default_factory=list)
    inputs: list[InputFile] = field(default_factory=list)
    data_hash: str = ""
    preprocessing: dict[str, Any] | None = None
    images: dict[str, Any] | None = None
    clip: str = "clip"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.clip not in {"clip", "error"}:
            raise ConfigError(f"clip policy must be 'clip' or 'error', got {self.clip!r}")
        names = [b.name for b in self.branches]
        if len(set(names)) != len(names):
            raise ConfigError("the feature spec names a branch twice")

    # -- structure ----------------------------------------------------------

    @property
    def flat_branches(self) -> list[BranchSpec]:
        return [b for b in self.branches if b.kind == "flat"]

    @property
    def jagged_branches(self) -> list[BranchSpec]:
        return [b for b in self.branches if b.kind == "jagged"]

    def branch(self, name: str) -> BranchSpec:
        """The spec of branch ``name``."""
        for b in self.branches:
            if b.name == name:
                return b
        raise ConfigError(f"branch {name!r} is not in the feature spec")

    def columns(self) -> list[str]:
        """Flat-layout column names: flat branches, then each collection's branches padded."""
        jagged = [b for group in self.collections().values() for b in group]
        return [c for b in [*self.flat_branches, *jagged] for c in b.columns()]

    def collections(self) -> dict[str, list[BranchSpec]]:
        """Jagged branches grouped by collection (branches sharing a counter)."""
        groups: dict[str, list[BranchSpec]] = {}
        for b in self.jagged_branches:
            groups.setdefault(b.collection or b.name, []).append(b)
        return groups

    @property
    def source_branches(self) -> list[str]:
        """Branches to read from files (derived variables are computed)."""
        return [b.name for b in self.branches if not b.derived]

    # -- data identity ------------------------------------------------------

    def check_data(self, data_hash: str, *, allow_other: bool = False) -> str | None:
        """Compare the spec's data hash with ``data_hash`` of the data at hand.

        Returns a warning text when they differ and ``allow_other`` is set;
        raises :class:`DataError` when they differ otherwise.
        """
        if not self.data_hash or self.data_hash == data_hash:
            return None
        message = (
            f"the feature spec was computed on other data (spec hash {self.data_hash[:12]}, "
            f"these inputs {data_hash[:12]})"
        )
        if not allow_other:
            raise DataError(message + "; rescan, or allow it explicitly (--allow-other-data)")
        return message

    # -- JSON ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``pad_value`` NaN as ``null``)."""
        body = asdict(self)
        body["pad_value"] = None if math.isnan(self.pad_value) else self.pad_value
        return {"schema": SCHEMA, "version": VERSION, **body, "columns": self.columns()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "the feature spec") -> FeatureSpec:
        """Read a spec document, checking its schema and version."""
        if data.get("schema") != SCHEMA:
            raise ConfigError(f"{where} is not a mlaas4hep feature spec (schema {SCHEMA!r})")
        version = data.get("version")
        if version != VERSION:
            raise ConfigError(f"{where} has spec version {version}; this release reads {VERSION}")
        try:
            branches = [
                BranchSpec(
                    **{
                        **b,
                        "stats": ValueStats(**b["stats"]) if b.get("stats") else None,
                        "lengths": LengthStats(**b["lengths"]) if b.get("lengths") else None,
                        "normalization": Normalization(**b.get("normalization") or {}),
                    }
                )
                for b in data["branches"]
            ]
            pad = data.get("pad_value")
            return cls(
                branches=branches,
                tree=data.get("tree"),
                layout=data.get("layout", "flat"),
                pad_value=math.nan if pad is None else float(pad),
                identifiers=list(data.get("identifiers", [])),
                inputs=[InputFile(**i) for i in data.get("inputs", [])],
                data_hash=data.get("data_hash", ""),
                preprocessing=data.get("preprocessing"),
                images=data.get("images"),
                clip=data.get("clip", "clip"),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{where} is malformed: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        """Write ``features.json`` (atomically)."""
        target = Path(path)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        temporary.replace(target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        """Read ``features.json``."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"feature spec not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, where=str(path))
