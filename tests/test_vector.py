"""The vector-wise transform against a straightforward per-event computation."""

from __future__ import annotations

import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import shared_file
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.errors import DataError
from mlaas4hep.transform.scan import ScanOptions, scan, spec_from_events
from mlaas4hep.transform.spec import FeatureSpec, Normalization
from mlaas4hep.transform.vector import VectorTransform, _normalise_into


def normalised(value: float, norm: Normalization) -> float:
    if norm.log:
        value = math.log1p(value)
    return (value - norm.shift) / norm.scale


def reference_flat(rows: list[dict], spec: FeatureSpec, *, normalize: bool = True) -> tuple:
    """The flat layout built event by event, entry by entry, in plain Python."""
    xs, masks = [], []
    for event in rows:
        x, mask = [], []
        for b in spec.flat_branches:
            value = float(event[b.name])
            x.append(normalised(value, b.normalization) if normalize else value)
            mask.append(1)
        for b in spec.jagged_branches:
            values = event[b.name]
            for i in range(b.length):
                if i < len(values):
                    v = float(values[i])
                    x.append(normalised(v, b.normalization) if normalize else v)
                    mask.append(1)
                else:
                    x.append(spec.pad_value)
                    mask.append(0)
        xs.append(x)
        masks.append(mask)
    width = len(spec.columns())
    return (
        np.array(xs, dtype=np.float64).reshape(-1, width),
        np.array(masks, dtype=np.uint8).reshape(-1, width),
    )


def assert_matches(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.array_equal(np.isnan(ours), np.isnan(reference))
    np.testing.assert_allclose(ours, reference, rtol=2e-5, atol=2e-5, equal_nan=True)


CASES = [
    ("nanoAOD_2015_CMS_Open_Data_ttbar.root", "Jet_pt,Jet_eta,Muon_pt,MET_pt,PV_npvs,nJet"),
    ("nano_dy.root", "Electron_pt,Electron_eta,Jet_btagDeepB,MET_phi,nElectron"),
    ("uproot-HZZ.root", "Jet_Px,Jet_Py,Muon_E,MET_px,NJet"),
]


@pytest.mark.parametrize(("name", "branches"), CASES)
@pytest.mark.parametrize("method", ["standard", "minmax", "robust"])
def test_flat_layout_on_real_files(name: str, branches: str, method: str) -> None:
    path = shared_file(name)
    sources = resolve_sources(str(path))
    selection = BranchSelection(include=branches, identifiers=[])
    spec, _ = scan(sources, selection, options=ScanOptions(length="q0.9", normalization=method))
    transform = VectorTransform(spec)
    with EventStream(sources, selection, step_size=97, shuffle=False) as stream:
        chunks = [transform.flat(c.data) for c in stream.iter_epoch(0)]
    x = np.concatenate([c.x for c in chunks])
    mask = np.concatenate([c.mask for c in chunks])
    rows = (
        uproot.open(path)[spec.tree or ("events" if "HZZ" in name else "Events")]
        .arrays(spec.source_branches)
        .tolist()
    )
    ref_x, ref_mask = reference_flat(rows, spec)
    assert_matches(x, ref_x)
    assert np.array_equal(mask, ref_mask)
    assert spec.columns()[: len(spec.flat_branches)] == [b.name for b in spec.flat_branches]


def test_statistics_and_lengths_match_numpy() -> None:
    path = shared_file("nanoAOD_2015_CMS_Open_Data_ttbar.root")
    spec, report = scan(
        resolve_sources(str(path)),
        BranchSelection(include="Jet_pt,MET_pt", identifiers=[]),
        options=ScanOptions(length="q0.5"),
    )
    arrays = uproot.open(path)["Events"].arrays(["Jet_pt", "MET_pt"])
    values = ak.to_numpy(ak.flatten(arrays.Jet_pt)).astype(np.float64)
    stats = spec.branch("Jet_pt").stats
    assert stats is not None
    assert stats.count == len(values)
    assert stats.min == values.min()
    assert stats.max == values.max()
    assert stats.mean == pytest.approx(values.mean())
    assert stats.std == pytest.approx(values.std())
    assert stats.quantiles["0.5"] == pytest.approx(np.quantile(values, 0.5))
    lengths = ak.to_numpy(ak.num(arrays.Jet_pt))
    jet = spec.branch("Jet_pt")
    assert jet.lengths is not None
    assert jet.lengths.max == lengths.max()
    assert jet.length == int(np.sort(lengths)[math.ceil(0.5 * len(lengths)) - 1])
    assert report.clipped["Jet"] == int((lengths > jet.length).sum())


def test_grouped_layout_matches_flat(tmp_path: Path) -> None:
    dataset = generate_dataset(tmp_path, n_events=500, samples=("signal",))
    sources = resolve_sources(str(dataset.files["signal"][0]))
    selection = BranchSelection(include="Jet_pt,Jet_eta,Muon_pt,Muon_eta,MET_pt", identifiers=[])
    spec, _ = scan(sources, selection, options=ScanOptions(length=6, layout="grouped"))
    with EventStream(sources, selection, step_size=500, shuffle=False) as stream:
        events = next(iter(stream.iter_epoch(0))).data
    transform = VectorTransform(spec)
    flat, grouped = transform.flat(events), transform.grouped(events)
    columns = spec.columns()
    for name, channels in grouped.channels.items():
        x, mask = grouped.collections[name], grouped.masks[name]
        assert x.shape == (500, len(channels), 6)
        assert mask.shape == (500, 1, 6)
        for k, branch in enumerate(channels):
            start = columns.index(f"{branch}_0")
            assert_matches(x[:, k, :], flat.x[:, start : start + 6])
            assert np.array_equal(mask[:, 0, :], flat.mask[:, start : start + 6])
    assert_matches(grouped.flat, flat.x[:, : len(grouped.flat_columns)])


def test_pad_value_and_no_normalisation() -> None:
    events = ak.Array({"a": [1.0, 2.0, 3.0], "J_x": [[1.0], [], [2.0, 3.0, 4.0]]})
    spec = spec_from_events(events, ScanOptions(length=2, normalization="none", pad_value=-9.0))
    out = VectorTransform(spec).flat(events)
    assert out.columns == ["a", "J_x_0", "J_x_1"]
    assert out.x.tolist() == [[1, 1, -9], [2, -9, -9], [3, 2, 3]]
    assert out.mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    assert out.clipped == {"J": 1}


def test_log_normalisation_uses_log_statistics() -> None:
    events = ak.Array({"pt": [1.0, 10.0, 100.0, 1000.0]})
    spec = spec_from_events(events, ScanOptions(normalization="standard", log=["pt"]))
    logs = np.log1p([1.0, 10.0, 100.0, 1000.0])
    out = VectorTransform(spec).flat(events).x[:, 0]
    np.testing.assert_allclose(out, (logs - logs.mean()) / logs.std(), rtol=1e-5)


def test_bad_input_names_branch_and_file() -> None:
    events = ak.Array({"a": [1.0, 2.0], "J_x": [[1.0], [2.0]]})
    spec = spec_from_events(events)
    transform = VectorTransform(spec)
    with pytest.raises(DataError, match=r"branch 'J_x' of the feature spec is missing in f\.root"):
        transform.flat(ak.Array({"a": [1.0]}), where="f.root")
    with pytest.raises(
        DataError, match=r"branch 'a' has type int64 in f\.root; .* expects float64"
    ):
        transform.flat(ak.Array({"a": [1], "J_x": [[1.0]]}), where="f.root")
    with pytest.raises(DataError, match="branch 'J_x' is jagged in the feature spec but flat"):
        transform.flat(ak.Array({"a": [1.0], "J_x": [1.0]}), where="f.root")
    strict = spec_from_events(events, ScanOptions(length=1, clip="error"))
    with pytest.raises(DataError, match=r"1 events of f\.root have more than 1 J entries"):
        VectorTransform(strict).flat(ak.Array({"a": [1.0], "J_x": [[1.0, 2.0]]}), where="f.root")


def test_spec_json_round_trip(tmp_path: Path) -> None:
    events = ak.Array({"a": [1.0, 2.0], "J_x": [[1.0], []], "J_y": [[3.0], []]})
    spec = spec_from_events(events, ScanOptions(length="max"))
    again = FeatureSpec.load(spec.save(tmp_path / "features.json"))
    assert again.to_dict() == spec.to_dict()
    assert math.isnan(again.pad_value)
    assert again.collections()["J"][1].name == "J_y"


jagged_lists = st.lists(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), max_size=6), max_size=40
)


@settings(max_examples=60, deadline=None)
@given(
    data=jagged_lists,
    flat=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), max_size=40),
    length=st.integers(1, 5),
    method=st.sampled_from(["none", "minmax", "standard", "robust"]),
)
def test_random_jagged_arrays(
    data: list[list[float]], flat: list[float], length: int, method: str
) -> None:
    n = min(len(data), len(flat))
    data, flat = data[:n], flat[:n]
    content = np.asarray([v for row in data for v in row], dtype=np.float32)
    jagged = ak.unflatten(content, np.asarray([len(row) for row in data], dtype=np.int64))
    events = ak.Array({"f": np.asarray(flat, dtype=np.float32), "C_v": jagged})
    spec = spec_from_events(events, ScanOptions(length=length, normalization=method))
    out = VectorTransform(spec).flat(events)
    ref_x, ref_mask = reference_flat(events.to_list(), spec)
    assert out.x.shape == (n, 1 + length)
    assert_matches(out.x, ref_x)
    assert np.array_equal(out.mask, ref_mask)
    # shuffled (indexed) layouts give the same rows
    order = np.random.default_rng(0).permutation(n)
    assert_matches(VectorTransform(spec).flat(events[order]).x, out.x[order])


def test_load_kernels_compiles_what_the_data_will_call() -> None:
    def uint16_kernels() -> list[tuple]:
        return [sig for sig in _normalise_into.signatures if "uint16" in str(sig[1])]

    # a branch type no other test uses, so its kernel is compiled here
    events = ak.Array({"n": np.array([2, 0], dtype=np.uint16), "C_q": ak.Array([[1, 2], []])})
    events["C_q"] = ak.values_astype(events["C_q"], np.uint16)
    spec = spec_from_events(events, ScanOptions(length=2))
    assert uint16_kernels() == []
    VectorTransform(spec).load_kernels()
    loaded = uint16_kernels()
    assert loaded
    out = VectorTransform(spec).flat(events)  # the data's call needs no new compilation
    assert uint16_kernels() == loaded
    assert out.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
