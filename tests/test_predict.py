"""Batch inference: ``predict_files`` and ``mlaas4hep predict``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
pq = pytest.importorskip("pyarrow.parquet")

import uproot
from serving import running_server

from mlaas4hep.client import Client
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.errors import ConfigError
from mlaas4hep.predict.batch import FRIEND_TREE, predict_files
from mlaas4hep.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
FILES = ["signal_0.root", "signal_1.root", "background_0.root", "background_1.root"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlaas4hep.datasets import generate_dataset

    folder = tmp_path_factory.mktemp("predict-data")
    generate_dataset(folder, n_events=3000, n_files=2, seed=5)
    return folder


@pytest.fixture(scope="module")
def package(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlaas4hep.train.config import TrainConfig
    from mlaas4hep.train.workflow import train

    out = tmp_path_factory.mktemp("predict-run") / "run"
    result = train(
        str(data / "files.txt"),
        str(data / "labels.txt"),
        ROOT / "examples" / "mlp.py",
        config=TrainConfig(
            branches="Jet_pt,Jet_eta,MET_pt,nJet", epochs=1, step_size=4000, plots=False
        ),
        out=out,
    )
    assert result is not None
    return Path(result.package)


def _inputs(data: Path) -> list[str]:
    return [str(data / name) for name in FILES]


def _expected(package: Path, path: str) -> np.ndarray:
    """Scores computed independently: uproot, VectorTransform, an ONNX Runtime session."""
    import onnxruntime as ort

    from mlaas4hep.train.package import load_package
    from mlaas4hep.transform.vector import VectorTransform

    loaded = load_package(package)
    with uproot.open(path) as f:
        events = f["Events"].arrays(loaded.spec.source_branches)
    tensors = VectorTransform(loaded.spec).flat(events)
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    available = {"x": tensors.x, "mask": tensors.mask}
    feeds = {i.name: available[i.name].astype(np.float32) for i in session.get_inputs()}
    return np.asarray(session.run(None, feeds)[0])


def _read(path: Path) -> dict[str, np.ndarray]:
    """A Parquet output as numpy columns (``file`` as strings)."""
    table = pq.read_table(path)
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        columns[name] = np.array(column.to_pylist()) if name == "file" else column.to_numpy()
    return columns


def _events(path: str) -> np.ndarray:
    with uproot.open(path) as f:
        return np.asarray(f["Events"]["event"].array(library="np"))


@pytest.fixture(scope="module")
def parquet_local(data: Path, package: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("predict-out") / "scores.parquet"
    report = predict_files(resolve_sources(_inputs(data)), package, out, step_size=700)
    return report, _read(out)


def test_parquet_aligned_and_equal_to_independent_scores(
    data: Path, package: Path, parquet_local
) -> None:  # type: ignore[no-untyped-def]
    report, table = parquet_local
    assert report.ok
    assert report.files == 4
    assert report.tasks == 4
    assert report.events == len(table["entry"])
    assert list(table)[:2] == ["file", "entry"]
    assert {"run", "luminosityBlock", "event", "score_signal", "score_background"} <= set(table)
    assert table["score_signal"].dtype == np.float32
    for path in _inputs(data):
        mine = table["file"] == path
        rows = {name: column[mine] for name, column in table.items()}
        events = _events(path)
        np.testing.assert_array_equal(rows["entry"], np.arange(len(events)))
        np.testing.assert_array_equal(rows["event"], events)
        expected = _expected(package, path)
        from mlaas4hep.train.package import load_package

        labels = load_package(package).labels
        got = np.stack([rows[f"score_{label}"] for label in labels], axis=1)
        if expected.shape[1] == 1:
            got = got[:, -1:]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_package_rewritten_in_place_is_loaded_again(
    data: Path, package: Path, tmp_path: Path
) -> None:
    """Scorers are kept per process, but not past a new export to the same path."""
    import hashlib
    import json
    import shutil

    import onnx
    from onnx import numpy_helper

    copy = tmp_path / "model"
    shutil.copytree(package, copy)
    sources = resolve_sources(_inputs(data)[:1])
    before = _read(predict_files(sources, copy, tmp_path / "a.parquet").outputs[0])
    model = onnx.load(copy / "model.onnx")
    for tensor in model.graph.initializer:  # shift every bias: other scores
        values = numpy_helper.to_array(tensor)
        if values.ndim == 1 and values.dtype == np.float32:
            tensor.CopyFrom(numpy_helper.from_array(values + 0.5, tensor.name))
    onnx.save(model, copy / "model.onnx")
    metadata = json.loads((copy / "metadata.json").read_text())
    metadata["checksums"]["model.onnx"] = hashlib.sha256(
        (copy / "model.onnx").read_bytes()
    ).hexdigest()
    (copy / "metadata.json").write_text(json.dumps(metadata))
    after = _read(predict_files(sources, copy, tmp_path / "b.parquet").outputs[0])
    assert not np.allclose(after["score_signal"], before["score_signal"], atol=1e-4)
    from mlaas4hep.train.package import load_package

    column = load_package(copy).labels.index("signal")
    expected = _expected(copy, sources[0].url)
    np.testing.assert_allclose(after["score_signal"], expected[:, column], atol=1e-5)


def test_root_friend_trees(data: Path, package: Path, tmp_path: Path) -> None:
    report = predict_files(resolve_sources(_inputs(data)), package, tmp_path / "friends")
    assert report.ok
    assert len(report.outputs) == 4
    for path in _inputs(data):
        friend_path = tmp_path / "friends" / Path(path).name
        with uproot.open(friend_path) as f, uproot.open(path) as g:
            friend, tree = f[FRIEND_TREE], g["Events"]
            assert friend.classname == "TTree"
            assert friend.num_entries == tree.num_entries
            np.testing.assert_array_equal(
                friend["event"].array(library="np"), tree["event"].array(library="np")
            )
            assert friend["score_signal"].array(library="np").dtype == np.float32


def test_dask_matches_in_process(data: Path, package: Path, parquet_local, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, local = parquet_local
    out = tmp_path / "dask.parquet"
    done: list[tuple[int, int]] = []
    report = predict_files(
        resolve_sources(_inputs(data)),
        package,
        out,
        step_size=700,
        workers=2,
        entries_per_task=1000,
        progress=lambda d, t: done.append((d, t)),
    )
    assert report.ok
    assert report.tasks > 4
    assert done[-1] == (report.tasks, report.tasks)
    table = _read(out)
    assert list(table) == list(local)
    for name, column in local.items():
        np.testing.assert_array_equal(table[name], column)


@pytest.fixture(scope="module")
def server(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server holding the package as model ``mlp``; at most 500 events per request."""
    folder = tmp_path_factory.mktemp("predict-server")
    (folder / "server.yaml").write_text("max_batch_rows: 500\n")
    with running_server(folder / "repository", "--config", str(folder / "server.yaml")) as url:
        with Client(url, timeout=60) as client:
            client.upload_package(package, name="mlp")
        yield url


def test_through_a_server_equals_in_process(  # type: ignore[no-untyped-def]
    data: Path, server: str, parquet_local, dask_scheduler: str, tmp_path: Path
) -> None:
    """NAME@URL: the server applies the spec; chunks of 700 go as requests of <= 500."""
    _, local = parquet_local
    for name, where in (("in-process", None), ("dask", dask_scheduler)):
        out = tmp_path / f"{name}.parquet"
        sources = resolve_sources(_inputs(data))
        report = predict_files(sources, f"mlp@{server}", out, step_size=700, scheduler=where)
        assert report.ok, report.failures
        table = _read(out)
        assert list(table) == list(local)
        for column in ("file", "entry", "run", "luminosityBlock", "event"):
            np.testing.assert_array_equal(table[column], local[column])
        for column in (c for c in local if c.startswith("score_")):
            np.testing.assert_allclose(table[column], local[column], atol=1e-6)


def test_server_model_errors(data: Path, server: str, tmp_path: Path) -> None:
    sources = resolve_sources(_inputs(data)[:1])
    with pytest.raises(ConfigError, match=r"model nothere@http.*404.*nothere"):
        predict_files(sources, f"nothere@{server}", tmp_path / "x.parquet")
    with pytest.raises(ConfigError, match=r"model mlp:7@.*version"):
        predict_files(sources, f"mlp:7@{server}", tmp_path / "x.parquet")
    done = _cli("--model", f"nothere@{server}", "--files", _inputs(data)[0], "--out", "x.parquet")
    assert done.returncode == 2
    assert done.stderr.startswith("error: model nothere@")
    assert "Traceback" not in done.stderr
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=f"model mlp@{nobody}"):
        predict_files(sources, f"mlp@{nobody}", tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_bad_files_are_reported(data: Path, package: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.root"
    bad.write_text("not a ROOT file\n")
    inputs = [_inputs(data)[0], str(bad), _inputs(data)[2]]
    sources = resolve_sources(inputs)
    report = predict_files(sources, package, tmp_path / "scores.parquet")
    assert not report.ok
    assert report.files == 2
    assert [f.file for f in report.failures] == [str(bad)]
    table = _read(tmp_path / "scores.parquet")
    assert set(table["file"]) == {inputs[0], inputs[2]}
    # the same with entry splitting (the file cannot even be counted)
    report = predict_files(sources, package, tmp_path / "split", entries_per_task=1000)
    assert [f.file for f in report.failures] == [str(bad)]
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == sorted(
        Path(p).name for p in (inputs[0], inputs[2])
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlaas4hep", "predict", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cli(data: Path, package: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.parquet"
    done = _cli("--model", str(package), "--files", str(data / "files.txt"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "4 files" in done.stdout
    assert "events/s" in done.stdout
    assert pq.read_table(out).num_rows > 0

    bad = _cli("--model", str(data), "--files", str(data / "files.txt"), "--out", str(out))
    assert bad.returncode == 2
    assert bad.stderr.startswith("error:")
    assert "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

    missing = tmp_path / "missing.root"
    partial = _cli(
        "--model", str(package), "--files", str(data / "signal_0.root"), "--files",
        str(missing), "--out", str(tmp_path / "partial.parquet"),
    )  # fmt: skip
    assert partial.returncode == 2
    assert str(missing) in partial.stderr
    assert "Traceback" not in partial.stderr
    assert (tmp_path / "partial.parquet").exists()


def test_selection_column(data: Path, server: str, tmp_path: Path) -> None:
    """With a selection, dropped events keep their row: selected False, NaN scores."""
    from mlaas4hep.train.config import TrainConfig
    from mlaas4hep.train.package import load_package
    from mlaas4hep.train.workflow import train

    preproc = tmp_path / "preproc.py"
    preproc.write_text("def selection(events):\n    return events.nJet >= 5\n")
    result = train(
        str(data / "files.txt"),
        str(data / "labels.txt"),
        ROOT / "examples" / "mlp.py",
        config=TrainConfig(branches="Jet_pt,MET_pt,nJet", epochs=1, step_size=4000, plots=False),
        out=tmp_path / "run",
        preproc=preproc,
    )
    assert result is not None
    path = _inputs(data)[0]
    report = predict_files(
        resolve_sources([path]), result.package, tmp_path / "friends", step_size=400
    )
    assert report.ok
    with uproot.open(tmp_path / "friends" / Path(path).name) as f, uproot.open(path) as g:
        friend = f[FRIEND_TREE].arrays(library="np")
        n_jet = g["Events"]["nJet"].array(library="np")
    np.testing.assert_array_equal(friend["selected"], n_jet >= 5)
    assert 0 < friend["selected"].sum() < len(n_jet)
    label = load_package(result.package).labels[-1]
    scores = friend[f"score_{label}"]
    assert np.isnan(scores[~friend["selected"]]).all()
    assert np.isfinite(scores[friend["selected"]]).all()

    # the same through the server, with the command line
    with Client(server, timeout=60) as client:
        client.upload_package(result.package, name="selecting")
    remote = tmp_path / "remote"
    done = _cli("--model", f"selecting@{server}", "--files", path, "--out", str(remote))
    assert done.returncode == 0, done.stderr
    with uproot.open(remote / Path(path).name) as f:
        served = f[FRIEND_TREE].arrays(library="np")
    assert sorted(served) == sorted(friend)
    np.testing.assert_array_equal(served["selected"], friend["selected"])
    np.testing.assert_allclose(served[f"score_{label}"], scores, atol=1e-6)
