"""``mlaas4hep inspect``: the report on real ROOT files, local and over XRootD."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import XRootDServer, shared_file
from rich.console import Console

from mlaas4hep.data.inspect import (
    FileReport,
    LengthStats,
    classify,
    compression_name,
    inspect_file,
    print_report,
)
from mlaas4hep.errors import ConfigError, DataError

TTBAR = "nanoAOD_2015_CMS_Open_Data_ttbar.root"
NANO_DY = "nano_dy.root"
HZZ = "uproot-HZZ.root"
RNTUPLE_MUONS = "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root"
RNTUPLE_NANO = "cmsopendata2015_ttbar_19980_NANOAOD_RNTupleImporter_rntuple_v1-0-0-1.root"


@pytest.fixture(scope="module")
def ttbar_report() -> FileReport:
    """The full report on the NanoAOD ttbar TTree (947 branches), shared by tests."""
    return inspect_file(str(shared_file(TTBAR)))


@pytest.fixture(scope="module")
def nano_dy_report() -> FileReport:
    """The full report on the NanoAOD Drell-Yan TTree (1499 branches)."""
    return inspect_file(str(shared_file(NANO_DY)))


def expected_stats(lengths: np.ndarray) -> LengthStats:
    """Length statistics computed the obvious way, to compare with the report."""
    q50, q90, q99 = np.quantile(lengths, [0.5, 0.9, 0.99], method="inverted_cdf")
    return LengthStats(
        entries=len(lengths),
        min=int(lengths.min()),
        mean=float(lengths.mean()),
        max=int(lengths.max()),
        q50=int(q50),
        q90=int(q90),
        q99=int(q99),
    )


def render(report: FileReport, width: int = 200) -> str:
    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=width, color_system=None))
    return buffer.getvalue()


# ------------------------------------------------------------------ TTree


def test_nanoaod_ttree_jagged_branch_with_counter(ttbar_report: FileReport) -> None:
    path = shared_file(TTBAR)
    report = ttbar_report
    assert report.tree == "Events"
    assert report.classname == "TTree"
    assert report.entries == 200
    assert report.total_branches == len(report.branches) == 947
    assert [(t.name, t.classname, t.entries) for t in report.trees] == [("Events", "TTree", 200)]
    assert report.size == path.stat().st_size
    assert report.compression == "ZLIB(1)"

    jet_pt = report.branch("Jet_pt")
    assert (jet_pt.type, jet_pt.kind, jet_pt.counter) == ("var * float32", "jagged", "nJet")
    assert jet_pt.typename == "float[]"
    n_jet = report.branch("nJet")
    assert (n_jet.kind, n_jet.counter, n_jet.lengths) == ("flat", None, None)

    with uproot.open(path) as file:
        lengths = ak.to_numpy(ak.num(file["Events"]["Jet_pt"].array(), axis=1))
    assert jet_pt.lengths == expected_stats(lengths)
    assert report.stats_entries == 200
    assert sum(b.kind == "jagged" for b in report.branches) == 344
    # Every jagged branch has statistics; all Jet_ ones share nJet's.
    assert all(b.lengths is not None for b in report.branches if b.kind == "jagged")
    assert report.branch("Jet_eta").lengths == jet_pt.lengths


def test_embedded_baskets_have_unknown_compressed_size() -> None:
    # This file's baskets were never flushed: they sit inside the TTree metadata.
    report = inspect_file(str(shared_file(TTBAR)), branches="Jet_pt")
    jet_pt = report.branch("Jet_pt")
    assert jet_pt.compressed_bytes is None
    # 538 jets x 4 bytes, plus the basket's key header and offsets.
    assert jet_pt.uncompressed_bytes is not None
    assert 4 * 538 < jet_pt.uncompressed_bytes < 4 * 538 + 1000


def test_branch_sizes_come_from_the_metadata() -> None:
    path = shared_file(NANO_DY)
    report = inspect_file(str(path), branches="Muon_pt")
    with uproot.open(path) as file:
        branch = file["Events"]["Muon_pt"]
        assert report.branch("Muon_pt").compressed_bytes == branch.compressed_bytes > 0
        assert report.branch("Muon_pt").uncompressed_bytes == branch.uncompressed_bytes
    assert [t.name for t in report.trees] == ["Events", "Runs"]
    assert report.total_branches == 1499


def test_stats_entries_limits_and_disables_length_statistics() -> None:
    path = str(shared_file(HZZ))
    limited = inspect_file(path, branches="Jet_Px", stats_entries=100)
    with uproot.open(path) as file:
        counts = file["events"]["NJet"].array(library="np", entry_stop=100)
    assert limited.stats_entries == 100
    assert limited.branch("Jet_Px").counter == "NJet"
    assert limited.branch("Jet_Px").lengths == expected_stats(counts)

    everything = inspect_file(path, branches="Jet_Px", stats_entries=-1)
    assert everything.stats_entries == 2421
    lengths = everything.branch("Jet_Px").lengths
    assert lengths is not None
    assert lengths.entries == 2421

    none = inspect_file(path, branches="Jet_Px", stats_entries=0)
    assert none.stats_entries == 0
    assert none.branch("Jet_Px").lengths is None

    with pytest.raises(ConfigError, match="stats_entries"):
        inspect_file(path, stats_entries=-5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("uproot-HZZ.root", "ZLIB(1)"),
        ("uproot-HZZ-lz4.root", "LZ4(4)"),
        ("uproot-HZZ-zstd.root", "ZSTD(5)"),
        ("uproot-HZZ-lzma.root", "LZMA(4)"),
        ("uproot-HZZ-uncompressed.root", "none"),
    ],
)
def test_hzz_compressions(name: str, expected: str) -> None:
    report = inspect_file(str(shared_file(name)))
    assert report.compression == expected
    assert report.file_compression == expected
    assert report.tree == "events"
    assert report.entries == 2421
    assert (
        report.branch("Jet_Px").lengths
        == inspect_file(str(shared_file(HZZ))).branch("Jet_Px").lengths
    )
    sizes = {b.name: (b.compressed_bytes, b.uncompressed_bytes) for b in report.branches}
    if expected == "none":
        assert all(c == u for c, u in sizes.values())
    else:
        assert sum(c or 0 for c, _ in sizes.values()) < sum(u or 0 for _, u in sizes.values())


def test_strings_are_reported_as_other() -> None:
    report = inspect_file(str(shared_file("uproot-Zmumu.root")), branches="Type,E1")
    assert [(b.name, b.type, b.kind) for b in report.branches] == [
        ("Type", "string", "other"),
        ("E1", "float64", "flat"),
    ]


def test_classify_and_compression_names() -> None:
    assert classify("unsupported") == "unsupported"
    assert classify("var * float32") == "jagged"
    assert classify("3 * float32") == "flat"
    assert classify("var * var * float32") == "other"
    assert classify("{a: int64}") == "other"
    assert compression_name(1) == "ZLIB(1)"
    assert compression_name(505) == "ZSTD(5)"
    assert compression_name(100) == "none"


def test_ttree_written_by_uproot(tmp_path: Path) -> None:
    path = tmp_path / "objects.root"
    with uproot.recreate(path) as file:
        file.mktree("t", {"x": "float64", "v": "var * int32"})
        file["t"].extend({"x": np.arange(3.0), "v": ak.Array([[1], [], [2, 3]])})
    report = inspect_file(str(path))
    assert report.branch("v").counter == "nv"
    assert report.branch("v").lengths == expected_stats(np.array([1, 0, 2]))


def test_unsupported_branch_does_not_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A branch uproot has no interpretation for is reported, not fatal."""
    from uproot.behaviors.TBranch import TBranch
    from uproot.interpretation.identify import UnknownInterpretation

    original = TBranch.interpretation

    def interpretation(self: TBranch) -> object:
        if self.name == "Jet_pt":
            return UnknownInterpretation("no streamer for MyClass", "file", self.name)
        if self.name == "Jet_eta":
            raise ValueError("cannot decode")
        return original.fget(self)  # type: ignore[attr-defined]

    monkeypatch.setattr(TBranch, "interpretation", property(interpretation))
    report = inspect_file(str(shared_file(TTBAR)), branches="Jet_pt,Jet_eta,Jet_phi")
    for name in ("Jet_pt", "Jet_eta"):
        info = report.branch(name)
        assert (info.type, info.kind, info.lengths) == ("unsupported", "unsupported", None)
        assert info.typename == "TBranch"  # the class of the branch: all that is known
    assert report.branch("Jet_phi").kind == "jagged"
    assert "unsupported (TBranch)" in render(report)


# ----------------------------------------------------------------- RNTuple


def test_rntuple_muons() -> None:
    report = inspect_file(str(shared_file(RNTUPLE_MUONS)))
    assert (report.tree, report.classname, report.entries) == ("Events", "RNTuple", 1000)
    assert report.trees[0].classname == "RNTuple"
    assert report.compression == "ZSTD(5)"
    names = [b.name for b in report.branches]
    assert names == ["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge", "nMuon"]
    muon_pt = report.branch("Muon_pt")
    assert (muon_pt.type, muon_pt.kind, muon_pt.counter) == ("var * float32", "jagged", "nMuon")
    assert report.branch("Muon_charge").type == "var * int32"
    assert report.branch("nMuon").kind == "flat"
    with uproot.open(shared_file(RNTUPLE_MUONS)) as file:
        lengths = ak.to_numpy(ak.num(file["Events"]["Muon_pt"].array(), axis=1))
    assert muon_pt.lengths == expected_stats(lengths)
    # Float data: 4 bytes per muon before compression.
    assert muon_pt.uncompressed_bytes == 4 * int(lengths.sum())
    assert muon_pt.compressed_bytes is not None
    assert 0 < muon_pt.compressed_bytes <= muon_pt.uncompressed_bytes


def test_rntuple_nanoaod_hides_internal_collections() -> None:
    report = inspect_file(str(shared_file(RNTUPLE_NANO)))
    assert (report.classname, report.entries) == ("RNTuple", 10)
    names = [b.name for b in report.branches]
    assert not [name for name in names if name.startswith("_collection") or "." in name]
    # Same content as the NanoAOD TTree it was imported from: 947 branches, 344 jagged.
    assert len(names) == report.total_branches == 947
    assert sum(b.kind == "jagged" for b in report.branches) == 344
    jet_pt = report.branch("Jet_pt")
    assert (jet_pt.type, jet_pt.counter) == ("var * float32", "nJet")
    assert report.branch("run").type == "uint32"
    with uproot.open(shared_file(RNTUPLE_NANO)) as file:
        lengths = file["Events"]["nJet"].array(library="np")
    assert jet_pt.lengths == expected_stats(lengths)


def test_rntuple_written_by_uproot(tmp_path: Path) -> None:
    path = tmp_path / "rntuple.root"
    with uproot.recreate(path) as file:
        file["Events"] = {
            "x": np.arange(4, dtype=np.float32),
            "Jet_pt": ak.Array([[1.0, 2.0], [], [3.0], [4.0, 5.0, 6.0]]),
        }
    report = inspect_file(str(path))
    assert report.classname == "RNTuple"
    jet_pt = report.branch("Jet_pt")
    assert (jet_pt.type, jet_pt.kind, jet_pt.counter) == ("var * float64", "jagged", None)
    assert jet_pt.lengths == expected_stats(np.array([2, 0, 1, 3]))
    assert report.branch("x").type == "float32"


# ------------------------------------------------- JSON, filter, printing


def test_json_round_trip(ttbar_report: FileReport) -> None:
    report = ttbar_report
    data = json.loads(json.dumps(report.to_dict()))
    assert data == report.to_dict()
    assert FileReport.from_dict(data) == report
    jet_pt = next(b for b in data["branches"] if b["name"] == "Jet_pt")
    assert set(jet_pt["lengths"]) == {"entries", "min", "mean", "max", "q50", "q90", "q99"}


def test_branches_filter() -> None:
    report = inspect_file(str(shared_file(TTBAR)), branches="Jet_pt,re:Muon_(pt|eta),nJet")
    # Each pattern's matches in file order, in the order of the patterns.
    assert [b.name for b in report.branches] == ["Jet_pt", "Muon_eta", "Muon_pt", "nJet"]
    assert report.total_branches == 947
    assert report.selection == ["Jet_pt", "re:Muon_(pt|eta)", "nJet"]
    listed = inspect_file(str(shared_file(TTBAR)), branches=["Electron_*"])
    assert listed.branches
    assert all(b.name.startswith("Electron_") for b in listed.branches)


def test_print_report(nano_dy_report: FileReport) -> None:
    report = nano_dy_report
    text = render(report)
    for expected in ("nano_dy.root", "ZLIB(1)", "Events", "Runs", "1499", "Jet_pt", "nJet"):
        assert expected in text
    assert "var * float32" in text
    small = inspect_file(str(shared_file(HZZ)), branches="Jet_Px,NJet")
    text = render(small, width=100)
    assert "2 of 51 shown" in text
    row = next(line for line in text.splitlines() if line.lstrip().startswith("Jet_Px"))
    stats = small.branch("Jet_Px").lengths
    assert stats is not None
    assert f"{stats.q50} / {stats.q90} / {stats.q99}" in row


def test_print_report_fits_a_narrow_terminal(nano_dy_report: FileReport) -> None:
    report = nano_dy_report
    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=100, force_terminal=True, color_system=None))
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 100
    # Names are never cut: a long one gets a line of its own.
    words = {word for line in lines for word in line.split()}
    assert {b.name for b in report.branches} <= words


def test_print_report_with_unknown_compressed_sizes() -> None:
    text = render(inspect_file(str(shared_file(TTBAR)), branches="Jet_*"))
    assert "compressed size is unknown" in text


# -------------------------------------------------------------------- remote


@pytest.mark.xrootd
@pytest.mark.parametrize("name", [TTBAR, HZZ, RNTUPLE_NANO])
def test_remote_equals_local(xrootd_server: XRootDServer, name: str) -> None:
    path = shared_file(name)
    url = xrootd_server.publish(path)
    remote = inspect_file(url).to_dict()
    local = inspect_file(str(path)).to_dict()
    assert remote.pop("url") == url
    assert local.pop("url") == str(path)
    assert remote == local


@pytest.mark.xrootd
def test_remote_missing_file(xrootd_server: XRootDServer) -> None:
    url = xrootd_server.url(xrootd_server.root / "missing.root")
    with pytest.raises(DataError, match=r"missing\.root"):
        inspect_file(url)


# -------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"file not found: .*nothing\.root"):
        inspect_file(str(tmp_path / "nothing.root"))


def test_wrong_tree_lists_available_trees() -> None:
    with pytest.raises(DataError, match=r"tree 'Event' not found .*trees: Events, Runs"):
        inspect_file(str(shared_file(NANO_DY)), "Event")


def test_unknown_branch_lists_close_matches() -> None:
    with pytest.raises(DataError, match=r"'Jet_ptt'.*nanoAOD.*close matches: Jet_pt"):
        inspect_file(str(shared_file(TTBAR)), branches="Jet_ptt")
    with pytest.raises(DataError, match=r"'Muon_pz\*'"):
        inspect_file(str(shared_file(TTBAR)), branches="Muon_pz*")


def test_not_a_root_file(tmp_path: Path) -> None:
    path = tmp_path / "text.root"
    path.write_text("not ROOT\n" * 100)
    with pytest.raises(DataError, match=r"text\.root"):
        inspect_file(str(path))


# ----------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from mlaas4hep.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_cli_json() -> None:
    path = shared_file(HZZ)
    done = run_cli("inspect", f"{path}:events", "--json", "--branches", "Jet_*")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["tree"] == "events"
    assert data["compression"] == "ZLIB(1)"
    assert all(b["name"].startswith("Jet_") for b in data["branches"])


def test_cli_tables() -> None:
    done = run_cli("inspect", str(shared_file(RNTUPLE_MUONS)))
    assert done.returncode == 0, done.stderr
    assert "RNTuple" in done.stdout
    assert "Muon_pt" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/file.root"], "file not found: /no/such/file.root"),
        (["--tree", "Event", "NANO_DY"], "Events, Runs"),
        (["--branches", "Jet_ptt", "TTBAR"], "close matches: Jet_pt"),
    ],
)
def test_cli_errors(args: list[str], message: str) -> None:
    names = {"NANO_DY": NANO_DY, "TTBAR": TTBAR}
    args = [str(shared_file(names[a])) if a in names else a for a in args]
    done = run_cli("inspect", *args)
    assert done.returncode == 2
    assert "error:" in done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize(("codec", "expected"), [("lz4", "LZ4("), ("zstd:5", "ZSTD(5)")])
def test_generated_file_reports_its_real_compression(
    tmp_path: Path, codec: str, expected: str
) -> None:
    from mlaas4hep.datasets import generate_dataset

    dataset = generate_dataset(tmp_path, n_events=2000, compression=codec, samples=("signal",))
    report = inspect_file(str(dataset.files["signal"][0]), branches="PFCands_*")
    assert report.compression is not None
    assert report.compression.startswith(expected)
