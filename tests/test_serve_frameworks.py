"""Every backend through the running server: a model of each framework is
uploaded over HTTP and its ``/json`` answers are compared with the framework's
own prediction in this process."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from serving import running_server

FEATURES = 6
RNG = np.random.default_rng(11)
X = RNG.normal(size=(64, FEATURES)).astype(np.float32)
Y = (X[:, 0] - X[:, 3] > 0).astype(np.int64)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@dataclass
class Case:
    directory: Path
    """The files of one version; their folder name is the model name."""
    reference: Callable[[np.ndarray], np.ndarray]


def torchscript_case(root: Path) -> Case:
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2), torch.nn.Softmax(1)
    ).eval()
    directory = root / "scripted"
    directory.mkdir()
    torch.jit.trace(module, torch.zeros(1, FEATURES)).save(str(directory / "model.pt"))
    description = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
    }
    (directory / "params.json").write_text(json.dumps(description))

    def reference(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(rows)).numpy()

    return Case(directory, reference)


def xgboost_case(root: Path) -> Case:
    import xgboost

    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3}, xgboost.DMatrix(X, label=Y), 10
    )
    directory = root / "boosted"
    directory.mkdir()
    booster.save_model(str(directory / "model.json"))

    def reference(rows: np.ndarray) -> np.ndarray:
        p = booster.predict(xgboost.DMatrix(rows))
        return np.stack([1 - p, p], axis=1)

    return Case(directory, reference)


def sklearn_case(root: Path) -> Case:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(X, Y)
    directory = root / "forest"
    directory.mkdir()
    onnx = to_onnx(forest, X[:1], options={id(forest): {"zipmap": False}}, target_opset=17)
    (directory / "model.onnx").write_bytes(onnx.SerializeToString())
    path = directory / "model.onnx"
    return Case(directory, lambda rows: _probabilities(path, rows))


def _probabilities(path: Path, rows: np.ndarray) -> np.ndarray:
    """skl2onnx classifiers answer (label, probabilities); TFaaS answers carry the probabilities."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: rows})[1])


def tensorflow_cases(root: Path) -> list[Case]:
    try:
        import tensorflow as tf
    except ImportError:
        if IN_CI:
            pytest.fail("tensorflow is not installed (required under CI=true)")
        pytest.skip("tensorflow is not installed")
    weights = RNG.normal(size=(FEATURES, 3)).astype(np.float32)

    class Classifier(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weights)

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="x")])
        def __call__(self, x: Any) -> dict[str, Any]:
            return {"probabilities": tf.nn.softmax(x @ self.w)}

    module = Classifier()
    saved = root / "saved"
    tf.saved_model.save(module, str(saved / "model.savedmodel"), signatures=module.__call__)

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, FEATURES], name="input_1")
        tf.nn.softmax(tf.matmul(x, tf.constant(weights)), name="output_node0")
    frozen = root / "frozen"
    frozen.mkdir()
    (frozen / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    (frozen / "labels.txt").write_text("a\nb\nc\n")
    params = {
        "name": "frozen",
        "model": "model.pb",
        "labels": "labels.txt",
        "inputNode": "input_1",
        "outputNode": "output_node0",
    }
    (frozen / "params.json").write_text(json.dumps(params))

    def reference(rows: np.ndarray) -> np.ndarray:
        logits = rows @ weights
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return [Case(saved, reference), Case(frozen, reference)]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("frameworks")
    found = [
        torchscript_case(root),
        xgboost_case(root),
        sklearn_case(root),
        *tensorflow_cases(root),
    ]
    return {case.directory.name: case for case in found}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("serve") / "models") as url:
        yield url


def bundle(directory: Path) -> bytes:
    """A TFaaS bundle: a tar.gz whose top directory is the model name."""
    return bundle_as(directory, directory.name)


@pytest.mark.parametrize("name", ["scripted", "boosted", "forest", "saved", "frozen"])
def test_every_backend_serves_what_its_framework_predicts(
    server: str, cases: dict[str, Case], name: str
) -> None:
    case = cases[name]
    uploaded = httpx.post(
        f"{server}/upload",
        content=bundle(case.directory),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
        timeout=120,
    )
    assert uploaded.status_code == 200, uploaded.text
    answer = httpx.post(
        f"{server}/json", json={"values": X[:20].tolist(), "model": name}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    expected = case.reference(X[:20])
    np.testing.assert_allclose(np.array(answer.json()), expected, rtol=1e-4, atol=1e-6)
    listed = {m["name"]: m for m in httpx.get(f"{server}/models").json()}
    assert listed[name]["state"] == "READY"
    assert listed[name]["inputs"][0]["shape"][0] == -1


def test_frozen_graph_labels_reach_the_protobuf_answer(server: str, cases: dict[str, Case]) -> None:
    from mlaas4hep.serve.tfaas_proto import Predictions, Row

    httpx.post(
        f"{server}/upload",
        content=bundle(cases["frozen"].directory),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
        timeout=120,
    ).raise_for_status()
    row = Row(value=X[0].tolist(), model="frozen").SerializeToString()
    answer = httpx.post(f"{server}/proto", content=row, timeout=60)
    assert answer.status_code == 200, answer.text
    predictions = Predictions.FromString(answer.content)
    assert [c.label for c in predictions.prediction] == ["a", "b", "c"]
    np.testing.assert_allclose(
        [c.probability for c in predictions.prediction],
        cases["frozen"].reference(X[:1])[0],
        rtol=1e-5,
    )


def test_trained_model_package_serves_what_onnx_runtime_predicts(
    tmp_path: Path, server: str
) -> None:
    """A package written by ``mlaas4hep train`` (generated signal/background files)."""
    from typer.testing import CliRunner

    from mlaas4hep.cli import app

    runner = CliRunner()
    data = tmp_path / "data"
    made = runner.invoke(app, ["generate", str(data), "--events", "1500", "--seed", "5"])
    assert made.exit_code == 0, made.output
    model = Path(__file__).parents[1] / "examples" / "mlp.py"
    trained = runner.invoke(
        app,
        [
            "train", "--files", str(data / "files.txt"), "--labels", str(data / "labels.txt"),
            "--model", str(model), "--fout", str(tmp_path / "run"), "--epochs", "1", "--quiet",
        ],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    package = tmp_path / "run" / "model"
    metadata = json.loads((package / "metadata.json").read_text())
    uploaded = httpx.post(
        f"{server}/upload",
        content=bundle_as(package, "trained"),
        headers={"Content-Type": "application/octet-stream"},
        timeout=120,
    )
    assert uploaded.status_code == 200, uploaded.text
    columns = metadata["columns"]
    width = metadata["inputs"][0]["shape"][1]
    rows = np.random.default_rng(0).normal(size=(7, width)).astype(np.float32)
    order = np.random.default_rng(1).permutation(width)
    answer = httpx.post(
        f"{server}/json",
        json={
            "keys": [columns[i] for i in order],
            "values": rows[:, order].tolist(),
            "model": "trained",
        },
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    feeds = {"x": rows} | ({"mask": np.ones_like(rows)} if len(metadata["inputs"]) > 1 else {})
    expected = _run_onnx(package / "model.onnx", feeds)
    np.testing.assert_allclose(np.array(answer.json()), expected, rtol=1e-5, atol=1e-6)


def bundle_as(directory: Path, name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(directory, arcname=name)
    return buffer.getvalue()


def _run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, {n: feeds[n] for n in names})[0])
