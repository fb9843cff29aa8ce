"""Reading a TTree with only the chosen branches' metadata, against uproot's full read."""

from __future__ import annotations

import random
from pathlib import Path

import awkward as ak
import pytest
import uproot
from conftest import XRootDServer, shared_file

from mlaas4hep.data import rootfile
from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.pruned_tree import (
    CannotPrune,
    ChooseBranches,
    listed_branch_names,
    no_branches,
    read_pruned_tree,
)
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.rootfile import get_tree, open_root
from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.errors import DataError

# Real files written by ROOT (NanoAOD: 947 to 1,601 branches) and by uproot.
TREES = [
    ("nanoAOD_2015_CMS_Open_Data_ttbar.root", "Events"),
    ("nano_dy.root", "Events"),
    ("nano_dy.root", "Runs"),
    ("nano_dimuon.root", "Events"),
    ("uproot-HZZ.root", "events"),
    ("uproot-HZZ-lz4.root", "events"),
    ("uproot-Zmumu.root", "events"),
    ("uproot-small-dy-withoffsets.root", "tree"),
]


def chosen(names: list[str]) -> ChooseBranches:
    """A choice of exactly ``names``, whatever the tree holds."""
    return lambda _available: names


def assert_same_branches(pruned: object, full: object, names: list[str]) -> None:
    """The pruned tree's branches read and interpret exactly as uproot's full tree."""
    for name in names:
        ours, theirs = pruned[name], full[name]  # type: ignore[index]
        assert str(ours.interpretation) == str(theirs.interpretation), name
        assert ours.entry_offsets == theirs.entry_offsets, name
        assert ak.array_equal(ours.array(), theirs.array(), equal_nan=True), name


@pytest.mark.parametrize(("file", "tree_name"), TREES)
def test_chosen_branches_read_as_in_a_full_read(file: str, tree_name: str) -> None:
    path = shared_file(file)
    full = uproot.open(path)[tree_name]
    names = full.keys(recursive=False)
    jagged = [b.name for b in full.branches if b.count_branch is not None]
    rng = random.Random(file)
    picks = [rng.sample(names, min(len(names), 6)), jagged[:1], names[-1:]]
    for pick in picks:
        with uproot.open(path) as directory:
            pruned = read_pruned_tree(directory, tree_name, chosen(pick))
            kept = pruned.keys(recursive=False)
            counts = [full[n].count_branch for n in pick]
            counters = {branch.name for branch in counts if branch is not None}
            # the chosen branches and the counters their leaves point to, in file order
            assert set(kept) == set(pick) | counters
            assert kept == [n for n in names if n in set(kept)]
            assert len(pruned.member("fLeaves")) == sum(
                len(pruned[n].member("fLeaves")) for n in kept
            )
            assert pruned.num_entries == full.num_entries
            assert listed_branch_names(pruned) == names
            assert_same_branches(pruned, full, kept)


def test_a_jagged_branch_alone_brings_its_counter() -> None:
    path = shared_file("nanoAOD_2015_CMS_Open_Data_ttbar.root")
    with uproot.open(path) as directory:
        pruned = read_pruned_tree(directory, "Events", chosen(["Jet_pt"]))
        assert pruned.keys() == ["nJet", "Jet_pt"]
        assert pruned["Jet_pt"].count_branch is pruned["nJet"]
        assert str(pruned["Jet_pt"].interpretation) == "AsJagged(AsDtype('>f4'))"
        counts = ak.num(pruned["Jet_pt"].array()).to_numpy()
        assert (counts == uproot.open(path)["Events"]["nJet"].array(library="np")).all()


def test_no_branches_still_gives_the_entry_count() -> None:
    path = shared_file("nano_dimuon.root")
    with uproot.open(path) as directory:
        pruned = read_pruned_tree(directory, "Events", no_branches)
        assert pruned.keys() == []
        assert pruned.num_entries == uproot.open(path)["Events"].num_entries
        assert len(listed_branch_names(pruned)) == 1601


def test_generated_wide_files(tmp_path: Path) -> None:
    generated = generate_dataset(tmp_path, n_events=300, seed=3, wide=True, samples=("signal",))
    path = generated.files["signal"][0]
    full = uproot.open(path)["Events"]
    pick = ["Jet_pt", "Muon_eta", "MET_pt", "event"]
    with uproot.open(path) as directory:
        pruned = read_pruned_tree(directory, "Events", chosen(pick))
        assert set(pruned.keys()) == {*pick, "nJet", "nMuon"}
        assert_same_branches(pruned, full, pruned.keys())


def test_an_rntuple_cannot_be_pruned_and_get_tree_reads_it_whole() -> None:
    path = shared_file("Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root")
    with uproot.open(path) as directory:
        with pytest.raises(CannotPrune, match="not a TTree"):
            read_pruned_tree(directory, "Events", no_branches)
        tree = get_tree(directory, "Events", path=str(path), branches=no_branches)
        assert tree.num_entries == 1000
        assert "nMuon" in list(tree.keys())


def test_get_tree_reads_every_branch_where_pruning_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(shared_file("uproot-HZZ.root"))

    def cannot(*_args: object) -> object:
        raise CannotPrune("a layout it does not know")

    with uproot.open(path) as directory:
        assert len(get_tree(directory, "events", path=path, branches=no_branches).keys()) == 0
        monkeypatch.setattr(rootfile, "read_pruned_tree", cannot)
        assert len(get_tree(directory, "events", path=path, branches=no_branches).keys()) == 51


def test_the_stream_reads_only_the_selected_metadata_and_hints_from_all() -> None:
    path = shared_file("nano_dy.root")
    selection = BranchSelection(include="Jet_pt,MET_pt", identifiers=["event"])
    stream = EventStream(resolve_sources(str(path)), selection, step_size=16, shuffle=False)
    assert stream._open_tree(0).keys() == ["event", "nJet", "Jet_pt", "MET_pt"]
    ours = ak.concatenate([c.arrays for c in stream.iter_epoch(0)])
    plain = uproot.open(path)["Events"].arrays(["Jet_pt", "MET_pt", "event"])
    assert ak.array_equal(ours[plain.fields], plain)
    # a misspelt branch is answered with the close names among all 1,499
    with pytest.raises(DataError, match=r"unknown branch 'Muon_ptt' .*close matches: Muon_pt"):
        EventStream([Source(str(path))], BranchSelection(include="Jet_pt,Muon_ptt"))


def test_candidates_cover_what_resolve_chooses() -> None:
    names = ["run", "event", "nJet", "Jet_pt", "Jet_eta", "MET_pt", "MET_phi", "PV_x"]
    for selection in [
        BranchSelection(include="Jet_*,MET_pt"),
        BranchSelection(include="re:MET_.*", exclude="MET_phi", identifiers=["event"]),
        BranchSelection(include=["PV_x", "/Jet_p./"], identifiers=""),
    ]:
        assert selection.narrows
        features, identifiers = selection.resolve(names)
        assert set(features) | set(identifiers) <= set(selection.candidates(names))
    assert not BranchSelection(exclude="PV_*").narrows
    assert set(BranchSelection(include="Jet_pt").candidates(names)) == {"Jet_pt", "run", "event"}
    wild = BranchSelection(include="Jet_*,/PV_./", identifiers=["luminosityBlock"])
    assert set(wild.candidates(names)) == {"Jet_pt", "Jet_eta", "PV_x"}


@pytest.mark.xrootd
def test_pruned_read_over_xrootd_equals_local(xrootd_server: XRootDServer) -> None:
    local = shared_file("nanoAOD_2015_CMS_Open_Data_ttbar.root")
    url = xrootd_server.publish(local)
    pick = ["Muon_pt", "Electron_eta", "MET_pt", "event"]
    with open_root(url) as directory:
        remote = get_tree(directory, "Events", path=url, branches=chosen(pick))
        assert set(remote.keys()) == {*pick, "nMuon", "nElectron"}
        assert_same_branches(remote, uproot.open(local)["Events"], remote.keys())
