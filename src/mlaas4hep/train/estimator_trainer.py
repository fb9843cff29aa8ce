"""scikit-learn and XGBoost: fitted in memory, or chunk by chunk with ``partial_fit``.

Estimators with ``partial_fit`` (``SGDClassifier``, ``MLPClassifier``, ...) learn
batch by batch over the epochs, so the data never has to fit in memory; the
others (``XGBClassifier``, gradient boosting, forests) get the training split as
one array, capped by ``max_train_events``. XGBoost gets the validation split as
its evaluation set, and its log-loss curves become the history.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.train.config import TrainConfig
from mlaas4hep.train.loaders import EventBatches, NumpyBatch
from mlaas4hep.train.metrics import TrainingHistory
from mlaas4hep.train.progress import Progress


def collect(events: EventBatches, limit: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, label, weight)`` of a split in memory (at most ``limit`` events)."""
    xs, labels, weights, count = [], [], [], 0
    for batch in events:
        xs.append(batch["x"])
        labels.append(batch["label"])
        weights.append(batch["weight"])
        count += len(batch["label"])
        if 0 < limit <= count:
            break
    if not xs:
        raise DataError("the training split has no events")
    x, label, weight = (np.concatenate(a) for a in (xs, labels, weights))
    if limit > 0:
        x, label, weight = x[:limit], label[:limit], weight[:limit]
    return x, label.astype(np.int64), weight


def fit_estimator(
    model: Any,
    framework: str,
    train: EventBatches,
    validation: EventBatches | None,
    config: TrainConfig,
    *,
    progress: Progress | None = None,
) -> TrainingHistory:
    """Fit a scikit-learn or XGBoost classifier on ``train``."""
    if not hasattr(model, "predict_proba"):
        raise ConfigError(
            f"the {framework} model {type(model).__name__} has no predict_proba; use a classifier"
        )
    history = TrainingHistory()
    if framework == "sklearn" and hasattr(model, "partial_fit"):
        classes = np.arange(2)
        for epoch in range(config.epochs):
            train.set_epoch(epoch)
            if progress:
                progress(f"start:{epoch}", 0, {})
            for batch in train:
                model.partial_fit(
                    batch["x"],
                    batch["label"].astype(np.int64),
                    classes=classes,
                    sample_weight=batch["weight"],
                )
                if progress:
                    progress("batch", len(batch["label"]), {})
            if progress:
                progress("end", 0, {})
        return history
    x, label, weight = collect(train, config.max_train_events)
    if progress:
        progress("start:0", 0, {})
    if framework == "xgboost" and validation is not None:
        xv, yv, wv = collect(validation, config.max_train_events)
        model.fit(
            x,
            label,
            sample_weight=weight,
            eval_set=[(x, label), (xv, yv)],
            sample_weight_eval_set=[weight, wv],
            verbose=False,
        )
        curves = model.evals_result()
        history.train_loss = [float(v) for v in next(iter(curves["validation_0"].values()))]
        history.val_loss = [float(v) for v in next(iter(curves["validation_1"].values()))]
        history.best_epoch = int(np.argmin(history.val_loss))
    else:
        model.fit(x, label, sample_weight=weight)
    if progress:
        progress("batch", len(label), {})
        progress("end", 0, {})
    return history


def predict_estimator(model: Any, events: EventBatches) -> Iterator[tuple[NumpyBatch, np.ndarray]]:
    """``(batch, probabilities)`` for every batch of ``events``."""
    for batch in events.iter_shard():  # numpy, from any loader class
        yield batch, np.asarray(model.predict_proba(batch["x"]), dtype=np.float32)
