"""Expanding inputs into sources: files, globs, directories, list files, URLs, labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlaas4hep.data.sources import Source, read_list_file, resolve_sources, split_tree_spec
from mlaas4hep.errors import ConfigError, DataError


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "a" / f"f{i}.root" for i in range(3)]
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"root")
    return paths


def test_local_glob_and_directory(files: list[Path], tmp_path: Path) -> None:
    assert [s.url for s in resolve_sources(str(files[0]))] == [str(files[0])]
    assert [s.url for s in resolve_sources(str(tmp_path / "a" / "f*.root"))] == [
        str(p) for p in files
    ]
    assert [s.url for s in resolve_sources(str(tmp_path))] == [str(p) for p in files]


def test_list_file_with_comments_and_labels(files: list[Path], tmp_path: Path) -> None:
    listing = tmp_path / "files.txt"
    listing.write_text(f"# signal\n{files[0]}\n\n{files[1]}  # background\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n0\n")
    sources = resolve_sources(str(listing), labels=str(labels))
    assert [(s.url, s.label) for s in sources] == [(str(files[0]), 1.0), (str(files[1]), 0.0)]
    assert read_list_file(listing) == [str(files[0]), str(files[1])]


def test_label_count_mismatch_is_an_error(files: list[Path], tmp_path: Path) -> None:
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(p) for p in files))
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n0\n")
    with pytest.raises(ConfigError, match=r"labels.txt has 2 labels but there are 3 inputs"):
        resolve_sources(str(listing), labels=str(labels))
    with pytest.raises(ConfigError, match="2 labels given for 3 inputs"):
        resolve_sources([str(p) for p in files], labels=[1, 0])
    labels.write_text("1\nsignal\n0\n")
    with pytest.raises(ConfigError, match=r"label 'signal' in .*labels.txt is not a number"):
        resolve_sources(str(listing), labels=str(labels))


def test_inline_labels_weights_and_glob_inheritance(files: list[Path], tmp_path: Path) -> None:
    sources = resolve_sources(
        [str(tmp_path / "a" / "f[01].root"), str(files[2])], labels=[1, 0], weights=[0.5, 2]
    )
    assert [(s.label, s.weight) for s in sources] == [(1.0, 0.5), (1.0, 0.5), (0.0, 2.0)]
    assert all(s.label == 1.0 for s in resolve_sources(str(tmp_path), labels=1))


def test_urls_tree_spec_and_redirector() -> None:
    assert split_tree_spec("root://host:1094//data/f.root:Events") == (
        "root://host:1094//data/f.root",
        "Events",
    )
    assert split_tree_spec("root://host:1094//data/f.root") == (
        "root://host:1094//data/f.root",
        None,
    )
    (remote,) = resolve_sources("https://example.org/x.root:tree")
    assert remote == Source(url="https://example.org/x.root", tree="tree")
    (logical,) = resolve_sources("/store/mc/x.root", redirector="root://xrd.example.org/")
    assert logical.url == "root://xrd.example.org//store/mc/x.root"
    with pytest.raises(DataError, match="logical file name but no redirector"):
        resolve_sources("/store/mc/x.root")


def test_missing_inputs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"file not found: .*nope\.root"):
        resolve_sources(str(tmp_path / "nope.root"))
    with pytest.raises(DataError, match="no file matches"):
        resolve_sources(str(tmp_path / "*.root"))
    with pytest.raises(DataError, match=r"no \.root file in directory"):
        resolve_sources(str(tmp_path))
    with pytest.raises(DataError, match="cannot read list file"):
        resolve_sources(str(tmp_path / "files.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="names no file"):
        resolve_sources(str(tmp_path / "empty.txt"))
