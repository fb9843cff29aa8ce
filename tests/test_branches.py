"""Branch selection: wildcards, regexes, exclusion, identifiers, close-match hints."""

from __future__ import annotations

import pytest

from mlaas4hep.data.branches import BranchSelection, parse_patterns, select_branches
from mlaas4hep.errors import ConfigError, DataError

NAMES = ["run", "event", "luminosityBlock", "nJet", "Jet_pt", "Jet_eta", "Muon_pt", "MET_pt"]


def test_patterns_from_string_or_list() -> None:
    assert parse_patterns(" Jet_*, MET_pt ,") == ["Jet_*", "MET_pt"]
    assert parse_patterns(["a", "b"]) == ["a", "b"]
    assert parse_patterns(None) == []


def test_wildcards_regex_and_order() -> None:
    assert select_branches(NAMES, "MET_pt,Jet_*") == ["MET_pt", "Jet_pt", "Jet_eta"]
    assert select_branches(NAMES, ["re:.*_pt"]) == ["Jet_pt", "Muon_pt", "MET_pt"]
    assert select_branches(NAMES, "/n[A-Z].*/") == ["nJet"]
    assert select_branches(NAMES, "*_pt", exclude="Jet_*") == ["Muon_pt", "MET_pt"]
    assert select_branches(NAMES, "Jet_pt,Jet_*") == ["Jet_pt", "Jet_eta"]


def test_unknown_branch_lists_close_matches() -> None:
    with pytest.raises(
        DataError, match=r"unknown branch 'Jet_ptt' in f.root; close matches: Jet_pt"
    ):
        select_branches(NAMES, "Jet_ptt", where="f.root")
    with pytest.raises(DataError, match="unknown pattern 'Elec\\*'"):
        select_branches(NAMES, "Elec*")
    with pytest.raises(ConfigError, match="invalid branch regex"):
        select_branches(NAMES, "re:(")


def test_identifiers_kept_out_of_features() -> None:
    features, ids = BranchSelection().resolve(NAMES)
    assert ids == ["run", "event", "luminosityBlock"]
    assert "event" not in features
    assert "Jet_pt" in features
    features, ids = BranchSelection(include="Jet_pt,event", identifiers="event").resolve(NAMES)
    assert (features, ids) == (["Jet_pt"], ["event"])
    assert BranchSelection(identifiers="").resolve(NAMES)[1] == []
    # Default identifiers are optional; explicit ones must exist.
    assert BranchSelection().resolve(["x"]) == (["x"], [])
    with pytest.raises(DataError, match="unknown branch 'evt'"):
        BranchSelection(identifiers="evt").resolve(NAMES)
    with pytest.raises(ConfigError, match="leaves no feature branch"):
        BranchSelection(include="event").resolve(NAMES)
