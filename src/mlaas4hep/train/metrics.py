"""Evaluation metrics of a trained classifier and the ``metrics.json`` they are written to.

Pure numpy, vectorised (one sort and cumulative sums per curve), with event
weights. The ROC curve and AUC follow scikit-learn's definitions exactly
(``sklearn.metrics.roc_curve`` / ``roc_auc_score``): events of zero weight are
dropped, tied scores form one threshold, and the area is the trapezoid over the
distinct thresholds. Negative (Monte Carlo) weights are accepted.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mlaas4hep.errors import DataError

SCHEMA = "mlaas4hep.metrics"
VERSION = 1

FloatArray = npt.NDArray[np.float64]


class MetricsError(DataError, ValueError):
    """Labels, scores or weights from which a metric cannot be computed."""


def class_scores(probabilities: npt.ArrayLike) -> FloatArray:
    """The signal score of each event of a binary problem, as a float64 ``[N]`` array.

    The rule, by the shape of the model output:

    * ``[N]`` or ``[N, 1]``: the probability of class 1 (signal), returned as is;
    * ``[N, 2]`` (softmax over background, signal): column 1;
    * ``[N, K]`` with ``K > 2``: not a binary problem, a :class:`MetricsError`
      (use :func:`multiclass_auc`).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1:
        return p
    if p.ndim == 2 and p.shape[1] in (1, 2):
        return np.ascontiguousarray(p[:, p.shape[1] - 1])
    raise MetricsError(
        f"expected model outputs shaped [N], [N, 1] or [N, 2] for a binary problem, "
        f"got {list(p.shape)}"
    )


def _weights(weights: npt.ArrayLike | None, events: int, where: str) -> FloatArray:
    """The event weights as float64 ``[N]`` (ones when ``None``), checked."""
    if weights is None:
        return np.ones(events)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (events,):
        raise MetricsError(f"{events} events in {where} but weights shaped {list(w.shape)}")
    if not np.isfinite(w).all():
        raise MetricsError(f"the weights of {where} are not all finite")
    return w


def _binary_inputs(
    labels: npt.ArrayLike, scores: npt.ArrayLike, weights: npt.ArrayLike | None, where: str
) -> tuple[npt.NDArray[np.bool_], FloatArray, FloatArray]:
    """Checked ``(is_signal, scores, weights)`` with the zero-weight events removed."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise MetricsError(
            f"labels shaped {list(y.shape)} and scores shaped {list(s.shape)} in {where}: "
            f"both must be [N]"
        )
    if not np.isin(y, (0.0, 1.0)).all():
        raise MetricsError(f"the labels of {where} must be 0 (background) or 1 (signal)")
    if not np.isfinite(s).all():
        raise MetricsError(f"the scores of {where} are not all finite (NaN or inf)")
    w = _weights(weights, len(y), where)
    keep = w != 0
    is_signal = y[keep] == 1.0
    signal = int(is_signal.sum())
    if signal == 0 or signal == len(is_signal):
        raise MetricsError(
            f"only one class is present in {where} ({signal} signal and "
            f"{len(is_signal) - signal} background events of non-zero weight): "
            f"a ROC curve needs both"
        )
    return is_signal, s[keep], w[keep]


def roc_curve(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    *,
    drop_intermediate: bool = True,
    where: str = "the data",
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The ROC curve ``(fpr, tpr, thresholds)``, as ``sklearn.metrics.roc_curve``.

    ``labels`` are 0 (background) or 1 (signal), ``scores`` the signal scores
    (see :func:`class_scores`). Thresholds decrease from ``inf`` (the point
    ``(0, 0)``); an event is selected when its score is ``>=`` the threshold.
    ``drop_intermediate`` drops the points on straight segments, which change
    neither the plot nor the area. A :class:`MetricsError` names ``where``
    when only one class is present.
    """
    is_signal, s, w = _binary_inputs(labels, scores, weights, where)
    order = np.argsort(s, kind="stable")[::-1]
    s, is_signal, w = s[order], is_signal[order], w[order]
    # The last event of each run of tied scores closes one threshold.
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(np.where(is_signal, w, 0.0))[ends]
    fps = np.cumsum(np.where(is_signal, 0.0, w))[ends]
    thresholds = s[ends]
    if drop_intermediate and len(fps) > 2:
        corners = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps, thresholds = fps[corners], tps[corners], thresholds[corners]
    for kind, total in (("background", fps[-1]), ("signal", tps[-1])):
        if total <= 0:
            raise MetricsError(f"the {kind} weights of {where} sum to {total:g}, not above 0")
    return np.r_[0.0, fps] / fps[-1], np.r_[0.0, tps] / tps[-1], np.r_[np.inf, thresholds]


def curve_area(fpr: npt.ArrayLike, tpr: npt.ArrayLike) -> float:
    """The area under a ROC curve from :func:`roc_curve`, by the trapezoidal rule."""
    x = np.asarray(fpr, dtype=np.float64)
    y = np.asarray(tpr, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2)


def roc_auc(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    *,
    where: str = "the data",
) -> float:
    """The area under the ROC curve, as ``sklearn.metrics.roc_auc_score`` (binary).

    0.5 for a score that does not separate the classes, 1 for a perfect one.
    """
    fpr, tpr, _ = roc_curve(labels, scores, weights, where=where)
    return curve_area(fpr, tpr)


def multiclass_auc(
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    *,
    where: str = "the data",
) -> float:
    """One-vs-rest AUC averaged over the ``K`` classes (macro average).

    ``labels`` are class indices ``0..K-1`` and ``probabilities`` ``[N, K]``; as
    ``roc_auc_score(multi_class="ovr", average="macro")``. Every class must be
    present.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != len(y):
        raise MetricsError(
            f"labels shaped {list(y.shape)} and probabilities shaped {list(p.shape)} "
            f"in {where}: expected [N] and [N, K]"
        )
    if not np.isin(y, np.arange(p.shape[1])).all():
        raise MetricsError(f"the labels of {where} must be class indices 0 to {p.shape[1] - 1}")
    return float(
        np.mean(
            [
                roc_auc(y == k, p[:, k], weights, where=f"{where} (class {k} vs the rest)")
                for k in range(p.shape[1])
            ]
        )
    )


def accuracy(
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    *,
    where: str = "the data",
) -> float:
    """The (weighted) fraction of events whose predicted class is their label.

    The prediction is the argmax over the classes for ``[N, K]`` outputs with
    ``K >= 2``, and ``probability > 0.5`` for ``[N]`` or ``[N, 1]`` outputs.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 1 or p.ndim not in (1, 2) or p.shape[0] != len(y):
        raise MetricsError(
            f"labels shaped {list(y.shape)} and probabilities shaped {list(p.shape)} "
            f"in {where}: expected [N] and [N] or [N, K]"
        )
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    predicted = p > 0.5 if p.ndim == 1 else np.argmax(p, axis=1)
    w = _weights(weights, len(y), where)
    total = w.sum()
    if total == 0:
        raise MetricsError(f"the weights of {where} sum to 0: accuracy is undefined")
    return float(np.sum(w * (predicted == y)) / total)


@dataclass
class SplitMetrics:
    """The metrics of one split (``train``, ``val``, ``test``) after training."""

    events: int
    loss: float | None
    auc: float
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
        return asdict(self)


@dataclass
class TrainingHistory:
    """What happened in each epoch of a training, one list entry per epoch.

    ``best_epoch`` is an index into these lists (0 is the first epoch), ``None``
    before any epoch ends.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_auc: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    events_per_second: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict."""
        return asdict(self)


def evaluate(
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    *,
    loss: float | None = None,
    where: str = "test",
) -> SplitMetrics:
    """AUC and accuracy of one split from the model outputs.

    Binary outputs (``[N]``, ``[N, 1]``, ``[N, 2]``) get :func:`roc_auc` of
    :func:`class_scores`, ``[N, K > 2]`` outputs :func:`multiclass_auc`. ``where``
    names the split in error messages.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] > 2:
        auc = multiclass_auc(y, p, weights, where=where)
    else:
        auc = roc_auc(y, class_scores(p), weights, where=where)
    return SplitMetrics(
        events=len(y), loss=loss, auc=auc, accuracy=accuracy(y, p, weights, where=where)
    )


def _json_safe(value: Any) -> Any:
    """``value`` with numpy types made Python ones and NaN / infinities made ``None``."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(
    path: str | os.PathLike[str],
    *,
    history: TrainingHistory | None,
    splits: dict[str, SplitMetrics],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json`` and return what was written.

    ``path`` is the file, or an existing directory to write ``metrics.json``
    into. The document has ``schema``, ``version``, ``splits`` (name → metrics),
    ``history`` (or ``null``) and ``extra`` (anything else worth keeping, e.g.
    the model and configuration). Non-finite numbers are written as ``null``.
    """
    target = Path(path)
    if target.is_dir():
        target /= "metrics.json"
    document: dict[str, Any] = _json_safe(
        {
            "schema": SCHEMA,
            "version": VERSION,
            "splits": {name: split.to_dict() for name, split in splits.items()},
            "history": history.to_dict() if history is not None else None,
            "extra": extra or {},
        }
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return document


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``metrics.json`` written by :func:`write_metrics`, checking its schema."""
    target = Path(path)
    try:
        document = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read metrics from {target}: {error}", path=str(target)) from error
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise DataError(f"{target} is not an {SCHEMA} document", path=str(target))
    if document.get("version") != VERSION:
        raise DataError(
            f"{target} has {SCHEMA} version {document.get('version')}, this reads {VERSION}",
            path=str(target),
        )
    return document
