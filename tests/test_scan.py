"""The first pass: parallel equals serial, data identity, preprocessing, errors."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from helpers import write_indexed

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.testing import free_port
from mlaas4hep.transform.preprocess import PreprocessError
from mlaas4hep.transform.scan import ScanOptions, scan
from mlaas4hep.transform.spec import FeatureSpec

SELECT = BranchSelection(include="flat,X_val", identifiers=[])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("scan")
    return [write_indexed(folder / f"f{i}.root", 700 + 300 * i, 10_000 * i) for i in range(3)]


def test_parallel_scan_equals_serial(files: list[Path]) -> None:
    sources = resolve_sources([str(f) for f in files])
    serial, report = scan(sources, SELECT, workers=1)
    parallel, _ = scan(sources, SELECT, workers=2)
    assert parallel.to_dict() == serial.to_dict()
    assert report.events == report.selected == 700 + 1000 + 1300
    x = serial.branch("X_val")
    assert (x.kind, x.collection, x.length, x.length_policy) == ("jagged", "X", 3, "max")
    assert x.lengths is not None
    assert (
        x.lengths.counts
        == np.bincount(
            np.concatenate(
                [np.arange(a, a + n) % 4 for a, n in [(0, 700), (10_000, 1000), (20_000, 1300)]]
            )
        ).tolist()
    )


def test_scan_on_a_dask_scheduler(files: list[Path], dask_scheduler: str) -> None:
    sources = resolve_sources([str(f) for f in files])
    serial, _ = scan(sources, SELECT)
    distributed, report = scan(sources, SELECT, scheduler=dask_scheduler)
    assert distributed.to_dict() == serial.to_dict()
    assert report.events == 700 + 1000 + 1300


def test_unreachable_scheduler_is_a_clear_error(files: list[Path]) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(
        ConfigError, match=f"cannot reach the dask scheduler tcp://127.0.0.1:{port}"
    ):
        scan(resolve_sources(str(files[0])), SELECT, scheduler=f"tcp://127.0.0.1:{port}")


def test_data_hash_identifies_the_data_not_the_path(files: list[Path], tmp_path: Path) -> None:
    spec, _ = scan(resolve_sources(str(files[0])), SELECT)
    moved = tmp_path / "moved.root"
    moved.write_bytes(files[0].read_bytes())
    again, _ = scan(resolve_sources(str(moved)), SELECT)
    assert again.data_hash == spec.data_hash
    other, _ = scan(resolve_sources(str(files[1])), SELECT)
    fewer, _ = scan(resolve_sources(str(files[0])), SELECT, nevts=100)
    assert len({spec.data_hash, other.data_hash, fewer.data_hash}) == 3
    with pytest.raises(DataError, match="computed on other data"):
        spec.check_data(other.data_hash)
    assert "other data" in (spec.check_data(other.data_hash, allow_other=True) or "")


def test_length_policies_and_overrides(files: list[Path]) -> None:
    sources = resolve_sources(str(files[0]))
    fixed, report = scan(sources, SELECT, options=ScanOptions(length=2))
    assert fixed.branch("X_val").length == 2
    assert report.clipped == {"X": int((np.arange(700) % 4 > 2).sum())}
    over, _ = scan(sources, SELECT, options=ScanOptions(lengths={"X_*": "q0.5"}))
    assert over.branch("X_val").length_policy == "quantile 0.5"
    with pytest.raises(ConfigError, match="length policy for X_val must be"):
        scan(sources, SELECT, options=ScanOptions(length="most"))


def test_preprocessing_selection_and_new_variables(files: list[Path], tmp_path: Path) -> None:
    module = tmp_path / "preproc.py"
    module.write_text(
        "import awkward as ak\n"
        "def selection(events):\n    return events.flat > 100\n"
        "def new_variables(events):\n"
        "    return {'X_sum': ak.sum(events.X_val, axis=1), 'X_twice': events.X_val * 2}\n"
    )
    spec, report = scan(resolve_sources(str(files[0])), SELECT, preprocessing=module)
    assert report.selected == int((np.arange(700) / 2 > 100).sum())
    assert spec.preprocessing is not None
    assert len(spec.preprocessing["sha256"]) == 64
    assert spec.branch("X_sum").derived
    assert spec.branch("X_twice").kind == "jagged"
    assert spec.source_branches == ["flat", "X_val"]
    event = np.arange(700)[np.arange(700) / 2 > 100]
    sums = np.array([sum(10 * e + j for j in range(e % 4)) for e in event], dtype=float)
    stats = spec.branch("X_sum").stats
    assert stats is not None
    assert stats.mean == pytest.approx(sums.mean())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "def selection(events):\n    raise RuntimeError('boom')\n",
            r"selection\(\) in .*failed on .*f0.root: RuntimeError: boom",
        ),
        (
            "def selection(events):\n    return events.flat[:3] > 0\n",
            r"selection\(\) in .* returned 3 entries for 700 events of .*f0.root",
        ),
        ("def new_variables(events):\n    return [1]\n", r"must return a dict"),
        ("def label(events):\n    return 1\n", r"label\(\) in .* returned int, not an array"),
        ("x = 1\n", "defines none of selection, new_variables, label"),
        ("import nonexistent_module_xyz\n", "importing .* failed: ModuleNotFoundError"),
    ],
)
def test_bad_preprocessing_is_reported(
    files: list[Path], tmp_path: Path, body: str, message: str
) -> None:
    module = tmp_path / "preproc.py"
    module.write_text(body)
    source = resolve_sources(str(files[0]))
    select = BranchSelection(include="flat,X_val,event", identifiers=[])
    if "label" in body:
        from mlaas4hep.transform.preprocess import load_preprocessing

        events = ak.Array({"flat": [1.0, 2.0]})
        with pytest.raises(PreprocessError, match=message):
            load_preprocessing(module).label(events, where="f0.root")
        return
    with pytest.raises((PreprocessError, ConfigError), match=message):
        scan(source, select, preprocessing=module)


def test_type_change_between_files_is_an_error(files: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other.root"
    with uproot.recreate(other) as out:
        out["Events"] = {"flat": np.arange(5, dtype=np.int32), "X_val": ak.Array([[1.0]] * 5)}
    with pytest.raises(ConfigError, match="branch 'flat' is float64 in one file and int32"):
        scan([Source(str(files[0])), Source(str(other))], SELECT)


def test_empty_file_scans_to_an_empty_spec_entry(tmp_path: Path) -> None:
    empty = write_indexed(tmp_path / "empty.root", 0)
    full = write_indexed(tmp_path / "full.root", 50)
    spec, report = scan([Source(str(empty)), Source(str(full))], SELECT)
    assert report.events == 50
    assert spec.branch("flat").stats is not None
    assert FeatureSpec.from_dict(spec.to_dict()).data_hash == spec.data_hash
