"""Inference backends of the server, on real models of each framework.

Every model is built here, saved as the server finds it in a version
directory, loaded with :func:`load_backend` and compared with the
framework's own prediction in this process. TensorFlow models are built
once per module (importing TensorFlow takes seconds).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import onnx
import pytest
import torch
import xgboost
from conftest import IN_CI
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from mlaas4hep.serve.backends import Backend, TensorInfo, load_backend
from mlaas4hep.serve.errors import BadRequest, ModelLoadError, Unavailable
from mlaas4hep.train.export import export_sklearn, export_torch
from mlaas4hep.train.package import write_package
from mlaas4hep.transform.scan import spec_from_events

# TensorFlow imports Keras: keep Keras on the backend the other test modules use.
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FEATURES = 8
RNG = np.random.default_rng(11)
X = RNG.normal(size=(400, FEATURES)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(np.int64)
Y3 = np.digitize(X[:, 2] + X[:, 3], [-0.5, 0.5])
COLUMNS = [f"f{i}" for i in range(FEATURES)]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def version_dir(root: Path, files: dict[str, bytes | str | Path]) -> Path:
    """A model version directory holding ``files`` (contents, or files to copy)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = root / name
        if isinstance(content, Path):
            target.write_bytes(content.read_bytes())
        elif isinstance(content, str):
            target.write_text(content)
        else:
            target.write_bytes(content)
    return root


def check_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(actual) == list(expected)
    for name, values in expected.items():
        assert actual[name].shape == values.shape, name
        np.testing.assert_allclose(actual[name], values, **TOLERANCE, err_msg=name)


# -- PyTorch models ------------------------------------------------------------


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


class PointCloud(torch.nn.Module):
    """ParticleNet-style inputs: points [B, 2, L], features [B, 5, L], mask [B, 1, L]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(5, 4, 1)
        self.head = torch.nn.Linear(6, 2)

    def forward(
        self, points: torch.Tensor, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        count = mask.sum(-1).clamp(min=1)
        embedding = (torch.relu(self.conv(features)) * mask).sum(-1) / count
        centre = (points * mask).sum(-1) / count
        return torch.softmax(self.head(torch.cat([embedding, centre], 1)), 1), embedding


CLOUD_INPUTS = [
    TensorInfo("points", "FP32", [-1, 2, -1]),
    TensorInfo("features", "FP32", [-1, 5, -1]),
    TensorInfo("mask", "FP32", [-1, 1, -1]),
]
CLOUD_OUTPUTS = [
    TensorInfo("probabilities", "FP32", [-1, 2]),
    TensorInfo("embedding", "FP32", [-1, 4]),
]


def cloud(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (np.arange(length) < rng.integers(1, length + 1, size=(batch, 1, 1))).astype(np.float32)
    return {
        "points": rng.normal(size=(batch, 2, length)).astype(np.float32) * mask,
        "features": rng.normal(size=(batch, 5, length)).astype(np.float32) * mask,
        "mask": mask,
    }


def run_torch(module: Any, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(a) for a in inputs.values()))
    values = out if isinstance(out, tuple) else (out,)
    return {name: value.numpy() for name, value in zip(names, values, strict=True)}


@pytest.fixture(scope="module")
def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


@pytest.fixture(scope="module")
def mlp_files(mlp: MLP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.onnx`` (torch.onnx, dynamic batch) and ``model.pt`` (traced) of the MLP."""
    folder = tmp_path_factory.mktemp("mlp")
    export_torch(mlp, {"x": X[:64]}, folder)
    return folder


@pytest.fixture(scope="module")
def point_cloud() -> torch.jit.ScriptModule:
    torch.manual_seed(1)
    return torch.jit.script(PointCloud().eval())


@pytest.fixture(scope="module")
def point_cloud_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[PointCloud, Path]:
    """The point-cloud model in ONNX, with dynamic batch and point-count dimensions."""
    torch.manual_seed(2)
    module = PointCloud().eval()
    example = tuple(torch.from_numpy(a) for a in cloud(3, 7).values())
    dims = tuple({0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC} for _ in example)
    with warnings.catch_warnings():
        # torch 2.13's exporter trips its own pytree FutureWarning
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            module,
            example,
            input_names=[i.name for i in CLOUD_INPUTS],
            output_names=[o.name for o in CLOUD_OUTPUTS],
            dynamic_shapes=dims,
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    folder = tmp_path_factory.mktemp("cloud-onnx")
    program.save(str(folder / "model.onnx"))
    return module, folder


# -- ONNX ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_mlp(mlp_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    directory = version_dir(
        tmp_path_factory.mktemp("v") / "1", {"model.onnx": mlp_files / "model.onnx"}
    )
    return load_backend(directory, threads=1)


def test_onnx_mlp(onnx_mlp: Backend, mlp: MLP) -> None:
    assert onnx_mlp.platform == "onnxruntime_onnx"
    assert onnx_mlp.inputs == [TensorInfo("x", "FP32", [-1, FEATURES])]
    assert onnx_mlp.outputs == [TensorInfo("probabilities", "FP32", [-1, 2])]
    assert onnx_mlp.labels is None
    assert onnx_mlp.feature_names is None
    assert onnx_mlp.metadata == {}
    for rows in (slice(0, 1), slice(100, 137), slice(0, 400)):
        inputs = {"x": X[rows]}
        check_close(onnx_mlp.predict(inputs), run_torch(mlp, inputs, ["probabilities"]))
    # float64 (as from JSON) is cast to the declared float32
    check_close(
        onnx_mlp.predict({"x": X[:5].astype(np.float64)}),
        run_torch(mlp, {"x": X[:5]}, ["probabilities"]),
    )


def test_onnx_several_inputs_and_outputs_with_variable_dims(
    point_cloud_onnx: tuple[PointCloud, Path],
) -> None:
    module, directory = point_cloud_onnx
    backend = load_backend(directory)
    assert backend.inputs == CLOUD_INPUTS
    assert backend.outputs == CLOUD_OUTPUTS
    names = [o.name for o in CLOUD_OUTPUTS]
    for batch, length, seed in ((1, 3, 1), (17, 7, 2), (40, 30, 3)):
        inputs = cloud(batch, length, seed)
        check_close(backend.predict(inputs), run_torch(module, inputs, names))
    inputs = cloud(4, 9)
    only = backend.predict(inputs, ["embedding"])
    check_close(only, {"embedding": run_torch(module, inputs, names)["embedding"]})


def test_onnx_from_scikit_learn(tmp_path: Path) -> None:
    model = LogisticRegression(max_iter=500).fit(X, Y3)
    initial = [("x", FloatTensorType([None, FEATURES]))]
    plain = convert_sklearn(model, initial_types=initial, options={id(model): {"zipmap": False}})
    backend = load_backend(version_dir(tmp_path / "1", {"model.onnx": plain.SerializeToString()}))
    assert [(o.name, o.datatype, o.shape) for o in backend.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 3]),
    ]
    result = backend.predict({"x": X[:50]})
    np.testing.assert_array_equal(result["label"], model.predict(X[:50]))
    np.testing.assert_allclose(result["probabilities"], model.predict_proba(X[:50]), **TOLERANCE)

    # The ZipMap output (a sequence of maps) of the default conversion is not served.
    zipmap = convert_sklearn(model, initial_types=initial)
    backend = load_backend(version_dir(tmp_path / "2", {"clf.onnx": zipmap.SerializeToString()}))
    assert [o.name for o in backend.outputs] == ["output_label"]
    np.testing.assert_array_equal(
        backend.predict({"x": X[:10]})["output_label"], model.predict(X[:10])
    )


# -- our model package ------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> tuple[LogisticRegression, Path]:
    model = LogisticRegression().fit(X, Y)
    root = tmp_path_factory.mktemp("package")
    exported = export_sklearn(model, {"x": X[:64]}, root / "export")
    spec = spec_from_events(ak.zip({name: X[:100, i] for i, name in enumerate(COLUMNS)}))
    path = write_package(
        root / "1", exported, spec=spec, labels=["background", "signal"], name="demo", params={}
    )
    return model, path


def test_model_package(package: tuple[LogisticRegression, Path]) -> None:
    model, path = package
    backend = load_backend(path)
    assert backend.platform == "onnxruntime_onnx"
    assert backend.inputs == [TensorInfo("x", "FP32", [-1, FEATURES])]
    assert backend.outputs == [TensorInfo("probabilities", "FP32", [-1, 2])]
    assert backend.labels == ["background", "signal"]
    assert backend.feature_names == COLUMNS
    assert backend.metadata["schema"] == "mlaas4hep.model"
    assert backend.metadata["name"] == "demo"
    result = backend.predict({"x": X[200:260]})
    np.testing.assert_allclose(
        result["probabilities"], model.predict_proba(X[200:260]), **TOLERANCE
    )


def test_model_package_damaged_or_inconsistent(
    package: tuple[LogisticRegression, Path], tmp_path: Path
) -> None:
    _, original = package
    copy = version_dir(tmp_path / "1", {p.name: p for p in original.iterdir() if p.is_file()})
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["inputs"][0]["shape"] = [-1, FEATURES + 1]
    (copy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match=r"model.onnx has inputs .*metadata.json declares"):
        load_backend(copy)
    with (copy / "model.onnx").open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(ModelLoadError, match=r"model.onnx is corrupted"):
        load_backend(copy)


# -- TorchScript --------------------------------------------------------------------


def test_torchscript_traced_without_description(mlp_files: Path, mlp: MLP, tmp_path: Path) -> None:
    backend = load_backend(version_dir(tmp_path / "1", {"model.pt": mlp_files / "model.pt"}))
    assert backend.platform == "pytorch_libtorch"
    # No description: forward()'s argument names, FP32 of unknown shape.
    assert backend.inputs == [TensorInfo("x", "FP32", [-1])]
    assert backend.outputs == [TensorInfo("output__0", "FP32", [-1])]
    for rows in (slice(0, 1), slice(10, 73)):
        inputs = {"x": X[rows]}
        check_close(backend.predict(inputs), run_torch(mlp, inputs, ["output__0"]))
    check_close(backend.predict({"input__0": X[:4]}), run_torch(mlp, {"x": X[:4]}, ["output__0"]))
    with pytest.raises(BadRequest, match="input 'x' is a scalar"):
        backend.predict({"x": np.float32(1)})
    with pytest.raises(BadRequest, match="the model cannot evaluate these inputs"):
        backend.predict({"x": X[:3, :5]})


def test_torchscript_point_cloud_described(
    point_cloud: torch.jit.ScriptModule, tmp_path: Path
) -> None:
    path = tmp_path / "cloud.torchscript"
    point_cloud.save(str(path))
    params = {
        "inputs": [i.to_dict() for i in CLOUD_INPUTS],
        "outputs": [o.to_dict() for o in CLOUD_OUTPUTS],
    }
    backend = load_backend(version_dir(tmp_path / "1", {path.name: path}), params=params)
    assert backend.inputs == CLOUD_INPUTS
    assert backend.outputs == CLOUD_OUTPUTS
    names = [o.name for o in CLOUD_OUTPUTS]
    for batch, length, seed in ((1, 4, 5), (25, 11, 6)):
        inputs = cloud(batch, length, seed)
        check_close(backend.predict(inputs), run_torch(point_cloud, inputs, names))
    inputs = cloud(3, 6)
    triton_names = {f"input__{i}": array for i, array in enumerate(inputs.values())}
    check_close(backend.predict(triton_names), run_torch(point_cloud, inputs, names))
    with pytest.raises(BadRequest, match=r"input 'features' has shape \[3, 4, 6\], expected"):
        backend.predict({**inputs, "features": inputs["features"][:, :4]})
    with pytest.raises(BadRequest, match="different batch sizes"):
        backend.predict({**inputs, "mask": inputs["mask"][:2]})
    with pytest.raises(BadRequest, match="given twice"):
        backend.predict({**inputs, "input__0": inputs["points"]})
    read_only = {
        name: np.frombuffer(a.tobytes(), np.float32).reshape(a.shape) for name, a in inputs.items()
    }
    check_close(backend.predict(read_only), run_torch(point_cloud, inputs, names))

    with pytest.raises(ModelLoadError, match=r"declares 2 input\(s\), forward\(\) takes 3"):
        load_backend(tmp_path / "1", params={"inputs": params["inputs"][:2]})
    with pytest.raises(ModelLoadError, match="returned 2 output"):
        load_backend(tmp_path / "1", params={"outputs": params["outputs"][:1]}).predict(inputs)


class Named(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"total": x.sum(1), "double": 2 * x}


def test_torchscript_dict_outputs(tmp_path: Path) -> None:
    path = tmp_path / "1" / "model.pth"
    path.parent.mkdir()
    torch.jit.script(Named()).save(str(path))
    with pytest.raises(ModelLoadError, match="describe the outputs"):
        load_backend(path.parent)
    outputs = [{"name": "double", "datatype": "FP32", "shape": [-1, 3]}]
    backend = load_backend(path.parent, params={"outputs": outputs})
    x = X[:5, :3]
    check_close(backend.predict({"x": x}), {"double": 2 * x})


# -- XGBoost ------------------------------------------------------------------------

XGB_CASES = {
    "binary": ({"objective": "binary:logistic"}, Y, "model.json"),
    "multiclass": ({"objective": "multi:softprob", "num_class": 3}, Y3, "model.ubj"),
    "regression": ({"objective": "reg:squarederror"}, X[:, 0] - X[:, 1], "trees.xgb"),
}


def train_booster(kind: str, directory: Path) -> Any:
    """A 10-tree booster of ``kind``, saved into ``directory`` under its case's file name."""
    params, labels, file_name = XGB_CASES[kind]
    train = xgboost.DMatrix(X, label=labels, feature_names=COLUMNS)
    model = xgboost.train({**params, "max_depth": 3, "nthread": 1}, train, num_boost_round=10)
    directory.mkdir(parents=True, exist_ok=True)
    # save_raw: save_model warns about the unknown format of a .xgb name
    (directory / file_name).write_bytes(
        model.save_raw("ubj" if file_name != "model.json" else "json")
    )
    return model


def xgboost_reference(kind: str, model: Any, rows: np.ndarray) -> np.ndarray:
    """What the backend must give: XGBoost's own prediction, as columns."""
    predicted = model.predict(xgboost.DMatrix(rows, feature_names=COLUMNS))
    if kind == "binary":
        return np.column_stack([1 - predicted, predicted])
    return predicted.reshape(len(rows), -1)


@pytest.fixture(scope="module", params=list(XGB_CASES))
def booster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Any, Backend]:
    directory = tmp_path_factory.mktemp("xgb") / "1"
    model = train_booster(request.param, directory)
    return request.param, model, load_backend(directory, threads=1)


def test_xgboost(booster: tuple[str, Any, Backend]) -> None:
    kind, model, backend = booster
    assert backend.platform == "xgboost"
    assert backend.inputs == [TensorInfo("input", "FP32", [-1, FEATURES])]
    assert backend.feature_names == COLUMNS
    output = {
        "binary": TensorInfo("probabilities", "FP32", [-1, 2]),
        "multiclass": TensorInfo("probabilities", "FP32", [-1, 3]),
        "regression": TensorInfo("predictions", "FP32", [-1, 1]),
    }[kind]
    assert backend.outputs == [output]
    rows = X[150:190]
    check_close(
        backend.predict({"input": rows}), {output.name: xgboost_reference(kind, model, rows)}
    )
    assert backend.predict({"input": X[:0]})[output.name].shape == (0, output.shape[1])


# -- TensorFlow -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError:
        if IN_CI:
            pytest.fail("tensorflow is not installed (required under CI=true)")
        pytest.skip("tensorflow is not installed")
    return tf


@dataclass
class TensorFlowModels:
    saved_model: Path
    reference: Callable[[np.ndarray], dict[str, np.ndarray]]
    frozen: Path
    frozen_reference: Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def tf_models(tf: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TensorFlowModels]:
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(FEATURES, 3)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)

    class Classifier(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weights)
            self.b = tf.Variable(bias)

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="x")])
        def __call__(self, x: Any) -> dict[str, Any]:
            logits = x @ self.w + self.b
            return {"probabilities": tf.nn.softmax(logits), "score": tf.reduce_max(logits, 1)}

    module = Classifier()
    saved = tmp_path_factory.mktemp("savedmodel") / "1"
    tf.saved_model.save(module, str(saved / "model.savedmodel"), signatures=module.__call__)

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, FEATURES], name="input_1")
        logits = tf.matmul(x, tf.constant(weights)) + tf.constant(bias)
        output = tf.nn.softmax(logits, name="output_node0")
    frozen = version_dir(
        tmp_path_factory.mktemp("frozen") / "1",
        {
            "model.pb": graph.as_graph_def().SerializeToString(),
            "labels.txt": "bkg\nttH\nttbb\n",
            "params.json": json.dumps(
                {
                    "name": "frozen",
                    "model": "model.pb",
                    "labels": "labels.txt",
                    "inputNode": "input_1",
                    "outputNode": "output_node0",
                }
            ),
        },
    )
    session = tf.compat.v1.Session(graph=graph)

    def call(rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in module(tf.constant(rows)).items()}

    def run(rows: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(output, {x: rows}))

    yield TensorFlowModels(saved, call, frozen, run)
    session.close()


def test_tensorflow_saved_model(tf_models: TensorFlowModels) -> None:
    backend = load_backend(tf_models.saved_model, threads=2)
    assert backend.platform == "tensorflow_savedmodel"
    assert backend.inputs == [TensorInfo("x", "FP32", [-1, FEATURES])]
    assert sorted(backend.outputs, key=lambda o: o.name) == [
        TensorInfo("probabilities", "FP32", [-1, 3]),
        TensorInfo("score", "FP32", [-1]),
    ]
    for rows in (X[:1], X[30:90]):
        expected = tf_models.reference(rows)
        actual = backend.predict({"x": rows})
        check_close(actual, {name: expected[name] for name in actual})
    check_close(
        backend.predict({"x": X[:3]}, ["score"]), {"score": tf_models.reference(X[:3])["score"]}
    )


def test_tensorflow_frozen_graph(tf_models: TensorFlowModels) -> None:
    backend = load_backend(tf_models.frozen)
    assert backend.platform == "tensorflow_graphdef"
    assert backend.inputs == [TensorInfo("input_1", "FP32", [-1, FEATURES])]
    assert backend.outputs == [TensorInfo("output_node0", "FP32", [-1, 3])]
    assert backend.labels == ["bkg", "ttH", "ttbb"]
    assert backend.metadata["name"] == "frozen"
    for rows in (X[:1], X[7:77]):
        check_close(
            backend.predict({"input_1": rows}), {"output_node0": tf_models.frozen_reference(rows)}
        )
    backend.close()


def test_tensorflow_frozen_graph_needs_node_names(
    tf_models: TensorFlowModels, tmp_path: Path
) -> None:
    graph = tf_models.frozen / "model.pb"
    bare = version_dir(tmp_path / "1", {"frozen.pb": graph})
    with pytest.raises(ModelLoadError, match="inputNode"):
        load_backend(bare)
    with pytest.raises(
        ModelLoadError, match=r"no input node 'nope' \(its placeholders: \['input_1'\]\)"
    ):
        load_backend(bare, params={"inputNode": "nope", "outputNode": "output_node0"})
    # Triton-style tensor names, and the ':0' form, name the nodes too
    nodes = {
        "inputs": [{"name": "input_1:0", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "output_node0", "datatype": "FP32", "shape": [-1, 3]}],
    }
    backend = load_backend(bare, params=nodes)
    assert [i.name for i in backend.inputs] == ["input_1"]
    garbage = version_dir(tmp_path / "2", {"model.pb": b"\x08garbage" * 10, "params.json": "{}"})
    with pytest.raises(ModelLoadError, match=r"model\.pb is not a TensorFlow frozen graph"):
        load_backend(garbage, params={"inputNode": "a", "outputNode": "b"})


# -- input checks -----------------------------------------------------------------


def test_inputs_are_checked(onnx_mlp: Backend) -> None:
    with pytest.raises(BadRequest, match=r"input 'x' has shape \[3, 7\], expected \[-1, 8\]"):
        onnx_mlp.predict({"x": X[:3, :7]})
    with pytest.raises(BadRequest, match=r"input 'x' has shape \[8\], expected \[-1, 8\]"):
        onnx_mlp.predict({"x": X[0]})
    with pytest.raises(BadRequest, match=r"takes inputs \['x'\]: missing \['x'\]$"):
        onnx_mlp.predict({})
    with pytest.raises(BadRequest, match=r"missing \['x'\], unexpected \['y'\]"):
        onnx_mlp.predict({"y": X[:3]})
    with pytest.raises(BadRequest, match=r"unexpected \['mask'\]"):
        onnx_mlp.predict({"x": X[:3], "mask": X[:3]})
    with pytest.raises(BadRequest, match="input 'x' has dtype <U1, expected numbers"):
        onnx_mlp.predict({"x": np.full((2, FEATURES), "a")})
    with pytest.raises(BadRequest, match=r"unknown output\(s\) \['nope'\]"):
        onnx_mlp.predict({"x": X[:3]}, ["nope"])
    checked = onnx_mlp.check_inputs({"x": X[:3].tolist()})  # type: ignore[dict-item]
    assert checked["x"].dtype == np.float32
    assert checked["x"].flags.c_contiguous


def integer_model() -> bytes:
    """An ONNX model with INT32 and BOOL inputs, returned as they come."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["ids"], ["ids_out"]),
            helper.make_node("Not", ["flag"], ["flag_out"]),
        ],
        "integers",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", 3]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("ids_out", TensorProto.INT32, ["batch", 3]),
            helper.make_tensor_value_info("flag_out", TensorProto.BOOL, ["batch"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_integer_and_bool_inputs_are_cast_only_when_values_fit(tmp_path: Path) -> None:
    backend = load_backend(version_dir(tmp_path / "1", {"model.onnx": integer_model()}))
    assert [(i.name, i.datatype, i.shape) for i in backend.inputs] == [
        ("ids", "INT32", [-1, 3]),
        ("flag", "BOOL", [-1]),
    ]
    result = backend.predict({"ids": np.array([[1.0, 2.0, -3.0]]), "flag": np.array([1])})
    np.testing.assert_array_equal(result["ids_out"], np.array([[1, 2, -3]], np.int32))
    assert result["ids_out"].dtype == np.int32
    np.testing.assert_array_equal(result["flag_out"], [False])
    flag = np.array([True])
    with pytest.raises(BadRequest, match="input 'ids' has non-integer values"):
        backend.predict({"ids": np.array([[1.5, 2, 3]]), "flag": flag})
    with pytest.raises(BadRequest, match="input 'ids' has values outside the range of int32"):
        backend.predict({"ids": np.array([[2**40, 0, 0]]), "flag": flag})
    with pytest.raises(BadRequest, match="input 'flag' has values other than 0 and 1"):
        backend.predict({"ids": np.zeros((1, 3), np.int32), "flag": np.array([2])})


# -- load failures ------------------------------------------------------------------


def test_load_failures_name_the_file(tmp_path: Path, mlp_files: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no model file in empty: it holds nothing; accepted"):
        load_backend(version_dir(tmp_path / "empty", {}))
    with pytest.raises(ModelLoadError, match=r"it holds \['README.md', 'model.h5'\]; accepted"):
        load_backend(version_dir(tmp_path / "other", {"README.md": "hi", "model.h5": b"x"}))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_backend(tmp_path / "missing")
    garbage = b"\x00\x01garbage\xff" * 20
    with pytest.raises(ModelLoadError, match=r"^model.onnx cannot be loaded by ONNX Runtime: .+"):
        load_backend(version_dir(tmp_path / "onnx", {"model.onnx": garbage}))
    with pytest.raises(ModelLoadError, match=r"^model.pt cannot be loaded by torch.jit.load: .+"):
        load_backend(version_dir(tmp_path / "pt", {"model.pt": garbage}))
    with pytest.raises(
        ModelLoadError, match=r"^model.json cannot be loaded by XGBoost: .+"
    ) as info:
        load_backend(version_dir(tmp_path / "xgb", {"model.json": "{garbage"}))
    assert "Stack trace" not in str(info.value)
    two = version_dir(tmp_path / "two", {"a.onnx": mlp_files / "model.onnx", "b.onnx": garbage})
    with pytest.raises(ModelLoadError, match=r"several model files \['a.onnx', 'b.onnx'\]"):
        load_backend(two)
    escape = version_dir(
        tmp_path / "escape", {"params.json": json.dumps({"model": "../onnx/model.onnx"})}
    )
    with pytest.raises(ModelLoadError, match="inside the model directory"):
        load_backend(escape)
    with pytest.raises(ModelLoadError, match=r"params\.json cannot be read"):
        load_backend(version_dir(tmp_path / "params", {"params.json": "{", "model.onnx": garbage}))
    bad = {"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1]}]}
    pt = version_dir(tmp_path / "described", {"model.pt": mlp_files / "model.pt"})
    with pytest.raises(ModelLoadError, match="input 'x' has datatype 'FLOAT'; known: FP16"):
        load_backend(pt, params=bad)


def test_tfaas_params_pick_the_model_and_labels(mlp_files: Path, tmp_path: Path) -> None:
    params = {"name": "mlp", "model": "net.onnx", "labels": "classes.txt"}
    directory = version_dir(
        tmp_path / "1",
        {
            "net.onnx": mlp_files / "model.onnx",
            "model.pt": mlp_files / "model.pt",  # ignored: params.json names the model
            "classes.txt": "background\nsignal\n",
            "params.json": json.dumps(params),
        },
    )
    backend = load_backend(directory)
    assert backend.platform == "onnxruntime_onnx"
    assert backend.labels == ["background", "signal"]
    assert backend.metadata == params
    (directory / "params.json").write_text(json.dumps({**params, "model": "model.pt"}))
    assert load_backend(directory).platform == "pytorch_libtorch"


def test_missing_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    train_booster("binary", tmp_path)
    monkeypatch.setitem(sys.modules, "xgboost", None)  # as if it were not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'mlaas4hep\[xgboost\]'"):
        load_backend(tmp_path)


def test_closed_backend_is_unavailable(mlp_files: Path, tmp_path: Path) -> None:
    backend = load_backend(version_dir(tmp_path / "1", {"model.onnx": mlp_files / "model.onnx"}))
    backend.close()
    with pytest.raises(Unavailable):
        backend.predict({"x": X[:2]})


# -- concurrency --------------------------------------------------------------------


@dataclass
class Served:
    backend: Backend
    input: str
    output: str
    reference: Callable[[np.ndarray], np.ndarray]


@pytest.fixture(params=["onnx", "torchscript", "xgboost", "savedmodel", "frozen"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Served:
    """A backend of a one-input model, with the framework's own prediction of one output."""
    name = request.param
    if name in {"onnx", "torchscript"}:
        files: Path = request.getfixturevalue("mlp_files")
        mlp: MLP = request.getfixturevalue("mlp")
        file, output = (
            ("model.onnx", "probabilities") if name == "onnx" else ("model.pt", "output__0")
        )
        backend = load_backend(version_dir(tmp_path / "1", {file: files / file}))
        return Served(
            backend, "x", output, lambda rows: run_torch(mlp, {"x": rows}, [output])[output]
        )
    if name == "xgboost":
        model = train_booster("multiclass", tmp_path / "1")
        return Served(
            load_backend(tmp_path / "1"),
            "input",
            "probabilities",
            lambda rows: xgboost_reference("multiclass", model, rows),
        )
    models: TensorFlowModels = request.getfixturevalue("tf_models")
    if name == "savedmodel":
        return Served(
            load_backend(models.saved_model),
            "x",
            "probabilities",
            lambda rows: models.reference(rows)["probabilities"],
        )
    return Served(load_backend(models.frozen), "input_1", "output_node0", models.frozen_reference)


def test_concurrent_predictions_get_their_own_results(served: Served) -> None:
    """8 threads × 50 calls, each with other data (and batch size), each its own result."""
    batches = [X[i % 300 : i % 300 + 1 + i % 40] + np.float32(i / 100) for i in range(400)]
    expected = [served.reference(rows) for rows in batches]

    def work(thread: int) -> list[bool]:
        calls = range(thread * 50, thread * 50 + 50)
        return [
            np.allclose(
                served.backend.predict({served.input: batches[i]})[served.output],
                expected[i],
                **TOLERANCE,
            )
            for i in calls
        ]

    with ThreadPoolExecutor(8) as pool:
        matches = [match for thread in pool.map(work, range(8)) for match in thread]
    assert len(matches) == 400
    assert all(matches)
