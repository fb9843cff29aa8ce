"""The training workflow behind ``mlaas4hep train``: ROOT files to an exported model package.

Steps: resolve the files and labels; split every file's entries into train,
validation and test ranges; scan the train split for the feature spec (unless
one is given); build the user's model; train it (PyTorch loop, Keras ``fit``,
scikit-learn / XGBoost); evaluate every split and a cut-based baseline; write
``metrics.json`` and plots; export the model package and load it back.

Output directory (``--fout``): ``model/`` (the model package, what the server
loads), ``metrics.json``, ``plots/`` and ``checkpoints/``.

Under ``torchrun`` each rank trains on its own shard; rank 0 scans (the spec is
broadcast), evaluates and exports.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.train.config import TrainConfig
from mlaas4hep.train.loaders import EventBatches, NumpyBatch, TorchEvents, rank_and_world
from mlaas4hep.train.metrics import (
    SplitMetrics,
    TrainingHistory,
    evaluate,
    roc_auc,
    roc_curve,
    write_metrics,
)
from mlaas4hep.train.progress import Progress
from mlaas4hep.train.split import SPLITS, split_sources
from mlaas4hep.train.usermodel import UserModel, build_user_model
from mlaas4hep.transform.scan import ScanOptions, identify_inputs, scan
from mlaas4hep.transform.spec import FeatureSpec

EVALUATED_TRAIN_EVENTS = 100_000  # the train split's metrics use at most this many events


@dataclass
class TrainResult:
    """What a training run produced."""

    out: Path
    package: Path
    framework: str
    metrics: dict[str, Any]
    splits: dict[str, SplitMetrics]
    baseline: dict[str, Any]
    history: TrainingHistory
    warnings: list[str] = field(default_factory=list)


@dataclass
class Predictions:
    """Labels, probabilities and weights of one split, plus the first batch (for export)."""

    labels: np.ndarray
    probabilities: np.ndarray
    weights: np.ndarray
    flat: np.ndarray  # the flat branches' columns, for the cut-based baseline
    first: NumpyBatch


def _gather(predictions: Iterator[tuple[NumpyBatch, np.ndarray]], flat_width: int) -> Predictions:
    labels, probabilities, weights, flat = [], [], [], []
    first: NumpyBatch | None = None
    for batch, output in predictions:
        first = first or batch
        labels.append(batch["label"])
        probabilities.append(output.reshape(len(output), -1))
        weights.append(batch["weight"])
        flat.append(batch["x"][:, :flat_width])
    if first is None:
        raise DataError("a split to evaluate has no events")
    return Predictions(
        labels=np.concatenate(labels),
        probabilities=np.concatenate(probabilities),
        weights=np.concatenate(weights),
        flat=np.concatenate(flat),
        first=first,
    )


def cut_baseline(test: Predictions, spec: FeatureSpec) -> dict[str, Any]:
    """The best single cut on one flat branch: its ROC AUC on the test split.

    A cut ``value > threshold`` (or ``<``) on one event-level variable is the
    simplest selection an analysis would try; its ROC curve is that variable's.
    """
    best: dict[str, Any] = {"feature": None, "auc": math.nan}
    for i, branch in enumerate(spec.flat_branches):
        values = test.flat[:, i]
        if len(np.unique(values)) < 2:
            continue
        auc = roc_auc(test.labels, values, test.weights, where="the test split")
        sign = 1.0 if auc >= 0.5 else -1.0
        if math.isnan(best["auc"]) or max(auc, 1 - auc) > best["auc"]:
            best = {"feature": branch.name, "auc": max(auc, 1 - auc), "sign": sign}
    return best


def _init_distributed() -> bool:
    """Join the process group when started by ``torchrun``; True when this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return False
    dist.init_process_group("gloo")
    return True


def _broadcast(value: Any) -> Any:
    if rank_and_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _make_spec(
    train: Sequence[Source], config: TrainConfig, specs: Path | None, preproc: Path | None
) -> tuple[FeatureSpec, list[str]]:
    warnings = []
    if specs is not None:
        spec = FeatureSpec.load(specs)
    else:
        exclude = ",".join(p for p in (config.exclude, config.label_branch) if p) or None
        spec, report = scan(
            train,
            BranchSelection(
                include=config.branches, exclude=exclude, identifiers=config.identifiers
            ),
            tree=config.tree,
            preprocessing=preproc,
            options=ScanOptions(
                length=config.length,
                lengths=config.lengths,
                normalization=config.normalization,
                log=config.log,
                pad_value=config.pad_value,
                layout=config.layout,
            ),
            step_size=config.step_size,
            workers=config.scan_workers,
            seed=config.seed,
        )
        warnings += [
            f"{name}: {n:,} events clipped to length {spec.collections()[name][0].length}"
            for name, n in report.clipped.items()
            if n
        ]
    if math.isnan(spec.pad_value):
        # models without a mask input need numbers in the padded slots; the package records it
        spec = replace(spec, pad_value=0.0)
        warnings.append("the spec pads with NaN; training (and the package) pad with 0")
    if not spec.columns():
        raise ConfigError("the feature spec has no feature columns")
    return spec, warnings


def train(
    files: str | Sequence[str],
    labels: str | Sequence[float | str] | None,
    model: str | Path,
    *,
    config: TrainConfig | None = None,
    out: str | Path = "mlaas4hep-model",
    specs: str | Path | None = None,
    preproc: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[int, int | None], Any] | None = None,
) -> TrainResult | None:
    """Train the model of ``model`` (a model.py path) on ``files``; export the package.

    ``progress(epochs, events_per_epoch)`` returns a context manager that is also
    the training progress callback (see :class:`~mlaas4hep.train.progress.TrainingProgress`).
    Returns ``None`` on ranks other than 0 under ``torchrun``.
    """
    config = config or TrainConfig()
    out = Path(out)
    created_group = _init_distributed()
    try:
        return _train(files, labels, Path(model), config, out, specs, preproc, resume, progress)
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(
    files: str | Sequence[str], labels: str | Sequence[float | str] | None, model_path: Path,
    config: TrainConfig, out: Path, specs: str | Path | None, preproc: str | Path | None,
    resume: bool, progress: Callable[[int, int | None], Any] | None,
) -> TrainResult | None:  # fmt: skip
    rank, world = rank_and_world()
    if labels is None and config.label_branch is None and preproc is None:
        raise ConfigError("no labels: give --labels (labels.txt or one per input) or label_branch")
    sources = resolve_sources(files, labels=labels, redirector=config.redirector)
    limited, _ = identify_inputs(sources, config.tree, config.nevts)
    splits = split_sources(limited, config.split)
    if not splits["train"]:
        raise DataError("the training split has no events")
    spec, warnings = _broadcast(
        _make_spec(
            splits["train"],
            config,
            Path(specs) if specs else None,
            Path(preproc) if preproc else None,
        )
        if rank == 0
        else None
    )
    _seed_everything(config.seed)  # the model's initial weights are drawn in model()
    user = build_user_model(model_path, spec)
    if world > 1 and user.framework != "torch":
        raise ConfigError(f"torchrun trains torch models; this model is {user.framework}")
    preprocessing = str(preproc) if preproc else None
    stream = {"step_size": config.step_size, "shuffle": config.shuffle, "balance": config.balance}

    def events(
        split: str, cls: type[EventBatches] = EventBatches, **options: Any
    ) -> EventBatches | None:
        if not splits[split]:
            return None
        return cls(
            splits[split], spec, batch_size=config.batch_size, seed=config.seed,
            preprocessing=preprocessing, label_branch=config.label_branch,
            stream_options={"step_size": config.step_size, "shuffle": False, **options},
        )  # fmt: skip

    checkpoints = out / "checkpoints"
    loader_class = TorchEvents if user.framework == "torch" else EventBatches
    train_events = events("train", loader_class, **stream)
    validation = events("validation", loader_class)
    assert train_events is not None
    # tensors: features and mask in float32, plus label, weight and identifiers
    megabytes = (len(spec.columns()) * 8 + 64) * sum(_sizes(limited)) / world / 1e6
    for loader in (train_events, validation):
        if loader is not None:
            loader.cache = megabytes <= config.cache_mb
    reporter = (
        progress(config.epochs, math.ceil(train_events.events() / world))
        if progress and rank == 0
        else None
    )
    try:
        with reporter if reporter is not None else nullcontext():
            fitted, history = _fit(
                user, train_events, validation, config, checkpoints, resume, reporter
            )
        if rank != 0:
            return None
        # the validation loader is evaluated as it is: its tensors may be cached
        evaluated = {
            "train": events("train", nevts=_evaluated_events(splits["train"])),
            "validation": validation,
            "test": events("test"),
        }
        return _finish(user, fitted, history, spec, evaluated, config, out, warnings, preprocessing)
    finally:
        train_events.close()
        if validation is not None:
            validation.close()


def _seed_everything(seed: int) -> None:
    """Seed the generators a model file may draw from: Python, numpy, torch (and so Keras)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - user code may draw from the global generator
    torch.manual_seed(seed)


def _fit(
    user: UserModel, train: EventBatches, validation: EventBatches | None, config: TrainConfig,
    checkpoints: Path, resume: bool, progress: Progress | None,
) -> tuple[Any, TrainingHistory]:  # fmt: skip
    where = str(user.path)
    if user.framework == "torch":
        from mlaas4hep.train.torch_trainer import fit_torch

        assert isinstance(train, TorchEvents)
        assert validation is None or isinstance(validation, TorchEvents)
        done = fit_torch(
            user.model, train, validation, config, checkpoints=checkpoints,
            resume=resume, progress=progress, where=where,
        )  # fmt: skip
        return done.model, done.history
    if resume:
        raise ConfigError(f"--resume continues torch training; this model is {user.framework}")
    if user.framework == "keras":
        from mlaas4hep.train.keras_trainer import fit_keras

        check_keras_input(user.model, len(train.spec.columns()), where)
        history = fit_keras(
            user.model, train, validation, config, checkpoints=checkpoints, progress=progress
        )
        return user.model, history
    from mlaas4hep.train.estimator_trainer import fit_estimator

    history = fit_estimator(
        user.model, user.framework, train, validation, config, progress=progress
    )
    return user.model, history


def check_keras_input(model: Any, width: int, where: str) -> None:
    """A built Keras model must take ``width`` columns."""
    shape = getattr(model, "input_shape", None)
    if shape is not None and shape[-1] not in (None, width):
        raise ConfigError(
            f"the model from {where} takes {shape[-1]} inputs, the data has {width} columns "
            "(from features.json)"
        )


def _predictions(
    framework: str, model: Any, events: EventBatches
) -> Iterator[tuple[NumpyBatch, np.ndarray]]:
    if framework == "torch":
        from mlaas4hep.train.torch_trainer import predict_torch

        return predict_torch(model, events)
    if framework == "keras":
        from mlaas4hep.train.keras_trainer import predict_keras

        return predict_keras(model, events)
    from mlaas4hep.train.estimator_trainer import predict_estimator

    return predict_estimator(model, events)


def _evaluated_events(train: Sequence[Source]) -> int:
    """``nevts`` for the train split's metrics: all of it, or a cap."""
    return EVALUATED_TRAIN_EVENTS if sum(_sizes(train)) > EVALUATED_TRAIN_EVENTS else -1


def _finish(
    user: UserModel, model: Any, history: TrainingHistory, spec: FeatureSpec,
    evaluated: dict[str, EventBatches | None], config: TrainConfig, out: Path,
    warnings: list[str], preprocessing: str | None,
) -> TrainResult:  # fmt: skip
    from mlaas4hep.train.plots import write_plots

    flat_width = len(spec.flat_branches)
    predicted: dict[str, Predictions] = {}
    for split in SPLITS:
        batches = evaluated[split]
        if batches is not None:
            with batches:
                predicted[split] = _gather(_predictions(user.framework, model, batches), flat_width)
    metrics = {
        split: evaluate(p.labels, p.probabilities, p.weights, where=f"the {split} split")
        for split, p in predicted.items()
    }
    if history.val_loss and "validation" in metrics:
        metrics["validation"].loss = history.val_loss[history.best_epoch or -1]
    if history.train_loss and "train" in metrics:
        metrics["train"].loss = history.train_loss[history.best_epoch or -1]
    final = predicted.get("test") or predicted.get("validation") or predicted["train"]
    baseline = cut_baseline(final, spec)
    out.mkdir(parents=True, exist_ok=True)
    summary = write_metrics(
        out / "metrics.json", history=history, splits=metrics,
        extra={"baseline": baseline, "framework": user.framework, "config": config.to_dict()},
    )  # fmt: skip
    plots: list[Path] = []
    if config.plots:
        curve = None
        if baseline["feature"] is not None:
            column = spec.flat_branches.index(spec.branch(baseline["feature"]))
            fpr, tpr, _ = roc_curve(
                final.labels, baseline["sign"] * final.flat[:, column], final.weights
            )
            curve = (fpr, tpr, baseline["auc"])
        plots = write_plots(
            out / "plots", labels=final.labels, probabilities=final.probabilities,
            weights=final.weights, history=history if history.train_loss else None,
            baseline=curve, baseline_name=f"cut on {baseline['feature']}", name=user.path.stem,
        )  # fmt: skip
    # the package carries the module the spec was made with, to score raw events as here
    if preprocessing is None and spec.preprocessing is not None:
        preprocessing = str(spec.preprocessing["path"])
    package = _export(user, model, spec, final.first, config, out, summary, plots, preprocessing)
    return TrainResult(
        out=out, package=package, framework=user.framework, metrics=summary, splits=metrics,
        baseline=baseline, history=history, warnings=warnings,
    )  # fmt: skip


def _sizes(sources: Sequence[Source]) -> list[int]:
    return [(s.entry_stop or 0) - s.entry_start for s in sources]


def class_names(classes: int) -> list[str]:
    """Output labels: background / signal for one or two outputs, else the class numbers."""
    return ["background", "signal"] if classes <= 2 else [str(i) for i in range(classes)]


def _export(
    user: UserModel, model: Any, spec: FeatureSpec, batch: NumpyBatch, config: TrainConfig,
    out: Path, metrics: dict[str, Any], plots: list[Path], preprocessing: str | None,
) -> Path:  # fmt: skip
    from mlaas4hep.train import export
    from mlaas4hep.train.package import load_package, write_package

    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        if user.framework == "torch":
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
            example = {
                n: t.numpy()
                for n, t in zip(model.call.input_names, model.call.inputs(tensors), strict=True)
            }
            exported = export.export_torch(model, example, staging)
        elif user.framework == "keras":
            exported = export.export_keras(model, {"x": batch["x"]}, staging)
        elif user.framework == "xgboost":
            exported = export.export_xgboost(model, {"x": batch["x"]}, staging)
        else:
            exported = export.export_sklearn(model, {"x": batch["x"]}, staging)
        classes = int(exported.outputs[0].shape[-1])
        package = write_package(
            out / "model", exported, spec=spec, labels=class_names(classes), name=user.path.stem,
            params={"config": config.to_dict(), "model_file": user.path.name, "model_sha256": user.sha256},
            metrics=metrics, plots=plots, preprocessing=preprocessing,
        )  # fmt: skip
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    load_package(package)  # the package must load back
    return package
