"""scan → convert end to end: what lands in the file equals the transform computed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import uproot
from test_vector import assert_matches, reference_flat

from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.transform.convert import convert
from mlaas4hep.transform.matrix import ImageSpec, make_images
from mlaas4hep.transform.spec import FeatureSpec
from mlaas4hep.transform.writers import read_columns, read_metadata, read_tensors

COMMAND = [sys.executable, "-c", "from mlaas4hep.cli import main; main()"]
BRANCHES = "Jet_pt,Jet_eta,Jet_btagDeepB,Muon_pt,MET_pt,nJet"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("convert")
    generate_dataset(folder, n_events=1500, seed=3)
    return folder


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=120, check=False
    )


def rows_of(dataset: Path, spec: FeatureSpec) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Every event of the dataset, its label and event number, read with uproot alone."""
    rows, labels, events = [], [], []
    for line, label in zip(
        (dataset / "files.txt").read_text().split(),
        (dataset / "labels.txt").read_text().split(),
        strict=True,
    ):
        arrays = uproot.open(line)["Events"].arrays([*spec.source_branches, "event"])
        rows += arrays[spec.source_branches].to_list()
        labels += [float(label)] * len(arrays)
        events += arrays["event"].to_list()
    return rows, np.array(labels), np.array(events)


@pytest.mark.parametrize("suffix", [".parquet", ".h5", ".npz"])
def test_scan_then_convert_writes_the_reference_tensors(
    dataset: Path, tmp_path: Path, suffix: str
) -> None:
    spec_path, out = tmp_path / "features.json", tmp_path / f"data{suffix}"
    listing, labels = str(dataset / "files.txt"), str(dataset / "labels.txt")
    scanned = cli("scan", listing, "--labels", labels, "--branches", BRANCHES,
                  "--length", "q0.9", "--log", "MET_pt", "-o", str(spec_path))  # fmt: skip
    assert scanned.returncode == 0, scanned.stderr
    assert "events clipped" in scanned.stdout
    converted = cli("convert", listing, "--labels", labels, "--specs", str(spec_path),
                    "--out", str(out), "--step-size", "700")  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    spec = FeatureSpec.load(spec_path)
    tensors = read_tensors(out)
    rows, labels_ref, events_ref = rows_of(dataset, spec)
    order = np.argsort(tensors["event"].astype(np.int64) * 2 + tensors["label"].astype(np.int64))
    ref_order = np.argsort(events_ref.astype(np.int64) * 2 + labels_ref.astype(np.int64))
    ref_x, ref_mask = reference_flat(rows, spec)
    assert_matches(tensors["x"][order], ref_x[ref_order])
    assert np.array_equal(tensors["mask"][order], ref_mask[ref_order])
    assert np.array_equal(tensors["label"][order], labels_ref[ref_order])
    assert read_columns(out)["x"] == spec.columns()
    assert (read_metadata(out) or {})["data_hash"] == spec.data_hash


def test_event_images_are_written(dataset: Path, tmp_path: Path) -> None:
    images = tmp_path / "images.json"
    images.write_text(json.dumps({
        "views": [{"x": "eta", "y": "phi", "bins": [8, 16]}],
        "channels": [{"collection": "PFCands", "weight": "pt"}, {"collection": "Jet"}],
    }))  # fmt: skip
    spec_path, out = tmp_path / "features.json", tmp_path / "images.npz"
    signal = str(dataset / "signal_0.root")
    assert (
        cli(
            "scan", signal, "--branches", "MET_pt", "--images", str(images), "-o", str(spec_path)
        ).returncode
        == 0
    )
    result = cli("convert", signal, "--specs", str(spec_path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    written = read_tensors(out)
    arrays = uproot.open(signal)["Events"].arrays(
        ["PFCands_eta", "PFCands_phi", "PFCands_pt", "Jet_eta", "Jet_phi"]
    )
    expected = make_images(arrays, ImageSpec.from_dict(json.loads(images.read_text())))
    assert written["images"].shape == (1500, 2, 8, 16)
    order = np.argsort(written["event"])
    np.testing.assert_allclose(written["images"][order], expected, rtol=1e-6)


def test_preprocessing_labels_and_selection(dataset: Path, tmp_path: Path) -> None:
    module = tmp_path / "preproc.py"
    module.write_text(
        "import awkward as ak\n"
        "def selection(events):\n    return events.nJet >= 5\n"
        "def new_variables(events):\n    return {'HT': ak.sum(events.Jet_pt, axis=1)}\n"
        "def label(events):\n    return ak.num(events.Muon_pt) > 0\n"
    )
    from mlaas4hep.data.branches import BranchSelection
    from mlaas4hep.transform.scan import scan

    sources = resolve_sources(str(dataset / "files.txt"), labels=str(dataset / "labels.txt"))
    spec, report = scan(
        sources,
        BranchSelection(include="Jet_pt,Muon_pt,nJet", identifiers=[]),
        preprocessing=module,
    )
    out = tmp_path / "pre.npz"
    result = convert(sources, spec, out, preprocessing=module)
    tensors = read_tensors(out)
    assert result.written == report.selected == len(tensors["x"])
    columns = spec.columns()
    njet = tensors["x"][:, columns.index("nJet")]
    norm = spec.branch("nJet").normalization
    assert (njet * norm.scale + norm.shift >= 5 - 1e-4).all()
    assert "HT" in columns
    muons = tensors["mask"][:, columns.index("Muon_pt_0")]
    assert np.array_equal(tensors["label"], muons.astype(float))

    edited = tmp_path / "edited.py"
    edited.write_text(module.read_text() + "\n# changed\n")
    with pytest.raises(
        ConfigError, match="is not the preprocessing the feature spec was computed with"
    ):
        convert(sources, spec, tmp_path / "x.npz", preprocessing=edited)


def test_other_data_and_missing_branch_are_errors(dataset: Path, tmp_path: Path) -> None:
    from mlaas4hep.data.branches import BranchSelection
    from mlaas4hep.transform.scan import scan

    signal = resolve_sources(str(dataset / "signal_0.root"))
    background = resolve_sources(str(dataset / "background_0.root"))
    spec, _ = scan(signal, BranchSelection(include="Jet_pt,MET_pt", identifiers=[]))
    with pytest.raises(DataError, match="computed on other data"):
        convert(background, spec, tmp_path / "b.parquet")
    assert not (tmp_path / "b.parquet").exists()
    report = convert(background, spec, tmp_path / "b.parquet", allow_other_data=True)
    assert report.warnings
    assert report.written == 1500
    renamed = tmp_path / "renamed.root"
    with uproot.recreate(renamed) as out:
        arrays = uproot.open(dataset / "signal_0.root")["Events"].arrays(["Jet_pt"])
        out.mktree(
            "Events",
            {"Jet_pt": "var * float32", "MET_ptt": np.float32},
            counter_name=lambda _: "nJet",
        )
        out["Events"].extend({"Jet_pt": arrays.Jet_pt, "MET_ptt": np.ones(len(arrays), np.float32)})
    with pytest.raises(
        DataError, match=r"unknown branch 'MET_pt' in .*renamed.root; close matches: MET_ptt"
    ):
        convert(resolve_sources(str(renamed)), spec, tmp_path / "r.parquet", allow_other_data=True)


def test_cli_errors_are_messages(dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "features.json"
    bad.write_text(json.dumps({"schema": "something-else"}))
    result = cli(
        "convert",
        str(dataset / "signal_0.root"),
        "--specs",
        str(bad),
        "--out",
        str(tmp_path / "o.npz"),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "is not a mlaas4hep feature spec" in result.stderr
    result = cli("scan", str(dataset / "signal_0.root"), "--length", "most", "-o", str(bad))
    assert result.returncode == 2
    assert "length policy" in " ".join(result.stderr.split())
