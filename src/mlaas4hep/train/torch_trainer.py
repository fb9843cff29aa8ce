"""The PyTorch training loop: loss from the output, Adam, early stopping, checkpoints, DDP.

A user module is called the way it asks to be (:class:`ModelCall`): ``model(x)``;
``model(x, mask)`` when its ``forward`` takes two tensors; ``model(stacked)`` with
``x`` and ``mask`` stacked as ``[2, B, F]`` when it holds a
:class:`~mlaas4hep.nn.JaggedArrayLinear` (MLaaS4HEP's convention); and
``model(features, mask)`` with dicts per collection for the grouped layout.

The loss follows the output width and the last layer (``loss="auto"``): one output
→ binary cross-entropy (on logits, or on probabilities after a final ``Sigmoid``),
several → cross-entropy (on logits, after a ``Softmax`` or a ``LogSoftmax``).
:class:`ProbabilityModel` wraps the trained module for export: it takes the named
input tensors positionally and returns probabilities ``[B, K]``.

Under ``torchrun`` every rank trains on its own shard of each epoch
(:class:`~mlaas4hep.train.loaders.TorchEvents`), gradients are averaged by
``DistributedDataParallel``, uneven shard lengths are handled by ``Join``, and the
validation loss is reduced over all ranks, so every rank takes the same
early-stopping decision.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.nn import EVENT_KEY, JaggedArrayLinear
from mlaas4hep.train.config import TrainConfig
from mlaas4hep.train.loaders import EventBatches, NumpyBatch, TorchEvents, rank_and_world
from mlaas4hep.train.metrics import TrainingHistory, class_scores, roc_auc
from mlaas4hep.train.progress import Progress

TensorBatch = dict[str, torch.Tensor]
LOSSES = ("auto", "bce", "bce_logits", "cross_entropy", "nll")


@dataclass
class ModelCall:
    """How a module is fed: which batch tensors, in what order and shape."""

    mode: str  # x | x_mask | stacked | grouped
    input_names: list[str]
    collections: list[str] = field(default_factory=list)

    @classmethod
    def for_model(cls, model: nn.Module, layout: str, collections: Sequence[str]) -> ModelCall:
        """The calling convention ``model`` asks for."""
        if layout == "grouped":
            names = [f"x_{c}" for c in collections] + [f"mask_{c}" for c in collections]
            return cls("grouped", ["event", *names], list(collections))
        if any(isinstance(m, JaggedArrayLinear) for m in model.modules()):
            return cls("stacked", ["x", "mask"])
        parameters = [
            p
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        return cls("x_mask", ["x", "mask"]) if len(parameters) >= 2 else cls("x", ["x"])

    def inputs(self, batch: TensorBatch) -> list[torch.Tensor]:
        """The batch's input tensors in :attr:`input_names` order."""
        names = ["x" if n == "event" else n for n in self.input_names]
        return [batch[n] for n in names]

    def __call__(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.mode == "x":
            return model(inputs[0])  # type: ignore[no-any-return]
        if self.mode == "x_mask":
            return model(inputs[0], inputs[1])  # type: ignore[no-any-return]
        if self.mode == "stacked":
            return model(torch.stack([inputs[0], inputs[1]]))  # type: ignore[no-any-return]
        n = len(self.collections)
        features = {EVENT_KEY: inputs[0]} | dict(
            zip(self.collections, inputs[1 : 1 + n], strict=True)
        )
        masks = dict(zip(self.collections, inputs[1 + n :], strict=True))
        return model(features, masks)  # type: ignore[no-any-return]


@dataclass
class Objective:
    """The loss of a model's raw output, and how that output becomes probabilities."""

    name: str
    classes: int

    def loss(self, output: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Sample-weighted mean loss of a batch."""
        if self.classes == 1:
            target = label.to(output.dtype).reshape(output.shape)
            function = (
                nn.functional.binary_cross_entropy_with_logits
                if self.name == "bce_logits"
                else nn.functional.binary_cross_entropy
            )
            per_event = function(output, target, reduction="none").reshape(len(label))
        elif self.name == "cross_entropy":
            per_event = nn.functional.cross_entropy(output, label.long(), reduction="none")
        else:  # nll: log-probabilities, or probabilities after a Softmax
            logp = output if self.name == "nll" else torch.log(output.clamp_min(1e-12))
            per_event = nn.functional.nll_loss(logp, label.long(), reduction="none")
        weight = weight.to(per_event.dtype)
        return (per_event * weight).sum() / weight.sum().clamp_min(1e-12)

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` probabilities from the raw output."""
        output = output.reshape(output.shape[0], -1)
        if self.name == "bce_logits":
            return torch.sigmoid(output)
        if self.name == "cross_entropy":
            return torch.softmax(output, dim=1)
        if self.name == "nll" and self.classes > 1:
            return torch.exp(output)
        return output


def _last_module(model: nn.Module) -> nn.Module | None:
    children = list(model.children())
    while children and isinstance(children[-1], nn.Sequential):
        children = list(children[-1].children())
    return children[-1] if children else None


def choose_objective(model: nn.Module, output: torch.Tensor, requested: str) -> Objective:
    """The loss for ``model`` given one output (``requested`` or chosen by ``"auto"``)."""
    if requested not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {requested!r}")
    classes = int(output.reshape(len(output), -1).shape[1])
    if requested != "auto":
        if (classes == 1) != requested.startswith("bce"):
            raise ConfigError(f"loss {requested!r} does not fit a model with {classes} outputs")
        return Objective(requested, classes)
    last = _last_module(model)
    if classes == 1:
        return Objective("bce" if isinstance(last, nn.Sigmoid) else "bce_logits", 1)
    if isinstance(last, nn.Softmax | nn.LogSoftmax):
        return Objective("nll" if isinstance(last, nn.LogSoftmax) else "nll_softmax", classes)
    return Objective("cross_entropy", classes)


class ProbabilityModel(nn.Module):
    """The trained module as exported: named inputs in, probabilities ``[B, K]`` out.

    A single-output binary model gets two columns (background, signal), so that
    every model's output columns match its labels.
    """

    def __init__(self, model: nn.Module, call: ModelCall, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.call = call
        self.objective = objective

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        probabilities = self.objective.probabilities(self.call(self.model, inputs))
        if self.objective.classes == 1:  # one column per label: background, signal
            probabilities = torch.cat([1 - probabilities, probabilities], dim=1)
        return probabilities


def check_model_input(
    model: nn.Module, call: ModelCall, batch: TensorBatch, where: str
) -> torch.Tensor:
    """One forward pass on a real batch; a shape mismatch becomes a clear error."""
    shapes = ", ".join(
        f"{n} {list(t.shape)}" for n, t in zip(call.input_names, call.inputs(batch), strict=True)
    )
    output: Any  # whatever the user's module returns
    try:
        with torch.no_grad():
            output = call(model, call.inputs(batch))
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"the model from {where} does not accept the data ({shapes}; the sizes come "
            f"from features.json): {str(exc).splitlines()[0]}"
        ) from exc
    output = output if isinstance(output, torch.Tensor) else torch.empty(0)
    if output.ndim not in (1, 2) or len(output) != len(batch["label"]):
        raise ConfigError(
            f"the model from {where} must return one row of outputs per event, got "
            f"{getattr(output, 'shape', type(output).__name__)} for {len(batch['label'])} events"
        )
    return output  # type: ignore[no-any-return]


def check_labels(label: torch.Tensor, classes: int) -> None:
    """Labels must be class indices the output can express."""
    values = torch.unique(label)
    allowed = 2 if classes == 1 else classes
    bad = values[(values < 0) | (values >= allowed) | (values != values.round())]
    if len(bad):
        raise DataError(
            f"labels must be class indices 0..{allowed - 1} for a model with {classes} "
            f"output(s); found {bad.tolist()[:5]}"
        )


def _all_reduce(values: list[float]) -> list[float]:
    if rank_and_world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    optimizer: torch.optim.Optimizer = kind[config.optimizer.lower()](
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    return optimizer


@dataclass
class TorchTraining:
    """The outcome of :func:`fit_torch`: the best model, ready for export, and its history."""

    model: ProbabilityModel
    history: TrainingHistory


def _loader(dataset: TorchEvents, workers: int) -> DataLoader[TensorBatch]:
    # Persistent workers keep their files open from one epoch to the next.
    return DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0)


def fit_torch(
    model: nn.Module,
    train: TorchEvents,
    validation: TorchEvents | None,
    config: TrainConfig,
    *,
    checkpoints: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    where: str = "the model file",
) -> TorchTraining:
    """Train ``model`` on ``train``; early-stop on the ``validation`` loss; keep the best."""
    torch.manual_seed(config.seed)
    rank, world = rank_and_world()
    first = next(iter(_loader(train, 0)), None)
    if first is None:
        raise DataError("the training split has no events")
    collections = [k[2:] for k in first if k.startswith("x_")]
    call = ModelCall.for_model(model, train.spec.layout, collections)
    objective = choose_objective(model, check_model_input(model, call, first, where), config.loss)
    optimizer = _optimizer(model, config)
    history = TrainingHistory()
    best_loss, best_state, start = float("inf"), copy.deepcopy(model.state_dict()), 0
    if resume:
        state = _load_checkpoint(checkpoints, model, optimizer)
        history, best_loss, best_state, start = (
            state["history"], state["best_loss"], state["best_state"], state["epoch"] + 1,
        )  # fmt: skip
    trained: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    waited = 0
    train.set_epoch(start)  # persistent loader workers count their epochs from here
    train_loader = _loader(train, config.loader_workers)
    validation_loader = (
        _loader(validation, config.loader_workers) if validation is not None else None
    )
    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        train.set_epoch(epoch)
        model.train()
        if progress:
            progress(f"start:{epoch}", 0, {})
        totals = _train_epoch(trained, call, objective, optimizer, train_loader, progress)
        loss_sum, weight_sum, events = _all_reduce(totals)
        seconds = time.perf_counter() - began
        history.train_loss.append(loss_sum / max(weight_sum, 1e-12))
        history.epoch_seconds.append(seconds)
        history.events_per_second.append(events / max(seconds, 1e-9))
        if validation_loader is not None:
            val_loss, val_auc = evaluate_loss(model, call, objective, validation_loader)
            history.val_loss.append(val_loss)
            history.val_auc.append(val_auc)
        monitored = history.val_loss[-1] if history.val_loss else history.train_loss[-1]
        if monitored < best_loss - config.min_delta:
            best_loss, best_state, waited = monitored, copy.deepcopy(model.state_dict()), 0
            history.best_epoch = epoch
        else:
            waited += 1
        if progress:
            progress(
                "end",
                0,
                {
                    "loss": history.train_loss[-1],
                    "val_loss": history.val_loss[-1] if history.val_loss else float("nan"),
                },
            )
        if checkpoints is not None and rank == 0:
            _save_checkpoint(checkpoints, model, optimizer, epoch, history, best_loss, best_state)
        if config.patience is not None and waited >= config.patience:
            history.stopped_early = True
            break
    model.load_state_dict(best_state)
    model.eval()
    return TorchTraining(ProbabilityModel(model, call, objective).eval(), history)


def _train_epoch(
    model: nn.Module,
    call: ModelCall,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[TensorBatch],
    progress: Progress | None,
) -> list[float]:
    loss_sum = weight_sum = events = 0.0
    joined = (
        torch.distributed.algorithms.join.Join([model])
        if isinstance(model, nn.parallel.DistributedDataParallel)
        else nullcontext()
    )
    with joined:
        for batch in loader:
            check_labels(batch["label"], objective.classes)
            optimizer.zero_grad()
            loss = objective.loss(call(model, call.inputs(batch)), batch["label"], batch["weight"])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            weight = float(batch["weight"].sum())
            loss_sum += loss.item() * weight
            weight_sum += weight
            events += len(batch["label"])
            if progress:
                progress("batch", len(batch["label"]), {"loss": loss_sum / max(weight_sum, 1e-12)})
    return [loss_sum, weight_sum, events]


def evaluate_loss(
    model: nn.Module, call: ModelCall, objective: Objective, loader: DataLoader[TensorBatch]
) -> tuple[float, float]:
    """Weighted mean loss and ROC AUC over all ranks' shards of the ``loader``'s dataset."""
    model.eval()
    loss_sum = weight_sum = 0.0
    labels, scores, weights = [], [], []
    with torch.no_grad():
        for batch in loader:
            output = call(model, call.inputs(batch))
            weight = float(batch["weight"].sum())
            loss_sum += float(objective.loss(output, batch["label"], batch["weight"])) * weight
            weight_sum += weight
            labels.append(batch["label"].numpy())
            scores.append(class_scores(objective.probabilities(output).numpy()))
            weights.append(batch["weight"].numpy())
    model.train()
    loss_sum, weight_sum = _all_reduce([loss_sum, weight_sum])
    parts = (
        [(np.concatenate(labels), np.concatenate(scores), np.concatenate(weights))]
        if labels
        else []
    )
    if rank_and_world()[1] > 1:
        gathered: list[Any] = [None] * rank_and_world()[1]
        dist.all_gather_object(gathered, parts)
        parts = [p for g in gathered for p in g]
    label, score, event_weight = (np.concatenate([p[i] for p in parts]) for i in range(3))
    two_classes = len(np.unique(label)) == 2
    auc = roc_auc(label, score, event_weight) if two_classes else float("nan")
    return loss_sum / max(weight_sum, 1e-12), auc


def predict_torch(
    model: ProbabilityModel, events: EventBatches
) -> Iterator[tuple[NumpyBatch, np.ndarray]]:
    """``(batch, probabilities)`` for every batch of ``events`` (one process, in order)."""
    model.eval()
    with torch.no_grad():
        for batch in events.iter_shard():  # numpy, from any loader class
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
            yield batch, model(*model.call.inputs(tensors)).numpy()


def _save_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
    history: TrainingHistory, best_loss: float, best_state: dict[str, Any],
) -> None:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
        "history": history, "best_loss": best_loss, "best_state": best_state,
    }  # fmt: skip
    partial = folder / "last.pt.partial"
    torch.save(state, partial)
    partial.replace(folder / "last.pt")  # a crash mid-write never leaves a broken checkpoint


def _load_checkpoint(
    folder: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    path = (folder or Path()) / "last.pt"
    if folder is None or not path.is_file():
        raise ConfigError(f"nothing to resume: no checkpoint at {path}")
    state: dict[str, Any] = torch.load(path, weights_only=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ConfigError(
            f"the checkpoint {path} does not fit this model: {str(exc).splitlines()[0]}"
        ) from exc
    optimizer.load_state_dict(state["optimizer"])
    return state
