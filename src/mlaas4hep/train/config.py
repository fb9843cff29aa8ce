"""Training configuration: MLaaS4HEP's ``params.json`` and a complete YAML/JSON config.

``params.json`` keeps MLaaS4HEP's keys (``nevts``, ``chunk_size``, ``epochs``,
``batch_size``, ``shuffle``, ``branch``, ``selected_branches``,
``exclude_branches``, ``identifier``, ``redirector``, ``verbose``, ``hist``,
``split``); any :class:`TrainConfig` field may appear there too. Keys neither
knows are warned about and listed, not silently dropped. A config file (YAML or
JSON) holds :class:`TrainConfig` fields only: there an unknown key is an error.
The config file overrides ``params.json``; command-line flags override both.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from mlaas4hep.errors import ConfigError
from mlaas4hep.train.split import check_fractions


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run can be told (all with working defaults)."""

    # data
    tree: str | None = None  # params.json "branch"
    nevts: int = -1  # events to use in all, -1 = all
    step_size: int | str = "50 MB"  # events per chunk or a size ("chunk_size")
    branches: str | None = None
    exclude: str | None = None
    identifiers: str | None = None
    redirector: str | None = None
    label_branch: str | None = None  # take labels from this branch
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, validation, test
    # transform (used when no --specs is given)
    layout: str = "flat"
    length: str | int = "max"  # jagged length: max, qQ or a number
    lengths: dict[str, str] = field(default_factory=dict)  # per-branch pattern -> policy
    normalization: str = "standard"
    log: list[str] = field(default_factory=list)  # branches to log1p first
    pad_value: float = 0.0  # models without a mask input see this in padded slots
    scan_workers: int = 1
    # training
    epochs: int = 10
    batch_size: int = 256
    shuffle: bool = True
    balance: str | None = None  # undersample or oversample the classes
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "auto"  # torch: auto, bce, bce_logits, cross_entropy, nll
    patience: int | None = 5  # epochs without improvement before stopping; None: never
    min_delta: float = 0.0
    loader_workers: int = 0  # torch DataLoader worker processes
    cache_mb: int = 2000  # keep train/validation tensors in memory if this is enough; 0: never
    seed: int = 0
    max_train_events: int = -1  # in-memory estimators: cap on the events held
    # output
    plots: bool = True
    verbose: int = 1

    def __post_init__(self) -> None:
        check_fractions(self.split)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.optimizer.lower() not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.patience is not None and self.patience < 1:
            raise ConfigError(
                f"patience must be at least 1 (or null: never stop early), got {self.patience}"
            )
        if self.balance not in {None, "undersample", "oversample"}:
            raise ConfigError(f"balance must be undersample or oversample, got {self.balance!r}")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


OPTIMIZERS = ("adam", "adamw", "sgd")
FIELDS = {f.name for f in fields(TrainConfig)}

# MLaaS4HEP params.json key -> TrainConfig field
LEGACY_KEYS = {
    "nevts": "nevts",
    "chunk_size": "step_size",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "shuffle": "shuffle",
    "branch": "tree",
    "selected_branches": "branches",
    "exclude_branches": "exclude",
    "identifier": "identifiers",
    "redirector": "redirector",
    "verbose": "verbose",
}
# MLaaS4HEP keys with nothing to configure here (accepted silently)
IGNORED_KEYS = {"hist"}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _branch_list(value: Any, key: str) -> str | None:
    """MLaaS4HEP lists branches as a comma string or a list; '' means none."""
    if value in (None, "", []):
        return None
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be a comma-separated string or a list, got {value!r}")


def _read_mapping(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"the {what} {path} is not valid {path.suffix[1:] or 'YAML'}: {exc}"
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the {what} {path} must hold a mapping of keys to values")
    return data


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(FIELDS | set(LEGACY_KEYS)), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def params_overrides(params: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """TrainConfig fields set by a ``params.json`` mapping, and warnings for unknown keys."""
    out: dict[str, Any] = {}
    unknown = []
    for key, value in params.items():
        if key in IGNORED_KEYS:
            continue
        name = LEGACY_KEYS.get(key, key)
        if name not in FIELDS:
            unknown.append(key)
            continue
        if key in {"selected_branches", "exclude_branches", "identifier"}:
            out[name] = _branch_list(value, key)
        else:
            out[name] = None if key == "redirector" and value == "" else value
    warnings = []
    if unknown:
        listed = ", ".join(f"{k!r}{_suggest(k)}" for k in unknown)
        warnings.append(f"{where}: unknown keys ignored: {listed}")
    return out, warnings


def load_config(
    params: Path | None = None,
    config: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[TrainConfig, list[str]]:
    """The configuration from ``params.json``, a config file and explicit overrides.

    Returns the config and warnings to show (unknown ``params.json`` keys).
    """
    values: dict[str, Any] = {}
    warnings: list[str] = []
    if params is not None:
        found, warnings = params_overrides(_read_mapping(params, "params file"), str(params))
        values |= found
    if config is not None:
        document = _read_mapping(config, "config file")
        unknown = [k for k in document if k not in FIELDS]
        if unknown:
            listed = ", ".join(f"{k!r}{_suggest(k)}" for k in unknown)
            raise ConfigError(f"{config}: unknown keys {listed}")
        values |= document
    values |= {k: v for k, v in (overrides or {}).items() if v is not None}
    if "split" in values:
        values["split"] = (
            tuple(values["split"]) if isinstance(values["split"], list) else values["split"]
        )
        if isinstance(values["split"], float | int):
            # MLaaS4HEP's split: the test fraction; validation gets the same share
            test = float(values["split"])
            values["split"] = (1 - 2 * test, test, test)
    _check_types(values)
    return replace(TrainConfig(), **values), warnings


def _check_types(values: dict[str, Any]) -> None:
    """Reject values of the wrong kind with the key's name (JSON/YAML are untyped)."""
    expected: dict[str, tuple[type, ...]] = {
        "nevts": (int,), "epochs": (int,), "batch_size": (int,), "seed": (int,),
        "loader_workers": (int,), "scan_workers": (int,), "cache_mb": (int,), "verbose": (int, bool),
        "learning_rate": (float, int), "weight_decay": (float, int), "pad_value": (float, int),
        "shuffle": (bool,), "plots": (bool,), "step_size": (int, str),
    }  # fmt: skip
    for name, types in expected.items():
        if name not in values:
            continue
        value = values[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            kinds = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{name} must be {kinds}, got {value!r}")
