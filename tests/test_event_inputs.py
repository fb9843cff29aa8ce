"""Raw events to a model package's inputs: checks, type conversion, packaged preprocessing.

Every result is compared with the events transformed by hand (numpy) and scored
by ONNX Runtime directly.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.linear_model import LogisticRegression

from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.predict.events import conform
from mlaas4hep.train.export import export_sklearn
from mlaas4hep.train.package import load_package, write_package
from mlaas4hep.transform.preprocess import load_preprocessing
from mlaas4hep.transform.scan import ScanOptions, spec_from_events
from mlaas4hep.transform.spec import FeatureSpec

PREPROCESSING = """
import awkward as ak

def selection(events):
    return events.MET_pt > 20

def new_variables(events):
    return {"HT": ak.sum(events.Jet_pt, axis=1)}
"""
RNG = np.random.default_rng(7)


def toy_events(n: int) -> ak.Array:
    counts = RNG.integers(0, 5, n).astype(np.int32)
    return ak.zip(
        {
            "nJet": counts,
            "Jet_pt": ak.unflatten(RNG.exponential(40, counts.sum()).astype(np.float32), counts),
            "MET_pt": RNG.exponential(30, n).astype(np.float32),
        },
        depth_limit=1,
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic regression on nJet, MET_pt, HT (derived) and 3 padded jets, with a selection."""
    root = tmp_path_factory.mktemp("event-inputs")
    (root / "preproc.py").write_text(PREPROCESSING)
    preprocessing = load_preprocessing(root / "preproc.py")
    events = toy_events(500)
    derived, _, _ = preprocessing.apply(events, where="training events")
    spec = spec_from_events(derived, ScanOptions(length=3, pad_value=0.0))
    for branch in spec.branches:
        branch.derived = branch.name == "HT"
    spec.preprocessing = preprocessing.describe()
    vector_x = _by_hand(derived, spec)
    labels = (vector_x[:, 1] > np.median(vector_x[:, 1])).astype(int)
    exported = export_sklearn(LogisticRegression().fit(vector_x, labels), {"x": vector_x}, root)
    return write_package(
        root / "model", exported, spec=spec, labels=["bkg", "sig"], name="toy", params={},
        preprocessing=root / "preproc.py",
    )  # fmt: skip


def _by_hand(events: ak.Array, spec: FeatureSpec) -> np.ndarray:
    """The flat layout built with plain numpy, normalised as the spec says."""
    rows = []
    for name in spec.columns():
        if "_" in name and name.rsplit("_", 1)[1].isdigit():
            branch, index = name.rsplit("_", 1)
            padded = ak.fill_none(ak.pad_none(events[branch], 3, clip=True), 0.0)
            values = ak.to_numpy(padded[:, int(index)]).astype(np.float64)
            real = ak.to_numpy(ak.num(events[branch])) > int(index)
        else:
            branch = name
            values = ak.to_numpy(events[name]).astype(np.float64)
            real = np.ones(len(values), dtype=bool)
        norm = spec.branch(branch).normalization
        values = np.where(real, (values - norm.shift) / norm.scale, spec.pad_value)
        rows.append(values)
    return np.stack(rows, axis=1).astype(np.float32)


def test_package_carries_its_preprocessing(package: Path) -> None:
    loaded = load_package(package)
    assert (package / "preprocess.py").read_text() == PREPROCESSING
    assert loaded.preprocessing_path == package / "preprocess.py"
    inputs = loaded.event_inputs()
    assert inputs.preprocessing is not None
    assert set(inputs.branches) == {"nJet", "Jet_pt", "MET_pt"}  # HT is derived


def test_predictions_equal_the_transform_by_hand(package: Path) -> None:
    loaded = load_package(package)
    events = toy_events(300)
    # a file of other types: counters as uint32, jets as float64
    other = ak.zip(
        {
            "nJet": ak.values_astype(events.nJet, np.uint32),
            "Jet_pt": ak.values_astype(events.Jet_pt, np.float64),
            "MET_pt": events.MET_pt,
            "event": np.arange(300, dtype=np.uint64),
        },
        depth_limit=1,
    )
    predicted = loaded.predict_events(other)
    kept = ak.to_numpy(events.MET_pt) > 20
    derived = ak.with_field(events, ak.sum(events.Jet_pt, axis=1), "HT")[kept]
    x = _by_hand(derived, loaded.spec)
    session = ort.InferenceSession(str(package / "model.onnx"))
    expected = session.run([loaded.outputs[0].name], {"x": x})[0]
    assert predicted.shape == (300, 2)
    assert np.isnan(predicted[~kept]).all()
    np.testing.assert_allclose(predicted[kept], expected, rtol=1e-5, atol=1e-6)
    prepared = loaded.event_inputs().prepare(other)
    assert prepared.rows == kept.sum()
    np.testing.assert_array_equal(prepared.selected, kept)


def test_a_branch_missing_everywhere_is_named() -> None:
    spec = spec_from_events(toy_events(50))
    with pytest.raises(DataError, match=r"lack the branch\(es\) 'Jet_pt' that the model needs"):
        conform(ak.from_iter([{"nJet": 1, "MET_pt": 3.0}]), spec)


def test_json_like_events_are_converted() -> None:
    spec = spec_from_events(toy_events(50))
    records = ak.from_iter(
        [{"nJet": 2, "Jet_pt": [30.5, 20], "MET_pt": 12}, {"nJet": 0, "Jet_pt": [], "MET_pt": 3.5}]
    )
    conformed = conform(records, spec)
    assert str(conformed.type.content) == "{nJet: int32, Jet_pt: var * float32, MET_pt: float32}"
    assert ak.to_list(conformed.Jet_pt) == [[30.5, 20.0], []]
    empty_lists = ak.from_iter([{"nJet": 0, "Jet_pt": [], "MET_pt": 1.0}])  # var * unknown
    assert ak.to_list(conform(empty_lists, spec).Jet_pt) == [[]]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"nJet": 1, "MET_pt": 3.0}, "'Jet_pt' in the events is missing or null in 1 of 2"),
        ({"nJet": 1, "Jet_pt": 40.0, "MET_pt": 3.0}, "'Jet_pt' in the events must be a list"),
        ({"nJet": [1], "Jet_pt": [40.0], "MET_pt": 3.0}, "'nJet' in the events must be one number"),
        ({"nJet": 1, "Jet_pt": [40.0], "MET_pt": "high"}, "'MET_pt' in the events must be one"),
        (
            {"nJet": 1, "Jet_pt": [40.0], "MET_pt": None},
            "'MET_pt' in the events is missing or null",
        ),
        ({"nJet": 1.5, "Jet_pt": [40.0], "MET_pt": 3.0}, "'nJet' in the events must hold integers"),
    ],
)
def test_bad_events_name_the_branch(record: dict[str, object], message: str) -> None:
    spec = spec_from_events(toy_events(50))
    with pytest.raises(DataError) as error:
        conform(ak.from_iter([record, {"nJet": 0, "Jet_pt": [], "MET_pt": 1.0}]), spec)
    assert message in str(error.value)


def test_a_package_needs_the_preprocessing_its_spec_records(package: Path, tmp_path: Path) -> None:
    loaded = load_package(package)
    other = tmp_path / "other.py"
    other.write_text(PREPROCESSING + "\n# changed\n")
    exported_dir = tmp_path / "export"
    exported_dir.mkdir()
    x = np.zeros((4, len(loaded.spec.columns())), dtype=np.float32)
    exported = export_sklearn(LogisticRegression().fit(x, [0, 1, 0, 1]), {"x": x}, exported_dir)
    with pytest.raises(ConfigError, match="give its module"):
        write_package(
            tmp_path / "a", exported, spec=loaded.spec, labels=["b", "s"], name="a", params={}
        )
    with pytest.raises(ConfigError, match="not the preprocessing"):
        write_package(
            tmp_path / "b", exported, spec=loaded.spec, labels=["b", "s"], name="b", params={},
            preprocessing=other,
        )  # fmt: skip
