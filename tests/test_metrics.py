"""Metrics against scikit-learn, ``metrics.json`` round trips, and the PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from mlaas4hep.errors import DataError
from mlaas4hep.train import metrics
from mlaas4hep.train.metrics import SplitMetrics, TrainingHistory
from mlaas4hep.train.plots import plot_losses, plot_roc, plot_scores, write_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def binary_sample(
    seed: int, events: int = 500, decimals: int | None = None, weighted: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Float 0/1 labels, overlapping scores (rounded to force ties), optional weights."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, events).astype(np.float64)
    labels[:2] = (0.0, 1.0)
    scores = rng.normal(0.5 * labels, 1.0)
    if decimals is not None:
        scores = np.round(scores, decimals)
    weights = None
    if weighted:
        weights = rng.exponential(1.0, events) * (rng.random(events) > 0.1)
        weights[:2] = 1.0
    return labels, scores, weights


SAMPLES = [
    pytest.param(seed, decimals, weighted, id=f"seed{seed}-round{decimals}-w{weighted}")
    for seed, decimals, weighted in [
        (0, None, False),
        (1, 1, False),
        (2, 0, False),
        (3, None, True),
        (4, 1, True),
        (5, 0, True),
    ]
]


@pytest.mark.parametrize(("seed", "decimals", "weighted"), SAMPLES)
@pytest.mark.parametrize("drop_intermediate", [True, False])
def test_roc_curve_matches_sklearn(
    seed: int, decimals: int | None, weighted: bool, drop_intermediate: bool
) -> None:
    labels, scores, weights = binary_sample(seed, decimals=decimals, weighted=weighted)
    expected = skm.roc_curve(
        labels, scores, sample_weight=weights, drop_intermediate=drop_intermediate
    )
    got = metrics.roc_curve(labels, scores, weights, drop_intermediate=drop_intermediate)
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("seed", "decimals", "weighted"), SAMPLES)
def test_roc_auc_matches_sklearn(seed: int, decimals: int | None, weighted: bool) -> None:
    labels, scores, weights = binary_sample(seed, decimals=decimals, weighted=weighted)
    expected = skm.roc_auc_score(labels, scores, sample_weight=weights)
    assert metrics.roc_auc(labels, scores, weights) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.integers(0, 1),
            st.integers(0, 4),  # few distinct scores: many ties
            st.floats(0.0, 10.0, allow_nan=False),
        ),
        min_size=2,
        max_size=40,
    )
)
def test_roc_auc_matches_sklearn_property(events: list[tuple[int, int, float]]) -> None:
    labels, scores, weights = np.array(events, dtype=np.float64).T
    kept = labels[weights != 0]
    if not (kept == 0).any() or not (kept == 1).any():
        with pytest.raises(metrics.MetricsError, match="only one class"):
            metrics.roc_auc(labels, scores, weights)
        return
    expected = skm.roc_auc_score(labels, scores, sample_weight=weights)
    assert metrics.roc_auc(labels, scores, weights) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_extremes() -> None:
    labels = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc(labels, [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_roc_curve_large_input_is_fast_and_correct() -> None:
    labels, scores, weights = binary_sample(6, events=1_000_000, decimals=3, weighted=True)
    expected = skm.roc_auc_score(labels, scores, sample_weight=weights)
    assert metrics.roc_auc(labels, scores, weights) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("classes", [3, 5])
def test_multiclass_auc_matches_sklearn(classes: int, weighted: bool) -> None:
    rng = np.random.default_rng(classes)
    events = 600
    labels = np.arange(events) % classes
    logits = rng.normal(size=(events, classes))
    logits[np.arange(events), labels] += 1.0
    logits = np.round(logits, 1)  # ties
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    weights = rng.exponential(1.0, events) if weighted else None
    expected = skm.roc_auc_score(
        labels, probabilities, sample_weight=weights, multi_class="ovr", average="macro"
    )
    got = metrics.multiclass_auc(labels, probabilities, weights)
    assert got == pytest.approx(expected, abs=1e-12)
    assert metrics.evaluate(labels, probabilities, weights).auc == pytest.approx(got)


def test_multiclass_auc_rejects_bad_labels_and_missing_classes() -> None:
    probabilities = np.full((4, 3), 1 / 3)
    with pytest.raises(metrics.MetricsError, match="class indices 0 to 2"):
        metrics.multiclass_auc([0, 1, 2, 3], probabilities)
    with pytest.raises(metrics.MetricsError, match=r"val \(class 2 vs the rest\)"):
        metrics.multiclass_auc([0, 1, 1, 0], probabilities, where="val")


def test_accuracy_by_hand() -> None:
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    one_column = np.array([0.9, 0.2, 0.4, 0.5])  # 0.5 is not > 0.5: predicted background
    assert metrics.accuracy(labels, one_column) == 0.75
    assert metrics.accuracy(labels, one_column[:, None]) == 0.75
    assert metrics.accuracy(labels, one_column, [1.0, 1.0, 2.0, 0.0]) == 0.5
    softmax = np.array([[0.1, 0.9], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])
    assert metrics.accuracy(labels, softmax) == 0.5
    three = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    assert metrics.accuracy([0, 2, 0], three) == pytest.approx(2 / 3)
    assert metrics.accuracy([0, 2, 0], three, [1.0, 1.0, 2.0]) == 0.5


def test_accuracy_rejects_mismatched_shapes() -> None:
    with pytest.raises(metrics.MetricsError, match="expected"):
        metrics.accuracy([0, 1, 1], [0.2, 0.7])
    with pytest.raises(metrics.MetricsError, match="sum to 0"):
        metrics.accuracy([0, 1], [0.2, 0.7], [0.0, 0.0])


@pytest.mark.parametrize(("labels", "present"), [([1, 1, 1], "3 signal"), ([0, 0], "0 signal")])
def test_one_class_error_names_the_split(labels: list[int], present: str) -> None:
    scores = np.linspace(0, 1, len(labels))
    with pytest.raises(metrics.MetricsError) as caught:
        metrics.roc_auc(labels, scores, where="the validation split")
    message = str(caught.value)
    assert "only one class is present in the validation split" in message
    assert present in message
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, DataError)
    with pytest.raises(metrics.MetricsError, match="in test"):
        metrics.evaluate(labels, scores)


def test_zero_weights_do_not_count_as_a_class() -> None:
    with pytest.raises(metrics.MetricsError, match="only one class"):
        metrics.roc_curve([0, 1, 1], [0.1, 0.5, 0.9], [0.0, 1.0, 1.0])


def test_negative_weights_are_accepted_while_each_class_sums_above_zero() -> None:
    labels = [0, 0, 1, 1, 1]
    scores = [0.1, 0.6, 0.4, 0.8, 0.9]
    weights = [1.0, 0.5, -0.2, 1.0, 1.0]
    expected = skm.roc_auc_score(labels, scores, sample_weight=weights)
    assert metrics.roc_auc(labels, scores, weights) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(metrics.MetricsError, match="signal weights of val sum to -1"):
        metrics.roc_auc(labels, scores, [1.0, 1.0, -3.0, 1.0, 1.0], where="val")


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(metrics.MetricsError, match="0 \\(background\\) or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(metrics.MetricsError, match="not all finite"):
        metrics.roc_auc([0, 1], [0.1, math.nan])
    with pytest.raises(metrics.MetricsError, match="weights shaped"):
        metrics.roc_auc([0, 1], [0.1, 0.2], [1.0])


def test_class_scores_rules() -> None:
    flat = np.array([0.1, 0.7, 0.4], dtype=np.float32)
    np.testing.assert_array_equal(metrics.class_scores(flat), flat.astype(np.float64))
    assert metrics.class_scores(flat).dtype == np.float64
    np.testing.assert_array_equal(metrics.class_scores(flat[:, None]), flat)
    softmax = np.stack([1 - flat, flat], axis=1)
    np.testing.assert_array_equal(metrics.class_scores(softmax), flat)
    with pytest.raises(metrics.MetricsError, match=r"\[3, 3\]"):
        metrics.class_scores(np.full((3, 3), 1 / 3))
    with pytest.raises(metrics.MetricsError):
        metrics.class_scores(np.zeros((2, 2, 2)))


def test_evaluate_binary_outputs_agree() -> None:
    labels, scores, weights = binary_sample(7, weighted=True)
    probabilities = 1 / (1 + np.exp(-scores))
    results = [
        metrics.evaluate(labels, outputs, weights, loss=0.3, where="val")
        for outputs in (
            probabilities,
            probabilities[:, None],
            np.stack([1 - probabilities, probabilities], axis=1),
        )
    ]
    assert results[0] == results[1]
    assert results[0].auc == pytest.approx(results[2].auc, abs=1e-12)
    assert results[0].accuracy == pytest.approx(results[2].accuracy)
    assert results[0].events == len(labels)
    assert results[0].loss == 0.3
    assert results[0].auc == pytest.approx(
        skm.roc_auc_score(labels, probabilities, sample_weight=weights), abs=1e-12
    )


def test_metrics_json_round_trip(tmp_path: Path) -> None:
    history = TrainingHistory(
        train_loss=[0.7, 0.5],
        val_loss=[0.6, math.nan],
        val_auc=[0.8, np.float32(0.85)],  # type: ignore[list-item]
        epoch_seconds=[1.5, 1.4],
        events_per_second=[1e5, math.inf],
        best_epoch=0,
        stopped_early=True,
    )
    splits = {
        "val": SplitMetrics(events=100, loss=0.6, auc=0.8, accuracy=0.75),
        "test": SplitMetrics(events=np.int64(200), loss=None, auc=math.nan, accuracy=0.7),  # type: ignore[arg-type]
    }
    written = metrics.write_metrics(
        tmp_path, history=history, splits=splits, extra={"model": "mlp", "lr": np.float64(1e-3)}
    )
    path = tmp_path / "metrics.json"
    text = path.read_text()
    assert "NaN" not in text
    assert "Infinity" not in text
    document = metrics.read_metrics(path)
    assert document == written == json.loads(text)
    assert document["schema"] == "mlaas4hep.metrics"
    assert document["version"] == 1
    assert document["history"]["val_loss"] == [0.6, None]
    assert document["history"]["events_per_second"] == [1e5, None]
    assert document["history"]["val_auc"][1] == pytest.approx(0.85)
    assert document["history"]["best_epoch"] == 0
    assert document["history"]["stopped_early"] is True
    assert document["splits"]["test"] == {"events": 200, "loss": None, "auc": None, "accuracy": 0.7}
    assert document["splits"]["val"] == splits["val"].to_dict()
    assert document["extra"] == {"model": "mlp", "lr": 1e-3}


def test_metrics_json_without_history(tmp_path: Path) -> None:
    path = tmp_path / "out" / "m.json"
    metrics.write_metrics(path, history=None, splits={})
    document = metrics.read_metrics(path)
    assert document["history"] is None
    assert document["splits"] == {}
    assert document["extra"] == {}


def test_read_metrics_rejects_other_documents(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"schema": "something else"}')
    with pytest.raises(DataError, match=r"not an mlaas4hep\.metrics document"):
        metrics.read_metrics(path)
    path.write_text('{"schema": "mlaas4hep.metrics", "version": 99}')
    with pytest.raises(DataError, match="version 99"):
        metrics.read_metrics(path)
    path.write_text("{")
    with pytest.raises(DataError, match="cannot read"):
        metrics.read_metrics(path)


def assert_png_with_content(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3
    assert image.shape[0] > 100
    assert image.shape[1] > 100
    assert float(image[..., :3].var()) > 1e-3


@pytest.mark.parametrize("epochs", [1, 4])
def test_write_plots(tmp_path: Path, epochs: int) -> None:
    labels, scores, weights = binary_sample(8, weighted=True)
    probabilities = 1 / (1 + np.exp(-scores))
    history = TrainingHistory(
        train_loss=list(np.linspace(0.7, 0.4, epochs)),
        val_loss=list(np.linspace(0.72, 0.45, epochs)),
        best_epoch=epochs - 1,
    )
    backend = mpl.get_backend()
    params = dict(mpl.rcParams)
    paths = write_plots(
        tmp_path / "plots",
        labels=labels,
        probabilities=np.stack([1 - probabilities, probabilities], axis=1),
        weights=weights,
        history=history,
        baseline=(np.array([0.0, 0.3, 1.0]), np.array([0.0, 0.6, 1.0]), 0.65),
    )
    assert [p.name for p in paths] == ["roc.png", "scores.png", "losses.png"]
    for path in paths:
        assert_png_with_content(path)
    assert mpl.get_backend() == backend
    assert dict(mpl.rcParams) == params


def test_write_plots_without_history(tmp_path: Path) -> None:
    labels, scores, _ = binary_sample(9, decimals=1)
    paths = write_plots(tmp_path, labels=labels, probabilities=scores, name="bdt")
    assert [p.name for p in paths] == ["roc.png", "scores.png"]
    assert not (tmp_path / "losses.png").exists()


def test_single_plots_edge_cases(tmp_path: Path) -> None:
    plot_roc(tmp_path / "roc.png", {"a": ([0, 0.5, 1], [0, 0.9, 1], math.nan)})
    assert_png_with_content(tmp_path / "roc.png")
    # Logits outside [0, 1]; the signal class has no events.
    plot_scores(tmp_path / "scores.png", [0, 0, 0], [-2.0, 0.5, 3.0])
    assert_png_with_content(tmp_path / "scores.png")
    plot_losses(tmp_path / "empty.png", TrainingHistory())
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_SIGNATURE
    plot_losses(tmp_path / "train_only.png", TrainingHistory(train_loss=[0.5], best_epoch=0))
    assert_png_with_content(tmp_path / "train_only.png")
