"""Tests of the embedded toy NanoAOD generator (mlaas4hep.datasets)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import shared_file

from mlaas4hep.datasets import (
    BRANCHES,
    COLLECTIONS,
    LABELS,
    SAMPLES,
    generate_dataset,
    generate_events,
    nanoaod,
    parse_compression,
    write_events,
)
from mlaas4hep.errors import ConfigError

JAGGED = [f"{c}_{f}" for c, fields in COLLECTIONS.items() for f in fields]
FLAT = [b for b in BRANCHES if b not in JAGGED]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small random-number blocks and baskets: fast, and many block boundaries."""
    monkeypatch.setattr(nanoaod, "RNG_BLOCK", 128)
    monkeypatch.setattr(nanoaod, "EVENTS_PER_BASKET", 200)


@pytest.fixture(scope="module")
def events() -> dict[str, dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nanoaod, "RNG_BLOCK", 500)
        return {s: generate_events(s, 3000, seed=11) for s in SAMPLES}


def flat(array: Any) -> np.ndarray[Any, Any]:
    return np.asarray(ak.to_numpy(ak.flatten(array)))


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for name, value in a.items():
        if name in JAGGED:
            assert ak.array_equal(value, b[name]), name
            assert ak.to_numpy(ak.flatten(value)).dtype == BRANCHES[name], name
            assert ak.to_numpy(ak.flatten(b[name])).dtype == BRANCHES[name], name
        else:
            np.testing.assert_array_equal(np.asarray(value), np.asarray(b[name]), err_msg=name)
            assert np.asarray(value).dtype == BRANCHES[name], name
            assert np.asarray(b[name]).dtype == BRANCHES[name], name


# --------------------------------------------------------------------------- content


def test_branch_names_order_and_dtypes(events: dict[str, dict[str, Any]]) -> None:
    expected = [
        *("run", "luminosityBlock", "event"),
        *("nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepB"),
        *("nMuon", "Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"),
        "Muon_pfRelIso04_all",
        *("nElectron", "Electron_pt", "Electron_eta", "Electron_phi", "Electron_mass"),
        *("Electron_charge", "Electron_pfRelIso03_all"),
        *("MET_pt", "MET_phi", "PV_npvs"),
        *("nPFCands", "PFCands_pt", "PFCands_eta", "PFCands_phi", "PFCands_mass"),
        *("PFCands_charge", "PFCands_pdgId", "PFCands_d0", "PFCands_dz"),
    ]
    assert list(BRANCHES) == expected
    for ev in events.values():
        assert list(ev) == expected
        for name in FLAT:
            assert isinstance(ev[name], np.ndarray), name
            assert ev[name].dtype == BRANCHES[name], name
            assert len(ev[name]) == 3000
        for name in JAGGED:
            assert isinstance(ev[name], ak.Array), name
            assert str(ev[name].type) == f"3000 * var * {BRANCHES[name]}", name
    assert BRANCHES["run"] == np.uint32
    assert BRANCHES["luminosityBlock"] == np.uint32
    assert BRANCHES["event"] == np.uint64
    assert BRANCHES["nJet"] == np.int32
    assert BRANCHES["Jet_pt"] == np.float32
    assert BRANCHES["PFCands_pdgId"] == np.int32


def test_counters_match_list_lengths(events: dict[str, dict[str, Any]]) -> None:
    for ev in events.values():
        for collection, fields in COLLECTIONS.items():
            counts = ev[f"n{collection}"]
            for field in fields:
                np.testing.assert_array_equal(ak.num(ev[f"{collection}_{field}"]), counts)


def test_physical_ranges(events: dict[str, dict[str, Any]]) -> None:
    for ev in events.values():
        assert np.all(ev["run"] == 1)
        np.testing.assert_array_equal(ev["event"], np.arange(1, 3001, dtype=np.uint64))
        assert np.all(ev["PV_npvs"] >= 1)
        assert 17 < ev["PV_npvs"].mean() < 23
        assert np.all(ev["MET_pt"] >= 0)
        limits = {"Jet": 4.7, "Muon": 2.5, "Electron": 2.5, "PFCands": 4.7}
        for collection, limit in limits.items():
            pt = ev[f"{collection}_pt"]
            assert np.all(flat(pt) > 0)
            assert np.all(np.abs(flat(ev[f"{collection}_eta"])) < limit)
            assert np.all(flat(ev[f"{collection}_mass"]) >= 0)
            phi = flat(ev[f"{collection}_phi"])
            assert np.all((phi >= -math.pi) & (phi < math.pi))
            # sorted by decreasing pt within each event
            assert ak.all(pt[:, :-1] >= pt[:, 1:])
        assert np.all((ev["MET_phi"] >= -math.pi) & (ev["MET_phi"] < math.pi))
        assert np.all(flat(ev["Jet_pt"]) >= 20)
        btag = flat(ev["Jet_btagDeepB"])
        assert np.all((btag >= 0) & (btag <= 1))
        np.testing.assert_array_equal(flat(ev["Muon_mass"]), np.float32(0.10566))
        np.testing.assert_array_equal(flat(ev["Electron_mass"]), np.float32(0.000511))
        for lepton in ("Muon", "Electron"):
            assert set(np.unique(flat(ev[f"{lepton}_charge"]))) == {-1, 1}


def test_exactly_one_isolated_lepton(events: dict[str, dict[str, Any]]) -> None:
    for ev in events.values():
        iso_mu = (ev["Muon_pt"] > 25) & (ev["Muon_pfRelIso04_all"] < 0.15)
        iso_el = (ev["Electron_pt"] > 25) & (ev["Electron_pfRelIso03_all"] < 0.15)
        n_iso = ak.sum(iso_mu, axis=1) + ak.sum(iso_el, axis=1)
        assert ak.all(n_iso == 1)
        # some events have extra soft, non-isolated leptons
        assert ak.any(ev["nMuon"] + ev["nElectron"] > 1)


def test_pf_candidates(events: dict[str, dict[str, Any]]) -> None:
    for ev in events.values():
        n = ev["nPFCands"]
        assert n.max() <= 100
        assert 30 <= n.mean() <= 70
        charge = flat(ev["PFCands_charge"])
        pdg = flat(ev["PFCands_pdgId"])
        assert set(np.unique(charge)) == {-1, 0, 1}
        assert set(np.unique(pdg)) == {211, -211, 22, 130, 11, -11, 13, -13}
        expected_charge = np.select(
            [pdg == 211, pdg == -211, pdg == 11, pdg == -11, pdg == 13, pdg == -13],
            [1, -1, -1, 1, -1, 1],
            0,
        )
        np.testing.assert_array_equal(charge, expected_charge)
        neutral = charge == 0
        assert np.all(flat(ev["PFCands_d0"])[neutral] == 0)
        assert np.all(flat(ev["PFCands_dz"])[neutral] == 0)
        # no charged-particle tracking beyond |eta| = 2.5
        assert np.all(np.abs(flat(ev["PFCands_eta"])[~neutral]) <= 2.5)
        mass = flat(ev["PFCands_mass"])
        np.testing.assert_array_equal(mass[np.abs(pdg) == 13], np.float32(0.10566))
        np.testing.assert_array_equal(mass[pdg == 22], 0)
    # more activity, more candidates
    assert events["signal"]["nPFCands"].mean() > events["background"]["nPFCands"].mean()


def test_signal_and_background_differ_but_overlap(events: dict[str, dict[str, Any]]) -> None:
    sig, bkg = events["signal"], events["background"]
    assert sig["nJet"].min() >= 4
    assert 4.3 < sig["nJet"].mean() < 6
    assert bkg["nJet"].mean() < sig["nJet"].mean()
    assert np.any(bkg["nJet"] <= 1)

    def n_btag(ev: dict[str, Any]) -> np.ndarray[Any, Any]:
        return np.asarray(ak.to_numpy(ak.sum(ev["Jet_btagDeepB"] > 0.4184, axis=1)))

    def ht(ev: dict[str, Any]) -> np.ndarray[Any, Any]:
        return np.asarray(ak.to_numpy(ak.sum(ev["Jet_pt"], axis=1)))

    assert 1.4 < n_btag(sig).mean() < 2.2
    assert n_btag(bkg).mean() < 0.5 * n_btag(sig).mean()
    assert ht(sig).mean() > 1.3 * ht(bkg).mean()
    assert sig["MET_pt"].mean() > bkg["MET_pt"].mean() > 20
    # overlap: a classifier cannot separate perfectly
    bkg_like_signal = (bkg["nJet"] >= 4) & (n_btag(bkg) >= 2)
    assert bkg_like_signal.mean() > 0.05
    assert np.mean(n_btag(sig) == 0) > 0.01


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_events() -> None:
    assert_same(generate_events("signal", 300, 5), generate_events("signal", 300, 5))


def test_different_seed_or_sample_different_events() -> None:
    a = generate_events("signal", 300, 5)
    b = generate_events("signal", 300, 6)
    c = generate_events("background", 300, 5)
    assert not ak.array_equal(a["Jet_pt"], b["Jet_pt"])
    assert not np.array_equal(a["MET_pt"], b["MET_pt"])
    assert not np.array_equal(a["MET_pt"], c["MET_pt"])


def test_events_do_not_depend_on_how_they_are_split() -> None:
    whole = generate_events("background", 600, 3)
    parts = [
        generate_events("background", 170, 3, first_event=0),
        generate_events("background", 300, 3, first_event=170),
        generate_events("background", 130, 3, first_event=470),
    ]
    joined = {
        name: (np.concatenate if name in FLAT else ak.concatenate)([p[name] for p in parts])
        for name in BRANCHES
    }
    assert_same(whole, joined)
    assert parts[1]["event"][0] == 171


def test_default_block_size_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nanoaod, "RNG_BLOCK", 10_000)
    ev = generate_events("signal", 10, 1, first_event=9_995)  # crosses a block boundary
    assert ev["event"].tolist() == list(range(9_996, 10_006))
    assert ev["nJet"].min() >= 4


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("fmt", ["ttree", "rntuple"])
@pytest.mark.parametrize(
    ("compression", "expected"),
    [
        ("zlib", "ZLIB"),
        ("lz4", "LZ4"),
        ("zstd", "ZSTD"),
        ("lzma:2", "LZMA"),
        ("none", "NoneType"),
    ],
)
def test_write_and_read_back(tmp_path: Path, fmt: str, compression: str, expected: str) -> None:
    ev = generate_events("signal", 250, 9)
    path = write_events(
        tmp_path / "x.root", ev, fmt=fmt, compression=compression, tree="T", basket_events=100
    )
    assert path == tmp_path / "x.root"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.root"]  # no temporary left
    with uproot.open(path) as file:
        assert type(file.file.compression).__name__ == expected
        tree = file["T"]
        assert tree.num_entries == 250
        if fmt == "ttree":
            assert tree.classname == "TTree"
            assert tree.keys() == list(BRANCHES)  # no extra counter branches (nJet_pt, ...)
            for collection, fields in COLLECTIONS.items():
                for field in fields:
                    assert tree[f"{collection}_{field}"].count_branch.name == f"n{collection}"
            assert tree["Jet_pt"].num_baskets == 3
        else:
            assert tree.classname == "ROOT::RNTuple"
            assert tree.keys() == list(BRANCHES)
        back = tree.arrays(library="ak")
    assert_same(
        ev, {name: (back[name] if name in JAGGED else ak.to_numpy(back[name])) for name in BRANCHES}
    )


def test_write_iterable_of_pieces(tmp_path: Path) -> None:
    pieces = [generate_events("background", 50, 1, first_event=i * 50) for i in range(3)]
    path = write_events(tmp_path / "p.root", iter(pieces))
    with uproot.open(path) as file:
        tree = file["Events"]
        assert tree["nJet"].num_baskets == 3
        np.testing.assert_array_equal(tree["event"].array(library="np"), np.arange(1, 151))


def test_parse_compression() -> None:
    assert parse_compression("none") is None
    assert parse_compression("zstd:5") == uproot.ZSTD(5)
    assert parse_compression(" LZ4 ") == uproot.LZ4(4)
    assert parse_compression("zlib") == uproot.ZLIB(1)
    assert parse_compression("lzma:9") == uproot.LZMA(9)
    for bad in ["gzip", "zstd:0", "zstd:10", "zstd:x", "none:1", ""]:
        with pytest.raises(ConfigError, match="compression"):
            parse_compression(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "parquet"}, "ttree, rntuple"),
        ({"compression": "gzip"}, "zlib, lz4, zstd, lzma, none"),
        ({"compression": "zstd:11"}, "between 1 and 9"),
        ({"tree": ""}, "tree name"),
    ],
)
def test_write_invalid_options(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    ev = generate_events("signal", 10, 1)
    with pytest.raises(ConfigError, match=message):
        write_events(tmp_path / "x.root", ev, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_invalid_sample_and_counts() -> None:
    with pytest.raises(ConfigError, match="signal, background"):
        generate_events("ttbar", 10, 1)
    with pytest.raises(ConfigError, match="seed"):
        generate_events("signal", 10, -1)
    with pytest.raises(ConfigError, match="n_events"):
        generate_events("signal", -1, 1)


# --------------------------------------------------------------------------- datasets


def test_generate_dataset(tmp_path: Path) -> None:
    out = tmp_path / "a" / "demo"
    ds = generate_dataset(out, n_events=500, n_files=3, seed=4, compression="lz4")
    assert out.is_dir()
    assert list(ds.files) == ["signal", "background"]
    for sample, paths in ds.files.items():
        assert [p.name for p in paths] == [f"{sample}_{i}.root" for i in range(3)]
        assert all(p.is_absolute() and p.is_file() for p in paths)
    assert ds.files_txt == (out / "files.txt").resolve()
    assert ds.labels_txt == (out / "labels.txt").resolve()
    listed = ds.files_txt.read_text().splitlines()
    labels = ds.labels_txt.read_text().splitlines()
    assert listed == [str(p) for paths in ds.files.values() for p in paths]
    assert len(labels) == len(listed) == 6
    for line, label in zip(listed, labels, strict=True):
        sample = Path(line).name.split("_")[0]
        assert int(label) == LABELS[sample]
    assert labels == ["1", "1", "1", "0", "0", "0"]

    # files split 167/167/166; event numbers distinct and consecutive; same events as
    # when drawn in one go
    for sample, paths in ds.files.items():
        numbers, met = [], []
        for path in paths:
            with uproot.open(path) as file:
                tree = file["Events"]
                assert tree.classname == "TTree"
                assert type(file.file.compression).__name__ == "LZ4"
                numbers.append(tree["event"].array(library="np"))
                met.append(tree["MET_pt"].array(library="np"))
        assert [len(n) for n in numbers] == [167, 167, 166]
        all_numbers = np.concatenate(numbers)
        np.testing.assert_array_equal(all_numbers, np.arange(1, 501))
        reference = generate_events(sample, 500, 4)
        np.testing.assert_array_equal(np.concatenate(met), reference["MET_pt"])


def test_generate_dataset_is_deterministic(tmp_path: Path) -> None:
    a = generate_dataset(
        tmp_path / "a", n_events=120, seed=8, fmt="rntuple", samples=["background"]
    )
    b = generate_dataset(
        tmp_path / "b", n_events=120, seed=8, fmt="rntuple", samples=["background"]
    )
    assert list(a.files) == ["background"]
    assert a.labels_txt.read_text() == "0\n"
    with uproot.open(a.files["background"][0]) as fa, uproot.open(b.files["background"][0]) as fb:
        assert fa["Events"].classname == "ROOT::RNTuple"
        ra, rb = fa["Events"].arrays(), fb["Events"].arrays()
        assert ak.array_equal(ra, rb)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "hdf5"}, "format"),
        ({"compression": "brotli"}, "compression"),
        ({"samples": ["signal", "ttbar"]}, "signal, background"),
        ({"samples": []}, "no samples"),
        ({"n_files": 0}, "n_files"),
        ({"n_events": 2, "n_files": 3}, "at least n_files"),
        ({"seed": -3}, "seed"),
    ],
)
def test_generate_dataset_invalid(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"n_events": 10} | kwargs
    with pytest.raises(ConfigError, match=message):
        generate_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()  # checked before anything is written


# --------------------------------------------------------------------------- wide layout

WIDE_JAGGED = {f"{c}_{f}": c for c, fields in nanoaod.WIDE_COLLECTIONS.items() for f in fields}


@pytest.fixture(scope="module")
def wide_events() -> dict[str, dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nanoaod, "RNG_BLOCK", 400)
        return {s: generate_events(s, 1500, seed=11, wide=True) for s in SAMPLES}


def test_wide_layout() -> None:
    branches = nanoaod.WIDE_BRANCHES
    collections = nanoaod.WIDE_COLLECTIONS
    print(f"wide layout: {len(branches)} branches, {len(WIDE_JAGGED)} jagged")
    assert 850 <= len(branches) <= 1000
    # the default branches, in their order and with their dtypes
    assert [b for b in branches if b in BRANCHES] == list(BRANCHES)
    assert all(branches[b] == dtype for b, dtype in BRANCHES.items())
    for name, fields in COLLECTIONS.items():
        assert list(collections[name])[: len(fields)] == list(fields)
    # every jagged branch of a collection has its counter, in front of it
    order = list(branches)
    for branch, collection in WIDE_JAGGED.items():
        assert order.index(f"n{collection}") < order.index(branch)
        assert branches[f"n{collection}"] == np.int32
    for collection in ("Tau", "Photon", "FatJet", "SubJet", "IsoTrack", "SV", "GenJet", "GenPart"):
        assert len(collections[collection]) >= 6, collection
    assert len(collections["Jet"]) >= 30
    assert len(collections["Muon"]) >= 40
    assert len(collections["Electron"]) >= 50
    prefixes = ("HLT_", "L1_", "Flag_")
    assert sum(b.startswith("HLT_") for b in branches) >= 200
    assert sum(b.startswith("L1_") for b in branches) >= 50
    assert sum(b.startswith("Flag_") for b in branches) >= 20
    assert all(branches[b] == np.bool_ for b in branches if b.startswith(prefixes))
    kinds = {np.dtype(dt).kind for dt in branches.values()}
    assert {"b", "i", "u", "f"} <= kinds
    for b in ("Jet_jetId", "Jet_puId", "Jet_nConstituents", "Muon_pdgId", "PV_npvsGood"):
        assert branches[b] == np.int32, b
    for b in ("Muon_tightId", "Electron_convVeto", "Tau_idDecayMode", "Flag_METFilters"):
        assert branches[b] == np.bool_, b
    for b in ("Jet_chHEF", "Jet_qgl", "Muon_dxy", "fixedGridRhoFastjetAll", "PuppiMET_pt"):
        assert branches[b] == np.float32, b
    assert branches["Muon_pfIsoId"] == np.uint8
    # padded (Jet to 6, PF candidates left out, other collections to 4): ~2000 features
    flat_count = sum(1 for b in branches if b not in WIDE_JAGGED)
    padding = {"Jet": 6, "PFCands": 0}
    features = flat_count + sum(
        len(fields) * padding.get(c, 4) for c, fields in collections.items()
    )
    print(f"features with Jet padded to 6, others to 4: {features}")
    assert features >= 2000


def test_wide_names_and_dtypes_are_real_nanoaod() -> None:
    path = shared_file("nano_dy.root")
    with uproot.open(path) as file:
        real = file["Events"].typenames()
    types = {"float": "float32", "int32_t": "int32", "bool": "bool", "uint8_t": "uint8"}
    types |= {"uint32_t": "uint32", "uint64_t": "uint64"}
    for branch, dtype in nanoaod.WIDE_BRANCHES.items():
        if branch.startswith(("PFCands_", "nPFCands")):
            continue  # the PF-candidate extension of the default layout
        assert branch in real, branch
        if branch[1:] in nanoaod.WIDE_COLLECTIONS:
            continue  # counters: int32 here (uproot's counters), uint32 in NanoAOD
        assert types[real[branch].removesuffix("[]")] == str(dtype), branch


def test_wide_events_dtypes_and_counters(wide_events: dict[str, dict[str, Any]]) -> None:
    for ev in wide_events.values():
        assert list(ev) == list(nanoaod.WIDE_BRANCHES)
        for name, dtype in nanoaod.WIDE_BRANCHES.items():
            value = ev[name]
            if name in WIDE_JAGGED:
                assert isinstance(value, ak.Array), name
                assert str(value.type) == f"1500 * var * {dtype}", name
                counts = ev[f"n{WIDE_JAGGED[name]}"]
                np.testing.assert_array_equal(ak.num(value), counts, err_msg=name)
                values = flat(value)
            else:
                assert isinstance(value, np.ndarray), name
                assert value.dtype == dtype, name
                assert len(value) == 1500, name
                values = value
            if dtype.kind == "f":
                assert np.all(np.isfinite(values)), name
        # the new collections are not empty, nor all the same
        for collection in ("Tau", "Photon", "FatJet", "SubJet", "SV", "GenJet", "GenPart"):
            assert ev[f"n{collection}"].sum() > 50, collection
        n_true = [ev[b].mean() for b in ev if b.startswith("HLT_")]
        assert 0 < np.mean(n_true) < 0.2  # trigger-like rates
        assert 0.95 < ev["Flag_METFilters"].mean() < 1


def test_wide_keeps_the_default_branches(wide_events: dict[str, dict[str, Any]]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nanoaod, "RNG_BLOCK", 400)
        narrow = generate_events("background", 1500, seed=11)
    assert_same(narrow, {b: wide_events["background"][b] for b in BRANCHES})


def test_wide_physics(wide_events: dict[str, dict[str, Any]]) -> None:
    for ev in wide_events.values():
        # leptons: identification follows isolation, nested working points
        np.testing.assert_array_equal(flat(ev["Muon_pdgId"]), -13 * flat(ev["Muon_charge"]))
        np.testing.assert_array_equal(flat(ev["Electron_pdgId"]), -11 * flat(ev["Electron_charge"]))
        tight, medium, loose = (flat(ev[f"Muon_{w}Id"]) for w in ("tight", "medium", "loose"))
        assert np.all(loose[tight])
        assert np.all(medium[tight])
        for wp in ("WP80", "WP90"):
            passed = flat(ev[f"Electron_mvaFall17V2Iso_{wp}"])
            assert np.all(flat(ev["Electron_mvaFall17V2Iso_WPL"])[passed])
        prompt = flat(ev["Muon_pfRelIso04_all"]) < 0.15
        assert flat(ev["Muon_tightId"])[prompt].mean() > flat(ev["Muon_tightId"])[~prompt].mean()
        # one generator-level lepton per event, the isolated one
        assert np.all(ev["nGenDressedLepton"] == 1)
        assert set(np.unique(np.abs(flat(ev["GenDressedLepton_pdgId"])))) == {11, 13}
        # jets: b jets b-tagged, energy fractions add up, indices point into the event
        b_jet = flat(ev["Jet_hadronFlavour"]) == 5
        deep_flav = flat(ev["Jet_btagDeepFlavB"])
        assert deep_flav[b_jet].mean() > deep_flav[~b_jet].mean() + 0.3
        fractions = sum(flat(ev[f"Jet_{f}"]) for f in ("chHEF", "neHEF", "chEmEF", "neEmEF"))
        assert np.all(fractions + flat(ev["Jet_muEF"]) < 1.01)
        gen_idx = ev["Jet_genJetIdx"]
        assert ak.all(gen_idx < ev["nGenJet"])
        assert ak.mean(gen_idx >= 0) > 0.9
        matched = ev["GenJet_pt"][gen_idx[gen_idx >= 0]]
        response = flat(ev["Jet_pt"][gen_idx >= 0]) / flat(matched)
        assert 0.9 < np.median(response) < 1.1
        for collection, counter in (("Jet_muonIdx1", "nMuon"), ("Tau_jetIdx", "nJet")):
            assert ak.all(ev[collection] < ev[counter]), collection
        np.testing.assert_array_equal(ev["nSubJet"], 2 * ev["nFatJet"])
        assert ak.all(ev["FatJet_subJetIdx2"] == ev["FatJet_subJetIdx1"] + 1)
        tau = [flat(ev[f"FatJet_tau{i}"]) for i in range(1, 5)]
        assert np.all((tau[0] >= tau[1]) & (tau[1] >= tau[2]) & (tau[2] >= tau[3]))
        for collection in ("Tau", "Photon", "FatJet", "GenJet", "TrigObj", "SoftActivityJet"):
            pt = ev[f"{collection}_pt"]
            assert ak.all(pt[:, :-1] >= pt[:, 1:]), collection
            phi = flat(ev[f"{collection}_phi"])
            assert np.all((phi >= -math.pi) & (phi < math.pi)), collection
        # single-lepton triggers fire on a lepton above threshold
        iso_mu = ak.max((ev["Muon_pfRelIso04_all"] < 0.15) * ev["Muon_pt"], axis=1)
        iso_mu = np.asarray(ak.fill_none(iso_mu, 0))
        fired = ev["HLT_IsoMu24"]
        assert 0.3 < fired.mean() < 0.6
        assert np.all(iso_mu[fired] > 20)
        assert np.mean(fired[iso_mu > 30]) > 0.85
        assert np.mean(ev["HLT_IsoMu27"] & ~fired) < 0.01
        met = ev["MET_pt"]
        assert np.corrcoef(met, ev["PuppiMET_pt"])[0, 1] > 0.8
        assert np.all(ev["Flag_goodVertices"][ev["Flag_METFilters"]])
        assert np.all(ev["PV_npvsGood"] <= ev["PV_npvs"])
    sig, bkg = wide_events["signal"], wide_events["background"]
    assert sig["nSV"].mean() > bkg["nSV"].mean()
    assert sig["L1_HTT280er"].mean() > bkg["L1_HTT280er"].mean()
    assert np.any(sig["genTtbarId"] > 50)
    assert np.all(bkg["genTtbarId"] == 0)


def test_wide_determinism() -> None:
    a = generate_events("signal", 300, 5, wide=True)
    b = generate_events("signal", 300, 5, wide=True)
    c = generate_events("signal", 300, 6, wide=True)
    parts = [
        generate_events("signal", 170, 5, first_event=0, wide=True),
        generate_events("signal", 130, 5, first_event=170, wide=True),
    ]
    for name, value in a.items():
        if name in WIDE_JAGGED:
            assert ak.array_equal(value, b[name]), name
            assert ak.array_equal(value, ak.concatenate([p[name] for p in parts])), name
        else:
            np.testing.assert_array_equal(value, b[name], err_msg=name)
            np.testing.assert_array_equal(value, np.concatenate([p[name] for p in parts]))
    assert not ak.array_equal(a["Tau_pt"], c["Tau_pt"])
    assert not np.array_equal(a["PuppiMET_pt"], c["PuppiMET_pt"])
    assert not all(np.array_equal(a[t], c[t]) for t in a if t.startswith("HLT_"))


@pytest.mark.parametrize("fmt", ["ttree", "rntuple"])
def test_wide_dataset_write_and_read_back(tmp_path: Path, fmt: str) -> None:
    ds = generate_dataset(
        tmp_path, n_events=150, seed=2, fmt=fmt, compression="lz4", samples=["signal"], wide=True
    )
    expected = generate_events("signal", 150, 2, wide=True)
    with uproot.open(ds.files["signal"][0]) as file:
        tree = file["Events"]
        assert tree.num_entries == 150
        assert tree.keys() == list(nanoaod.WIDE_BRANCHES)
        if fmt == "ttree":
            for branch, collection in WIDE_JAGGED.items():
                assert tree[branch].count_branch.name == f"n{collection}", branch
        back = tree.arrays(library="ak")
    for name, value in expected.items():
        if name in WIDE_JAGGED:
            assert ak.array_equal(back[name], value), name
        else:
            read = ak.to_numpy(back[name])
            assert read.dtype == value.dtype, name
            np.testing.assert_array_equal(read, value, err_msg=name)


def test_cli_generate_wide(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mlaas4hep.cli import app

    out = tmp_path / "wide"
    args = [str(out), "--events", "30", "--format", "rntuple", "--compression", "lz4", "--wide"]
    result = CliRunner().invoke(app, ["generate", *args])
    assert result.exit_code == 0, result.output
    for sample in SAMPLES:
        with uproot.open(out / f"{sample}_0.root") as file:
            assert file["Events"].keys() == list(nanoaod.WIDE_BRANCHES)
            assert file["Events"].num_entries == 30
