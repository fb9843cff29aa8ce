"""Model export to ONNX and native files, and the model package written from them.

Each framework's model is fitted briefly on random data, exported with one
batch and checked on another (of another size: the batch dimension is
dynamic), then packaged, loaded back and served.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.train import package as package_module
from mlaas4hep.train.export import (
    ExportedModel,
    ExportError,
    TensorInfo,
    check_onnx,
    export_keras,
    export_sklearn,
    export_torch,
    export_xgboost,
    framework_versions,
    predict_native,
)
from mlaas4hep.train.package import load_package, write_package
from mlaas4hep.transform.scan import spec_from_events
from mlaas4hep.transform.spec import FeatureSpec

os.environ.setdefault("KERAS_BACKEND", "torch")

FEATURES = 6
RNG = np.random.default_rng(7)
X = RNG.normal(size=(400, FEATURES)).astype(np.float32)
MASK = (RNG.random((400, FEATURES)) > 0.2).astype(np.float32)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
Y3 = np.digitize(X[:, 0] - X[:, 2], [-0.5, 0.5])
EXPORT = slice(0, 64)  # the batch the exporter checks
HELD_OUT = slice(300, 337)  # another batch, of another size


class SigmoidMLP(torch.nn.Module):
    """One probability column."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


class SoftmaxMLP(torch.nn.Module):
    """Two probability columns, with dropout (so eval mode matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 16),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(16, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


class Masked(torch.nn.Module):
    """Two inputs: features and the mask of the real (unpadded) ones."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(2 * FEATURES, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(torch.cat([x * mask, mask], dim=-1)), dim=-1)


def fit_torch(module: torch.nn.Module, inputs: dict[str, np.ndarray]) -> torch.nn.Module:
    """A few full-batch steps of Adam on the log-likelihood of ``Y``."""
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.05)
    tensors = [torch.from_numpy(a) for a in inputs.values()]
    target = torch.from_numpy(Y)
    module.train()
    for _ in range(20):
        optimiser.zero_grad()
        p = module(*tensors)
        if p.shape[1] == 1:
            loss = torch.nn.functional.binary_cross_entropy(p[:, 0], target.float())
        else:
            loss = torch.nn.functional.nll_loss(torch.log(p + 1e-7), target)
        loss.backward()
        optimiser.step()
    return module


def fit_keras() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(X, keras.utils.to_categorical(Y3, 3), epochs=2, batch_size=64, verbose=0)
    return model


def fit_keras_two_inputs() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((FEATURES,), name="features")
    mask = keras.Input((FEATURES,), name="real")
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Multiply()([x, mask]))
    model = keras.Model([x, mask], keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit([X, MASK], Y, epochs=2, batch_size=64, verbose=0)
    return model


def fit_sklearn() -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0).fit(X, Y3)


def fit_xgboost() -> Any:
    import xgboost

    model = xgboost.XGBClassifier(n_estimators=10, max_depth=3, random_state=0)
    model.fit(X, Y)
    # as if fitted on a DataFrame: the converter cannot read such names
    model.get_booster().feature_names = [f"var{i}" for i in range(FEATURES)]
    return model


@dataclass
class Case:
    """One framework's model and how to export it."""

    framework: str
    fit: Callable[[], Any]
    export: Callable[[Any, dict[str, np.ndarray], Path], ExportedModel]
    inputs: dict[str, np.ndarray]
    labels: list[str]


CASES = {
    "torch-sigmoid": Case(
        "torch",
        lambda: fit_torch(SigmoidMLP(), {"x": X}),
        export_torch,
        {"x": X},
        ["signal"],
    ),
    "torch-softmax": Case(
        "torch",
        lambda: fit_torch(SoftmaxMLP(), {"x": X}),
        export_torch,
        {"x": X},
        ["background", "signal"],
    ),
    "torch-two-inputs": Case(
        "torch",
        lambda: fit_torch(Masked(), {"x": X, "mask": MASK}),
        export_torch,
        {"x": X, "mask": MASK},
        ["background", "signal"],
    ),
    "keras": Case("keras", fit_keras, export_keras, {"x": X}, ["a", "b", "c"]),
    "keras-two-inputs": Case(
        "keras", fit_keras_two_inputs, export_keras, {"x": X, "mask": MASK}, ["signal"]
    ),
    "sklearn": Case("sklearn", fit_sklearn, export_sklearn, {"x": X}, ["a", "b", "c"]),
    "xgboost": Case("xgboost", fit_xgboost, export_xgboost, {"x": X}, ["background", "signal"]),
}


def rows(inputs: dict[str, np.ndarray], where: slice) -> dict[str, np.ndarray]:
    return {k: v[where] for k, v in inputs.items()}


@dataclass
class Exported:
    case: Case
    model: Any
    exported: ExportedModel


@pytest.fixture(scope="module", params=list(CASES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    case = CASES[request.param]
    model = case.fit()
    folder = tmp_path_factory.mktemp(request.param)
    return Exported(case, model, case.export(model, rows(case.inputs, EXPORT), folder / "export"))


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return spec_from_events(ak.zip({f"f{i}": X[:100, i] for i in range(FEATURES)}))


def test_onnx_reproduces_the_framework_on_another_batch(exported: Exported) -> None:
    case, result = exported.case, exported.exported
    held_out = rows(case.inputs, HELD_OUT)
    expected = predict_native(case.framework, exported.model, held_out)
    session = ort.InferenceSession(str(result.onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(case.inputs)
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    (actual,) = session.run(None, held_out)
    assert actual.shape == (37, len(case.labels) if case.labels != ["signal"] else 1)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    assert check_onnx(result.onnx, held_out, expected) <= 1e-4


def test_exported_model_describes_its_tensors(exported: Exported) -> None:
    case, result = exported.case, exported.exported
    columns = 1 if case.labels == ["signal"] else len(case.labels)
    assert result.framework == case.framework
    if case.framework == "torch":  # fitted in training mode, and left so
        assert exported.model.training
    assert result.inputs == [TensorInfo(n, "FP32", [-1, FEATURES]) for n in case.inputs]
    assert result.outputs == [TensorInfo("probabilities", "FP32", [-1, columns])]
    assert 0 <= result.max_deviation <= 1e-4
    model = onnx.load(result.onnx)
    if case.framework in {"torch", "keras"}:  # skl2onnx takes the lowest opset that works
        assert {o.domain: o.version for o in model.opset_import}[""] == 18
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert (
        result.native.name
        == {
            "torch": "model.pt",
            "keras": "model.keras",
            "sklearn": "model.joblib",
            "xgboost": "model.json",
        }[case.framework]
    )


def test_package_round_trip(exported: Exported, spec: FeatureSpec, tmp_path: Path) -> None:
    case, result = exported.case, exported.exported
    plot = tmp_path / "roc.png"
    plot.write_bytes(b"\x89PNG not really")
    params = {"epochs": 2, "lr": np.float32(0.5), "layers": (16, 2), "bad": float("nan")}
    path = write_package(
        tmp_path / "package",
        result,
        spec=spec,
        labels=case.labels,
        name="demo",
        params=params,
        metrics={"auc": np.float64(0.75), "loss": [0.5, float("inf")]},
        plots=[plot],
    )
    held_out = rows(case.inputs, HELD_OUT)
    expected = predict_native(case.framework, exported.model, held_out)

    package = load_package(path)
    assert package.framework == case.framework
    assert package.labels == case.labels
    assert package.inputs == result.inputs
    assert package.outputs == result.outputs
    assert package.spec.to_dict() == spec.to_dict()
    np.testing.assert_allclose(package.predict(held_out), expected, rtol=1e-4, atol=1e-5)
    native = package.load_native()
    np.testing.assert_allclose(
        predict_native(case.framework, native, held_out), expected, rtol=1e-6, atol=1e-6
    )

    meta = package.metadata
    assert meta["schema"] == "mlaas4hep.model"
    assert meta["version"] == 1
    assert meta["name"] == "demo"
    assert meta["created"].endswith("+00:00")
    assert meta["inputs"] == [i.to_dict() for i in result.inputs]
    assert meta["outputs"][0]["name"] == "probabilities"
    assert meta["layout"] == "flat"
    assert meta["columns"] == spec.columns() == [f"f{i}" for i in range(FEATURES)]
    assert meta["training"] == {
        "data_hash": spec.data_hash,
        "params": {"epochs": 2, "lr": 0.5, "layers": [16, 2], "bad": None},
    }
    assert meta["files"]["onnx"] == "model.onnx"
    assert meta["files"]["native"] == result.native.name
    assert meta["plots"] == ["plots/roc.png"]
    assert meta["versions"]["numpy"] == np.__version__
    assert meta["max_onnx_deviation"] == result.max_deviation
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {
        "metadata.json"
    }
    assert set(meta["checksums"]) == on_disk
    assert (path / "labels.txt").read_text().splitlines() == case.labels
    assert json.loads((path / "metrics.json").read_text()) == {"auc": 0.75, "loss": [0.5, None]}


# -- failures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """A quick export (logistic regression) for the tests of failures."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(X, Y)
    return export_sklearn(model, {"x": X[EXPORT]}, tmp_path_factory.mktemp("small"))


@pytest.fixture
def package_path(small: ExportedModel, spec: FeatureSpec, tmp_path: Path) -> Path:
    return write_package(
        tmp_path / "package", small, spec=spec, labels=["b", "s"], name="small", params={}
    )


def test_check_onnx_fails_loudly(small: ExportedModel) -> None:
    example = {"x": X[HELD_OUT]}
    good = check_onnx(small.onnx, example, np.zeros((37, 2), np.float32) + 0.5, atol=1.0)
    assert 0 < good <= 0.5
    wrong = np.full((37, 2), 0.5, dtype=np.float32)
    with pytest.raises(
        ExportError, match=r"model\.onnx disagrees .* max \|deviation\| .*atol=1e-05"
    ):
        check_onnx(small.onnx, example, wrong)
    with pytest.raises(ExportError, match=r"shaped \[37, 2\], the framework \[37, 3\]"):
        check_onnx(small.onnx, example, np.zeros((37, 3), np.float32))
    with pytest.raises(ExportError, match=r"takes inputs \['x'\], the example has \['y'\]"):
        check_onnx(small.onnx, {"y": X[HELD_OUT]}, wrong)


def test_export_rejects_bad_examples(tmp_path: Path) -> None:
    module = SigmoidMLP()
    with pytest.raises(ExportError, match="at least 2 events"):
        export_torch(module, {"x": X[:1]}, tmp_path)
    with pytest.raises(ExportError, match="different batch sizes"):
        export_torch(Masked(), {"x": X[:4], "mask": MASK[:5]}, tmp_path)
    with pytest.raises(ExportError, match="shaped \\[batch, classes\\]"):
        export_torch(torch.nn.Flatten(start_dim=0), {"x": X[:4]}, tmp_path)
    with pytest.raises(ExportError, match="takes one 2-D input"):
        export_sklearn(fit_sklearn(), {"x": X[:4], "mask": MASK[:4]}, tmp_path)


def test_corrupted_file_is_detected(package_path: Path) -> None:
    onnx_file = package_path / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"model\.onnx is corrupted") as error:
        load_package(package_path)
    assert error.value.path == str(onnx_file)


def test_missing_packaged_file_is_detected(package_path: Path) -> None:
    (package_path / "labels.txt").unlink()
    with pytest.raises(DataError, match=r"labels\.txt is missing"):
        load_package(package_path)


def test_missing_or_wrong_metadata(package_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a model package: metadata\.json is missing"):
        load_package(tmp_path / "nowhere")
    metadata = package_path / "metadata.json"
    body = json.loads(metadata.read_text())
    metadata.write_text(json.dumps({**body, "version": 7}))
    with pytest.raises(ConfigError, match="package version 7; this release reads 1"):
        load_package(package_path)
    metadata.write_text(json.dumps({**body, "schema": "other"}))
    with pytest.raises(ConfigError, match="not model package metadata"):
        load_package(package_path)
    metadata.write_text(json.dumps({k: v for k, v in body.items() if k != "checksums"}))
    with pytest.raises(ConfigError, match=r"metadata\.json lacks checksums"):
        load_package(package_path)
    metadata.write_text("{")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_package(package_path)
    metadata.unlink()
    with pytest.raises(ConfigError, match=r"metadata\.json is missing"):
        load_package(package_path)


def test_predict_checks_its_inputs(package_path: Path) -> None:
    package = load_package(package_path)
    assert package.predict({"x": X[:3].astype(np.float64)}).shape == (3, 2)
    with pytest.raises(
        ConfigError, match=r"takes inputs \['x'\]: missing \['x'\], unexpected \['y'\]"
    ):
        package.predict({"y": X[:3]})
    with pytest.raises(ConfigError, match=r"shape \[3, 5\], expected \[-1, 6\]"):
        package.predict({"x": X[:3, :5]})


def test_write_package_replaces_only_packages(
    small: ExportedModel, spec: FeatureSpec, tmp_path: Path
) -> None:
    def write(target: Path, **changes: Any) -> Path:
        arguments: dict[str, Any] = {
            "spec": spec,
            "labels": ["b", "s"],
            "name": "small",
            "params": {},
            **changes,
        }
        return write_package(target, small, **arguments)

    target = write(tmp_path / "package")
    assert load_package(write(target, name="again")).metadata["name"] == "again"

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and not a model package"):
        write(occupied)
    assert (occupied / "notes.txt").read_text() == "mine"

    with pytest.raises(ConfigError, match="3 labels"):
        write(tmp_path / "labels", labels=["a", "b", "c"])
    with pytest.raises(ConfigError, match="does not exist"):
        write(tmp_path / "plots", plots=[tmp_path / "missing.png"])
    assert not (tmp_path / "labels").exists()
    assert not (tmp_path / "plots").exists()


def test_failed_write_leaves_nothing(
    small: ExportedModel, spec: FeatureSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> dict[str, str]:
        raise OSError("disk full")

    target = tmp_path / "package"
    write_package(target, small, spec=spec, labels=["b", "s"], name="first", params={})
    monkeypatch.setattr(package_module, "framework_versions", broken)
    with pytest.raises(OSError, match="disk full"):
        write_package(target, small, spec=spec, labels=["b", "s"], name="second", params={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]
    assert load_package(target).metadata["name"] == "first"


def test_export_directory_may_become_the_package(spec: FeatureSpec, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    folder = tmp_path / "model"
    result = export_sklearn(LogisticRegression().fit(X, Y), {"x": X[EXPORT]}, folder)
    write_package(folder, result, spec=spec, labels=["b", "s"], name="here", params={})
    assert load_package(folder).predict({"x": X[:4]}).shape == (4, 2)


def test_framework_versions() -> None:
    versions = framework_versions()
    assert {"mlaas4hep", "numpy", "onnx", "onnxruntime", "torch", "sklearn", "xgboost"} <= set(
        versions
    )
    assert versions["numpy"] == np.__version__
