"""The training workflow end to end: ROOT files → trained model → model package.

Models train on the generated signal / background data; every claimed number is
checked against an independent computation (uproot + the spec's transform +
ONNX Runtime + scikit-learn).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import uproot
from sklearn.metrics import roc_auc_score

from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.train.config import TrainConfig, load_config
from mlaas4hep.train.loaders import EventBatches
from mlaas4hep.train.metrics import read_metrics
from mlaas4hep.train.package import load_package
from mlaas4hep.train.split import split_sources
from mlaas4hep.train.workflow import train
from mlaas4hep.transform.scan import identify_inputs
from mlaas4hep.transform.vector import VectorTransform

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
COMMAND = [sys.executable, "-c", "from mlaas4hep.cli import main; main()"]
BRANCHES = "Jet_*,Muon_*,Electron_*,MET_*,PV_npvs,nJet"
FAST = TrainConfig(branches=BRANCHES, epochs=4, step_size=4000, plots=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train")
    generate_dataset(folder, n_events=8000, n_files=2, seed=11)
    return folder


def write_model(folder: Path, body: str) -> Path:
    path = folder / "model.py"
    path.write_text(body)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=600, check=False
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    message = " ".join(result.stderr.split())
    for fragment in fragments:
        assert fragment in message, message


def independent_test_auc(dataset: Path, package_dir: Path) -> float:
    """The test split read by hand (uproot), transformed by the spec, scored by ONNX Runtime."""
    package = load_package(package_dir)
    sources = resolve_sources(str(dataset / "files.txt"), labels=str(dataset / "labels.txt"))
    limited, _ = identify_inputs(sources, "Events", -1)
    test = split_sources(limited, (0.7, 0.15, 0.15))["test"]
    vector = VectorTransform(package.spec)
    labels, scores = [], []
    for source in test:
        events = uproot.open(source.url)["Events"].arrays(
            package.spec.source_branches,
            entry_start=source.entry_start,
            entry_stop=source.entry_stop,
        )
        flat = vector.flat(events)
        names = [i.name for i in package.inputs]
        feeds = {"x": flat.x, "mask": flat.mask}
        probabilities = package.predict({n: feeds[n] for n in names})
        scores.append(probabilities[:, -1])
        labels.append(np.full(len(events), source.label))
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))


@pytest.mark.slow
@pytest.mark.parametrize("example", ["ex_pytorch.py", "ex_keras.py"])
def test_seed_examples_train_through_the_cli(dataset: Path, tmp_path: Path, example: str) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "train", "--files", str(dataset / "files.txt"), "--labels", str(dataset / "labels.txt"),
        "--model", str(EXAMPLES / example), "--params", str(EXAMPLES / "params.json"),
        "--fout", str(out), "--epochs", "4", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "model package written to" in result.stdout
    assert "cut-based baseline" in result.stdout
    metrics = read_metrics(out / "metrics.json")
    test_auc = metrics["splits"]["test"]["auc"]
    assert test_auc >= 0.85
    assert metrics["extra"]["baseline"]["auc"] < test_auc - 0.05  # the model beats one cut
    assert test_auc == pytest.approx(independent_test_auc(dataset, out / "model"), abs=1e-5)
    assert {p.name for p in (out / "plots").iterdir()} == {"roc.png", "scores.png", "losses.png"}
    package = load_package(out / "model")
    assert package.framework == ("torch" if "pytorch" in example else "keras")
    assert package.labels == ["background", "signal"]
    assert (out / "model" / ("model.pt" if "pytorch" in example else "model.keras")).is_file()


def test_mlp_package_matches_the_framework_and_loads_back(dataset: Path, tmp_path: Path) -> None:
    result = train(
        str(dataset / "files.txt"), str(dataset / "labels.txt"), EXAMPLES / "mlp.py",
        config=FAST, out=tmp_path / "run",
    )  # fmt: skip
    assert result is not None
    assert result.splits["test"].auc >= 0.85
    package = load_package(result.package)
    assert [i.name for i in package.inputs] == ["x"]  # a plain MLP takes no mask
    assert package.spec.pad_value == 0.0
    batch = next(iter(EventBatches(split_test(dataset), package.spec, batch_size=300)))
    native = package.load_native()
    with torch.no_grad():
        expected = native(torch.from_numpy(batch["x"])).numpy()
    np.testing.assert_allclose(package.predict({"x": batch["x"]}), expected, rtol=1e-4, atol=1e-5)
    assert np.allclose(expected.sum(axis=1), 1)
    metadata = json.loads((result.package / "metadata.json").read_text())
    assert metadata["training"]["data_hash"] == package.spec.data_hash
    assert metadata["framework"] == "torch"


def split_test(dataset: Path) -> list[Source]:
    sources = resolve_sources(str(dataset / "files.txt"), labels=str(dataset / "labels.txt"))
    return split_sources(identify_inputs(sources, "Events", -1)[0], (0.7, 0.15, 0.15))["test"]


@pytest.mark.slow
def test_grouped_deepsets_trains_on_pf_candidates(dataset: Path, tmp_path: Path) -> None:
    config, _ = load_config(config=EXAMPLES / "grouped.yaml", overrides={"plots": False})
    result = train(
        str(dataset / "files.txt"), str(dataset / "labels.txt"), EXAMPLES / "deepsets.py",
        config=config, out=tmp_path / "run",
    )  # fmt: skip
    assert result is not None
    assert result.splits["test"].auc > 0.75
    package = load_package(result.package)
    assert [i.name for i in package.inputs] == ["event", "x_PFCands", "mask_PFCands"]
    assert package.inputs[1].shape[:2] == [-1, 8]  # 8 PFCands branches
    assert package.spec.layout == "grouped"


def test_xgboost_trains_and_exports(dataset: Path, tmp_path: Path) -> None:
    result = train(
        str(dataset / "files.txt"), str(dataset / "labels.txt"), EXAMPLES / "xgb.py",
        config=FAST, out=tmp_path / "run",
    )  # fmt: skip
    assert result is not None
    assert result.framework == "xgboost"
    assert result.splits["test"].auc >= 0.85
    assert result.history.val_loss  # the evaluation set's log-loss curve
    package = load_package(result.package)
    assert package.native_path.name == "model.json"
    assert result.splits["test"].auc == pytest.approx(
        independent_test_auc(dataset, result.package), abs=1e-5
    )


def test_resume_continues_from_the_last_checkpoint(dataset: Path, tmp_path: Path) -> None:
    config = replace(FAST, epochs=2, patience=None, nevts=4000)
    out = tmp_path / "run"
    first = train(
        str(dataset / "files.txt"),
        str(dataset / "labels.txt"),
        EXAMPLES / "mlp.py",
        config=config,
        out=out,
    )
    assert first is not None
    assert len(first.history.train_loss) == 2
    more = replace(config, epochs=3)
    resumed = train(
        str(dataset / "files.txt"),
        str(dataset / "labels.txt"),
        EXAMPLES / "mlp.py",
        config=more,
        out=out,
        resume=True,
    )
    assert resumed is not None
    assert resumed.history.train_loss[:2] == first.history.train_loss
    assert len(resumed.history.train_loss) == 3
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(
            str(dataset / "files.txt"),
            str(dataset / "labels.txt"),
            EXAMPLES / "mlp.py",
            config=more,
            out=tmp_path / "new",
            resume=True,
        )


def test_early_stopping_keeps_the_best_epoch(dataset: Path, tmp_path: Path) -> None:
    # a learning rate this small never improves the validation loss by min_delta
    config = replace(FAST, epochs=10, patience=2, min_delta=0.05, learning_rate=1e-9, nevts=4000)
    result = train(
        str(dataset / "files.txt"),
        str(dataset / "labels.txt"),
        EXAMPLES / "mlp.py",
        config=config,
        out=tmp_path / "run",
    )
    assert result is not None
    assert result.history.stopped_early
    assert len(result.history.train_loss) == 3
    assert result.history.best_epoch == 0


def test_splits_are_deterministic_disjoint_and_complete() -> None:
    sources = [
        Source(url=f"f{i}.root", label=i % 2, entry_stop=n) for i, n in enumerate([1000, 7, 1])
    ]
    first = split_sources(sources, (0.6, 0.2, 0.2))
    assert first == split_sources(sources, (0.6, 0.2, 0.2))
    for i, n in enumerate([1000, 7, 1]):
        covered = [
            e for split in first.values() for s in split if s.url == f"f{i}.root"
            for e in range(s.entry_start, s.entry_stop or 0)
        ]  # fmt: skip
        assert sorted(covered) == list(range(n))
    assert [(s.entry_start, s.entry_stop) for s in first["train"]][:1] == [(0, 600)]
    with pytest.raises(ConfigError, match="sum to 1"):
        split_sources(sources, (0.5, 0.2, 0.2))


def test_params_json_keys_and_config_files(tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({
        "nevts": 3000, "chunk_size": 1000, "epochs": 7, "batch_size": 64, "shuffle": False,
        "branch": "Events", "selected_branches": "Jet_pt,MET_pt", "exclude_branches": "",
        "identifier": "run,event", "redirector": "root://cms-xrd-global.cern.ch", "verbose": 2,
        "hist": "pdfs", "epoch": 3, "lerning_rate": 1,
    }))  # fmt: skip
    config, warnings = load_config(params)
    assert (config.nevts, config.step_size, config.epochs, config.batch_size) == (3000, 1000, 7, 64)
    assert (config.tree, config.branches, config.exclude) == ("Events", "Jet_pt,MET_pt", None)
    assert config.identifiers == "run,event"
    assert config.shuffle is False
    assert len(warnings) == 1
    assert "'epoch'" in warnings[0]
    assert "'lerning_rate' (did you mean 'learning_rate'?)" in warnings[0]
    yaml_config = tmp_path / "train.yaml"
    yaml_config.write_text("epochs: 2\nlayout: grouped\nsplit: [0.8, 0.1, 0.1]\n")
    merged, _ = load_config(params, yaml_config, {"batch_size": 32})
    assert (merged.epochs, merged.layout, merged.split, merged.batch_size) == (
        2,
        "grouped",
        (0.8, 0.1, 0.1),
        32,
    )
    yaml_config.write_text("epochz: 2\n")
    with pytest.raises(ConfigError, match="unknown keys 'epochz' \\(did you mean 'epochs'\\?\\)"):
        load_config(config=yaml_config)
    yaml_config.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match="epochs must be int, got 'many'"):
        load_config(config=yaml_config)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("import torch\n", ["defines no function 'model'", "def model(idim)"]),
        (
            "import torch\ndef model(idim):\n    return torch.nn.Linear(idim + 3, 1)\n",
            ["does not accept the data", "x [", "features.json", "mat1 and mat2"],
        ),
        (
            "import keras\ndef model(idim):\n    m = keras.Sequential([keras.Input((idim + 1,)), keras.layers.Dense(1, activation='sigmoid')])\n    m.compile(loss='binary_crossentropy')\n    return m\n",
            ["takes", "inputs, the data has", "columns"],
        ),
        ("def model(idim):\n    return 42\n", ["returned int", "torch.nn.Module"]),
        ("def model(idim):\n    raise RuntimeError('boom')\n", ["failed: RuntimeError: boom"]),
    ],
)
def test_bad_model_files_are_reported(
    dataset: Path, tmp_path: Path, body: str, fragments: list[str]
) -> None:
    model = write_model(tmp_path, body)
    result = run_cli(
        "train", "--files", str(dataset / "files.txt"), "--labels", str(dataset / "labels.txt"),
        "--model", str(model), "--fout", str(tmp_path / "run"), "--nevts", "2000", "--quiet",
    )  # fmt: skip
    assert_clean_error(result, str(model.name), *fragments)
    assert not (tmp_path / "run" / "model").exists()


def test_bad_inputs_are_reported(dataset: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n0\n1\n")
    result = run_cli(
        "train", "--files", str(dataset / "files.txt"), "--labels", str(labels),
        "--model", str(EXAMPLES / "mlp.py"), "--quiet",
    )  # fmt: skip
    assert_clean_error(result, "label", "3", "4")
    params = tmp_path / "params.json"
    params.write_text(
        '{"nevts": 2000, "epochs": 1, "colour": "blue", "selected_branches": "MET_pt,nJet"}'
    )
    result = run_cli(
        "train", "--files", str(dataset / "files.txt"), "--labels", str(dataset / "labels.txt"),
        "--model", str(EXAMPLES / "mlp.py"), "--params", str(params), "--fout", str(tmp_path / "r"), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "unknown keys ignored: 'colour'" in " ".join(result.stderr.split())
    missing = run_cli(
        "train",
        "--files",
        str(dataset / "files.txt"),
        "--model",
        str(tmp_path / "nope.py"),
        "--labels",
        str(dataset / "labels.txt"),
    )
    assert_clean_error(missing, "model file not found", "nope.py")
    weird = tmp_path / "weird.txt"
    weird.write_text("3\n0\n3\n0\n")
    with pytest.raises(DataError, match="labels must be class indices"):
        train(
            str(dataset / "files.txt"),
            str(weird),
            EXAMPLES / "mlp.py",
            config=replace(FAST, nevts=2000),
            out=tmp_path / "w",
        )


def test_sklearn_learns_chunk_by_chunk_and_exports(dataset: Path, tmp_path: Path) -> None:
    model = write_model(
        tmp_path,
        "from sklearn.linear_model import SGDClassifier\n"
        "def model():\n    return SGDClassifier(loss='log_loss', random_state=0)\n",
    )
    result = train(
        str(dataset / "files.txt"), str(dataset / "labels.txt"), model,
        config=replace(FAST, epochs=2), out=tmp_path / "run",
    )  # fmt: skip
    assert result is not None
    assert result.framework == "sklearn"
    assert result.splits["test"].auc > 0.8
    package = load_package(result.package)
    assert package.native_path.name == "model.joblib"
    # scikit-learn scores in float64, ONNX Runtime in float32: saturated probabilities
    # tie in float32, which moves the AUC in the fourth decimal
    assert result.splits["test"].auc == pytest.approx(
        independent_test_auc(dataset, result.package), abs=1e-3
    )
