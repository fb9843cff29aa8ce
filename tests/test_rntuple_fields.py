"""The one-pass RNTuple field index gives exactly uproot's own field tree."""

from __future__ import annotations

import awkward as ak
import pytest
import uproot
from conftest import shared_file

from mlaas4hep.data.rntuple_fields import index_fields
from mlaas4hep.data.rootfile import get_tree, open_root

RNTUPLES = [
    "cmsopendata2015_ttbar_19980_NANOAOD_RNTupleImporter_rntuple_v1-0-0-1.root",  # 1,313 fields
    "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root",
]


def field_tree(ntuple: object) -> list[list[str]]:
    """Every field's child names, the RNTuple's own first, as uproot's ``fields`` gives them."""
    return [[f.name for f in field.fields] for field in [ntuple, *ntuple.all_fields]]  # type: ignore[attr-defined]


@pytest.mark.parametrize("file", RNTUPLES)
def test_index_equals_uproots_own_field_tree(file: str) -> None:
    path = shared_file(file)
    theirs = uproot.open(path)["Events"]
    ours = uproot.open(path)["Events"]
    index_fields(ours)
    assert ours._fields is not None  # filled by the index, before uproot's scan
    assert field_tree(ours) == field_tree(theirs)
    assert ours.keys() == theirs.keys()
    index_fields(ours)  # a second time changes nothing
    assert field_tree(ours) == field_tree(theirs)
    available = set(theirs.keys())
    names = [n for n in ("nJet", "Jet_pt", "nMuon", "Muon_pt", "Muon_eta") if n in available]
    assert ak.array_equal(ours.arrays(names), theirs.arrays(names), equal_nan=True)


def test_get_tree_indexes_an_rntuple() -> None:
    path = str(shared_file(RNTUPLES[0]))
    with open_root(path) as directory:
        tree = get_tree(directory, "Events", path=path)
        assert tree._fields is not None
        assert len(tree.keys(recursive=False)) == len(uproot.open(path)["Events"].fields)
