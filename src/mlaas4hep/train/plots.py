"""PNG plots of a training: ROC curves, score distributions per class, losses per epoch.

Figures are drawn on matplotlib's Agg canvas without pyplot, so this works
headless and leaves the user's backend alone; the CMS-like mplhep style is
applied only while a figure is drawn, never to the global ``rcParams``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib.style
import mplhep
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mlaas4hep.train.metrics import TrainingHistory, class_scores, curve_area, roc_curve

Curve = tuple[npt.ArrayLike, npt.ArrayLike, float]
"""A ROC curve as ``(false positive rate, true positive rate, AUC)``."""


@contextmanager
def _axes(path: str | os.PathLike[str]) -> Iterator[Axes]:
    """Axes of a new styled figure, saved to ``path`` as PNG when the block ends."""
    with matplotlib.style.context(mplhep.style.CMS):
        figure = Figure()
        FigureCanvasAgg(figure)
        yield figure.add_subplot()
        figure.savefig(Path(path), format="png")


def _auc_label(name: str, auc: float) -> str:
    return f"{name} (AUC = {auc:.4f})" if np.isfinite(auc) else f"{name} (AUC n/a)"


def plot_roc(
    path: str | os.PathLike[str],
    curves: Mapping[str, Curve],
    baseline: Curve | None = None,
    baseline_name: str = "baseline",
) -> None:
    """ROC curves (signal efficiency against background efficiency) with their AUC.

    ``curves`` maps a legend name to ``(fpr, tpr, auc)`` as from
    :func:`~mlaas4hep.train.metrics.roc_curve`; ``baseline`` (e.g. a cut-based
    selection) is drawn dashed, with the line of random guessing dotted.
    """
    with _axes(path) as ax:
        ax.plot([0, 1], [0, 1], ":", color="grey", label="random (AUC = 0.5)")
        if baseline is not None:
            fpr, tpr, auc = baseline
            ax.plot(fpr, tpr, "--", color="black", label=_auc_label(baseline_name, auc))
        for name, (fpr, tpr, auc) in curves.items():
            ax.plot(fpr, tpr, label=_auc_label(name, auc))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("Background efficiency (false positive rate)")
        ax.set_ylabel("Signal efficiency (true positive rate)")
        ax.legend(loc="lower right")


def plot_scores(
    path: str | os.PathLike[str],
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    class_names: Sequence[str] = ("background", "signal"),
    bins: int = 50,
) -> None:
    """The distribution of the scores of each class (labels ``0..len(class_names)-1``).

    Each histogram is normalised to unit area (weighted when ``weights`` are
    given); classes without events are left out.
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64)
    edges = np.linspace(min(0.0, s.min()), max(1.0, s.max()), bins + 1)
    with _axes(path) as ax:
        for k, name in enumerate(class_names):
            selected = y == k
            counts, _ = np.histogram(s[selected], bins=edges, weights=w[selected])
            total = counts.sum()
            if total == 0:
                continue
            mplhep.histplot(counts / (total * np.diff(edges)), edges, label=name, ax=ax)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("Classifier score")
        ax.set_ylabel("Normalised events")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()


def plot_losses(path: str | os.PathLike[str], history: TrainingHistory) -> None:
    """Training and validation loss per epoch, with a star at the best epoch.

    Epochs are numbered from 1 on the plot (``best_epoch`` is an index from 0).
    """
    with _axes(path) as ax:
        for name, losses in (("training", history.train_loss), ("validation", history.val_loss)):
            if losses:
                ax.plot(np.arange(1, len(losses) + 1), losses, "o-", label=name)
        best = history.best_epoch
        reference = history.val_loss or history.train_loss
        if best is not None and 0 <= best < len(reference):
            label = f"best epoch ({best + 1})"
            ax.plot(best + 1, reference[best], "*", color="black", markersize=18, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        if history.train_loss or history.val_loss:
            ax.legend()


def write_plots(
    directory: str | os.PathLike[str],
    *,
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    weights: npt.ArrayLike | None = None,
    history: TrainingHistory | None = None,
    baseline: Curve | None = None,
    baseline_name: str = "baseline",
    name: str = "model",
    class_names: Sequence[str] = ("background", "signal"),
) -> list[Path]:
    """Write ``roc.png``, ``scores.png`` and (with a history) ``losses.png``; their paths.

    ``labels``, ``probabilities`` and ``weights`` are those of the test split of
    a binary problem (outputs as accepted by
    :func:`~mlaas4hep.train.metrics.class_scores`); ``name`` labels the model's
    ROC curve.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    scores = class_scores(probabilities)
    fpr, tpr, _ = roc_curve(labels, scores, weights, where="the test split")
    written = [out / "roc.png", out / "scores.png"]
    plot_roc(written[0], {name: (fpr, tpr, curve_area(fpr, tpr))}, baseline, baseline_name)
    plot_scores(written[1], labels, scores, weights, class_names)
    if history is not None:
        written.append(out / "losses.png")
        plot_losses(written[2], history)
    return written
