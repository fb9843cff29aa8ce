"""Keras 3 training: ``model.fit`` on the streaming loader, early stopping, checkpoints.

A model compiled by the user (as MLaaS4HEP's examples do) keeps its optimizer and
loss; an uncompiled one gets the configured optimizer and a loss chosen from its
output width (binary or sparse categorical cross-entropy). A categorical
cross-entropy gets one-hot labels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep.train.config import TrainConfig
from mlaas4hep.train.loaders import EventBatches, NumpyBatch
from mlaas4hep.train.metrics import TrainingHistory
from mlaas4hep.train.progress import Progress

os.environ.setdefault("KERAS_BACKEND", "torch")


def _loss_name(model: Any) -> str:
    loss = getattr(model, "loss", None)
    if isinstance(loss, str):
        return loss
    return str(getattr(loss, "name", type(loss).__name__)).lower()


def _compile_if_needed(model: Any, config: TrainConfig, classes: int) -> None:
    import keras

    if getattr(model, "compiled", False) and model.optimizer is not None:
        return
    optimizers = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
    }
    loss = "binary_crossentropy" if classes == 1 else "sparse_categorical_crossentropy"
    model.compile(
        optimizer=optimizers[config.optimizer.lower()](learning_rate=config.learning_rate),
        loss=loss,
    )


def _progress_callback(progress: Progress) -> Any:
    import keras

    class Report(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.batch_size = 0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002
            progress(f"start:{epoch}", 0, {})

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:  # noqa: ARG002
            progress("batch", self.batch_size, {"loss": float((logs or {}).get("loss", math.nan))})

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002
            logs = logs or {}
            progress(
                "end",
                0,
                {
                    "loss": float(logs.get("loss", math.nan)),
                    "val_loss": float(logs.get("val_loss", math.nan)),
                },
            )

    return Report()


def fit_keras(
    model: Any,
    train: EventBatches,
    validation: EventBatches | None,
    config: TrainConfig,
    *,
    checkpoints: Path | None = None,
    progress: Progress | None = None,
) -> TrainingHistory:
    """Train a Keras model with ``fit``; the best weights (validation loss) are kept."""
    import keras

    from mlaas4hep.train.keras_events import KerasEvents

    keras.utils.set_random_seed(config.seed)
    classes = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else 1
    _compile_if_needed(model, config, classes)
    one_hot = (
        classes
        if "categorical_crossentropy" in _loss_name(model) and "sparse" not in _loss_name(model)
        else None
    )
    callbacks: list[Any] = []
    monitor = "val_loss" if validation is not None else "loss"
    if config.patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                patience=config.patience,
                min_delta=config.min_delta,
                restore_best_weights=True,
            )
        )
    if checkpoints is not None:
        checkpoints.mkdir(parents=True, exist_ok=True)
        callbacks.append(keras.callbacks.ModelCheckpoint(str(checkpoints / "last.keras")))
    reporter = None
    if progress is not None:
        reporter = _progress_callback(progress)
        reporter.batch_size = train.batch_size
        callbacks.append(reporter)
    fitted = model.fit(
        KerasEvents(train, classes=one_hot),
        validation_data=KerasEvents(validation, classes=one_hot)
        if validation is not None
        else None,
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=0,
        shuffle=False,  # the loader shuffles; Keras must read it in order
    )
    logged = fitted.history
    history = TrainingHistory(
        train_loss=[float(v) for v in logged.get("loss", [])],
        val_loss=[float(v) for v in logged.get("val_loss", [])],
    )
    curve = history.val_loss or history.train_loss
    history.best_epoch = int(np.argmin(curve)) if curve else None
    history.stopped_early = len(history.train_loss) < config.epochs
    return history


def predict_keras(model: Any, events: EventBatches) -> Iterator[tuple[NumpyBatch, np.ndarray]]:
    """``(batch, probabilities)`` for every batch of ``events``."""
    for batch in events.iter_shard():  # numpy, from any loader class
        output = np.asarray(model.predict_on_batch(batch["x"]))
        yield batch, output.reshape(len(output), -1)
