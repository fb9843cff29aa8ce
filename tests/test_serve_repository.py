"""The model repository: names, versions, tags, history, concurrency, remote roots."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import fsspec
import pytest

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve import repository as repository_module
from mlaas4hep.serve.errors import (
    BadRequest,
    InvalidName,
    ModelLoadError,
    ModelNotFound,
    Unavailable,
)
from mlaas4hep.serve.repository import (
    ModelRepository,
    VersionPolicy,
    directory_checksum,
    validate_model_name,
    validate_tag,
)


def stage(path: Path, content: str = "weights", **extra: str) -> Path:
    """A staged model directory: ``model.onnx`` with ``content`` plus ``extra`` files."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_text(content)
    for name, text in extra.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (but the index) → file contents (None for directories)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if ".mlaas4hep" not in p.parts
    }


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "repo")


@pytest.fixture
def memory_root() -> Iterator[str]:
    url = f"memory://repo-{uuid.uuid4().hex}"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


# -- names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["m", "ttH_classifier", "model-2.1", "A9", "x" * 100])
def test_good_model_names(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../x", "a/b", ".hidden", "a..b", "-x", "_x", "a b", "x" * 101, "é", "a\\b"]
)
def test_bad_model_names(name: str) -> None:
    with pytest.raises(InvalidName, match="invalid model name"):
        validate_model_name(name)


def test_tag_names() -> None:
    assert validate_tag("prod") == "prod"
    assert validate_tag("canary_2-b") == "canary_2-b"
    for bad in ["", "Prod", "2x", "latest", "a/b", "x" * 64]:
        with pytest.raises(InvalidName, match="invalid tag"):
            validate_tag(bad)


# -- publish, resolve, tags, history -------------------------------------------------


def test_publish_numbers_versions_and_keeps_files(repo: ModelRepository, tmp_path: Path) -> None:
    staged = stage(tmp_path / "staged", "one", **{"sub/features.json": "{}"})
    first = repo.publish("m", staged, metadata={"labels": ["b", "s"]}, actor="alice")
    second = repo.publish("m", stage(tmp_path / "s2", "two"), source="package")
    third = repo.publish("m", stage(tmp_path / "s3", "three"))
    assert [first.version, second.version, third.version] == [1, 2, 3]
    assert [mv.version for mv in repo.versions("m")] == [1, 2, 3]
    assert repo.models() == ["m"]
    assert Path(first.path) == Path(repo.root, "m", "1")
    assert (Path(first.path) / "sub" / "features.json").read_text() == "{}"
    assert first.checksum == directory_checksum(staged) == directory_checksum(first.path)
    assert first.size == len("one") + len("{}")
    assert (first.source, second.source) == ("upload", "package")
    assert repo.versions("m")[0].metadata == {"labels": ["b", "s"]}
    assert repo.versions("m")[1].metadata is None
    # Nothing but the versions is left in the model directory.
    assert sorted(p.name for p in Path(repo.root, "m").iterdir()) == ["1", "2", "3"]
    assert (staged / "model.onnx").exists()  # the staged files are copied, not moved


def test_checksum_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    a = stage(tmp_path / "a", "w", **{"x/y.txt": "1"})
    b = stage(tmp_path / "b", "w", **{"x/y.txt": "1"})
    assert directory_checksum(a) == directory_checksum(b)
    (b / "x" / "y.txt").write_text("2")
    assert directory_checksum(a) != directory_checksum(b)
    c = stage(tmp_path / "c", "w", **{"x/z.txt": "1"})  # same contents, another name
    assert directory_checksum(a) != directory_checksum(c)


def test_resolve(repo: ModelRepository, tmp_path: Path) -> None:
    for i in range(3):
        repo.publish("m", stage(tmp_path / f"s{i}", str(i)))
    repo.tag("m", 2, "prod")
    assert repo.resolve("m").version == 3
    assert repo.resolve("m", "latest").version == 3
    assert repo.resolve("m", 1).version == 1
    assert repo.resolve("m", "2").version == 2
    assert repo.resolve("m", "prod").version == 2
    assert repo.resolve("m", "prod").tags == ("prod",)


def test_unknown_model_version_and_tag_name_what_exists(
    repo: ModelRepository, tmp_path: Path
) -> None:
    with pytest.raises(ModelNotFound, match=r"no model named 'm'.*has no models"):
        repo.versions("m")
    repo.publish("m", stage(tmp_path / "a"))
    repo.publish("m", stage(tmp_path / "b", "b"))
    repo.tag("m", 1, "prod")
    with pytest.raises(ModelNotFound, match=r"no model named 'x'.* it has m"):
        repo.resolve("x")
    with pytest.raises(ModelNotFound, match="model 'm' has no version 7; it has versions 1, 2"):
        repo.resolve("m", 7)
    with pytest.raises(ModelNotFound, match=r"no version or tag 'staging'.*tags prod → 1"):
        repo.resolve("m", "staging")
    with pytest.raises(ModelNotFound, match="has no tag 'staging'"):
        repo.untag("m", "staging")
    with pytest.raises(ModelNotFound, match="has no version 9"):
        repo.tag("m", 9, "prod")
    with pytest.raises(InvalidName):
        repo.resolve("../etc")


def test_tags_move_and_history_records_everything(repo: ModelRepository, tmp_path: Path) -> None:
    repo.publish("m", stage(tmp_path / "a", "a"), actor="alice")
    repo.publish("m", stage(tmp_path / "b", "b"), actor="bob")
    repo.tag("m", 1, "prod", actor="alice")
    repo.tag("m", 2, "staging")
    assert repo.tags("m") == {"prod": 1, "staging": 2}
    repo.tag("m", 2, "prod", actor="bob")  # one version per tag: moves
    assert repo.tags("m") == {"prod": 2, "staging": 2}
    assert repo.resolve("m", 2).tags == ("prod", "staging")
    repo.tag("m", 2, "prod")  # already there: no-op, no history
    repo.untag("m", "staging", actor="carol")
    assert repo.tags("m") == {"prod": 2}
    repo.delete("m", 2, actor="dave")
    assert repo.tags("m") == {}

    history = repo.history("m")
    actions = [(h["action"], h["version"], h["actor"]) for h in reversed(history)]
    assert actions == [
        ("publish", 1, "alice"),
        ("publish", 2, "bob"),
        ("tag", 1, "alice"),
        ("tag", 2, None),
        ("tag", 2, "bob"),
        ("untag", 2, "carol"),
        ("delete", 2, "dave"),
    ]
    assert history[2]["details"] == {"tag": "prod", "previous": 1}
    assert history[0]["details"] == {"tags": ["prod"]}
    assert history[-1]["details"] == {"source": "upload", "size": 1}
    assert history[-1]["checksum"] == repo.resolve("m", 1).checksum
    assert [h["time"] for h in history] == sorted((h["time"] for h in history), reverse=True)
    assert len(repo.history(limit=3)) == 3
    assert repo.history("other") == []


def test_delete_one_version_then_the_model(repo: ModelRepository, tmp_path: Path) -> None:
    for i in range(3):
        repo.publish("m", stage(tmp_path / f"s{i}", str(i)))
    Path(repo.root, "m", "config.pbtxt").write_text('name: "m"')
    deleted = repo.delete("m", 2)
    assert [mv.version for mv in deleted] == [2]
    assert [mv.version for mv in repo.versions("m")] == [1, 3]
    with pytest.raises(ModelNotFound, match="has no version 2; it has versions 1, 3"):
        repo.delete("m", 2)
    assert [mv.version for mv in repo.delete("m")] == [1, 3]
    assert not Path(repo.root, "m").exists()
    assert repo.models() == []
    assert [p.name for p in Path(repo.root).iterdir()] == [".mlaas4hep"]  # no trash left


def test_deleting_the_last_version_removes_the_model_dir(
    repo: ModelRepository, tmp_path: Path
) -> None:
    repo.publish("m", stage(tmp_path / "s"))
    Path(repo.root, "m", "config.pbtxt").write_text('name: "m"')
    repo.delete("m", 1)
    assert not Path(repo.root, "m").exists()
    with pytest.raises(ModelNotFound):
        repo.versions("m")


# -- storage as the truth: scan, fingerprint ----------------------------------------------


def test_scan_indexes_a_triton_repository_and_forgets_removed_versions(
    repo: ModelRepository, tmp_path: Path
) -> None:
    root = Path(repo.root)
    repo.publish("ours", stage(tmp_path / "s"))
    (root / "triton" / "1").mkdir(parents=True)
    (root / "triton" / "1" / "model.onnx").write_bytes(b"onnx")
    (root / "triton" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"')
    (root / "triton" / "labels").mkdir()  # not a version
    (root / "no_versions").mkdir()
    (root / ".hidden" / "1").mkdir(parents=True)
    (root / "bad..name" / "1").mkdir(parents=True)
    assert repo.models() == ["ours", "triton"]
    repo.scan()
    (found,) = repo.versions("triton")
    assert (found.version, found.source, found.size) == (1, "disk", 4)
    assert found.checksum == directory_checksum(root / "triton" / "1")
    assert repo.history("triton")[0]["details"] == {"source": "disk", "size": 4}
    assert (root / "triton" / "config.pbtxt").exists()  # left alone

    repo.tag("ours", 1, "prod")
    (root / "ours" / "1" / "model.onnx").unlink()
    (root / "ours" / "1").rmdir()
    repo.scan()
    assert repo.models() == ["triton"]
    assert repo.history("ours")[0]["action"] == "delete"
    assert repo.history("ours")[0]["details"] == {
        "reason": "missing from storage",
        "tags": ["prod"],
    }
    with sqlite3.connect(repo.index_path) as conn:
        assert conn.execute("SELECT count(*) FROM tags").fetchone()[0] == 0
        assert conn.execute("SELECT model FROM versions").fetchall() == [("triton",)]


def test_publish_after_a_version_was_removed_by_hand(repo: ModelRepository, tmp_path: Path) -> None:
    repo.publish("m", stage(tmp_path / "a", "a"))
    repo.tag("m", 1, "prod")
    for p in Path(repo.root, "m", "1").iterdir():
        p.unlink()
    Path(repo.root, "m", "1").rmdir()
    fresh = repo.publish("m", stage(tmp_path / "b", "b"))  # the index still had a row for 1
    assert fresh.version == 1
    assert repo.resolve("m", 1).checksum == fresh.checksum
    assert repo.tags("m") == {}  # the stale tag did not follow the number


def test_fingerprint_follows_changes(repo: ModelRepository, tmp_path: Path) -> None:
    empty = repo.fingerprint()
    assert repo.fingerprint() == empty
    repo.publish("m", stage(tmp_path / "a"))
    one = repo.fingerprint()
    assert one != empty
    assert repo.fingerprint() == one
    repo.versions("m")
    repo.scan()
    assert repo.fingerprint() == one  # reading changes nothing
    repo.publish("m", stage(tmp_path / "b", "b"))
    two = repo.fingerprint()
    assert two != one
    repo.tag("m", 1, "prod")
    tagged = repo.fingerprint()
    assert tagged != two
    (Path(repo.root) / "m" / ".tmp-inprogress").mkdir()  # publications in progress do not count
    assert repo.fingerprint() == tagged
    Path(repo.root, "m", "config.pbtxt").write_text("x")
    configured = repo.fingerprint()
    assert configured != tagged
    repo.delete("m", 2)
    assert repo.fingerprint() not in {configured, two, tagged}


# -- failures leave the repository unchanged --------------------------------------------


def test_failed_publish_leaves_the_repository_as_it_was(
    repo: ModelRepository, tmp_path: Path
) -> None:
    repo.publish("m", stage(tmp_path / "good"))
    before = tree(Path(repo.root))
    history = repo.history()

    linked = stage(tmp_path / "linked")
    (linked / "link").symlink_to(linked / "model.onnx")
    with pytest.raises(BadRequest, match="link is a symbolic link"):
        repo.publish("m", linked)
    with pytest.raises(BadRequest, match="link is a symbolic link"):
        repo.publish("new", linked)
    with pytest.raises(BadRequest, match="not a directory"):
        repo.publish("m", tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(BadRequest, match="holds no files"):
        repo.publish("m", tmp_path / "empty")
    fifo = stage(tmp_path / "fifo")
    os.mkfifo(fifo / "pipe")
    with pytest.raises(BadRequest, match="pipe is not a regular file"):
        repo.publish("new", fifo)
    with pytest.raises(BadRequest, match="not JSON-serialisable"):
        repo.publish("new", stage(tmp_path / "ok"), metadata={"x": object()})
    with pytest.raises(InvalidName):
        repo.publish("../m", stage(tmp_path / "ok"))

    assert tree(Path(repo.root)) == before
    assert repo.history() == history
    assert [mv.version for mv in repo.versions("m")] == [1]


def test_publish_that_fails_after_copying_leaves_nothing(
    repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.publish("m", stage(tmp_path / "good"))
    before = tree(Path(repo.root))
    monkeypatch.setattr(repository_module, "_BUSY_TIMEOUT_S", 0.05)
    holder = sqlite3.connect(repo.index_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the index past the timeout
    try:
        with pytest.raises(Unavailable, match="busy"):
            repo.publish("m", stage(tmp_path / "big", "x" * 100_000))
        with pytest.raises(Unavailable):
            repo.publish("fresh", stage(tmp_path / "big"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert tree(Path(repo.root)) == before
    assert repo.publish("m", stage(tmp_path / "big")).version == 2


# -- concurrency ------------------------------------------------------------------


def _publish_many(root: str, name: str, worker: str, count: int) -> list[int]:
    """Publish ``count`` distinct versions of ``name`` (run in threads and processes)."""
    repo = ModelRepository(root)
    numbers = []
    for i in range(count):
        staged = stage(Path(root).parent / "staged" / f"{worker}-{i}", f"{worker}-{i}")
        numbers.append(repo.publish(name, staged, actor=worker).version)
    return numbers


def _check_consistent(repo: ModelRepository, name: str, expected: set[str]) -> None:
    versions = repo.versions(name)
    assert [mv.version for mv in versions] == list(range(1, len(expected) + 1))
    contents = set()
    for mv in versions:
        assert mv.source == "upload"
        assert directory_checksum(mv.path) == mv.checksum  # complete, as indexed
        contents.add((Path(mv.path) / "model.onnx").read_text())
    assert contents == expected
    published = [h for h in repo.history(name, limit=1000) if h["action"] == "publish"]
    assert sorted(h["version"] for h in published) == [mv.version for mv in versions]
    assert not [p for p in Path(repo.root, name).iterdir() if p.name.startswith(".")]


def test_concurrent_publish_from_threads(repo: ModelRepository) -> None:
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_publish_many, repo.root, "shared", f"t{i}", 3) for i in range(8)]
        numbers = [n for f in futures for n in f.result()]
    assert sorted(numbers) == list(range(1, 25))
    _check_consistent(repo, "shared", {f"t{i}-{j}" for i in range(8) for j in range(3)})


def test_concurrent_publish_from_processes_and_threads(repo: ModelRepository) -> None:
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(4, mp_context=context) as processes,
        ThreadPoolExecutor(2) as threads,
    ):
        futures = [
            processes.submit(_publish_many, repo.root, "shared", f"p{i}", 6) for i in range(4)
        ]
        futures += [
            threads.submit(_publish_many, repo.root, "shared", f"t{i}", 6) for i in range(2)
        ]
        numbers = [n for f in futures for n in f.result()]
    assert sorted(numbers) == list(range(1, 37))
    workers = [f"p{i}" for i in range(4)] + [f"t{i}" for i in range(2)]
    _check_consistent(repo, "shared", {f"{w}-{j}" for w in workers for j in range(6)})
    actors = {h["actor"] for h in repo.history("shared", limit=1000)}
    assert actors == set(workers)


# -- remote (fsspec) roots ------------------------------------------------------------


def test_remote_repository(memory_root: str, tmp_path: Path) -> None:
    repo = ModelRepository(memory_root, index=tmp_path / "index.sqlite", cache_dir=tmp_path / "c")
    assert not repo.is_local
    assert repo.models() == []
    empty = repo.fingerprint()
    first = repo.publish("m", stage(tmp_path / "a", "a", **{"sub/f.json": "{}"}))
    second = repo.publish("m", stage(tmp_path / "b", "b"))
    assert (first.version, second.version) == (1, 2)
    assert first.path == repo.root + "/m/1"
    assert first.path.startswith("memory://")
    assert first.checksum == directory_checksum(tmp_path / "a")
    fs, base = fsspec.core.url_to_fs(memory_root)
    assert sorted(fs.ls(base + "/m", detail=False)) == [
        base + "/m/1",
        base + "/m/2",
    ]  # no .tmp left
    assert fs.cat(base + "/m/1/sub/f.json") == b"{}"
    assert repo.fingerprint() != empty
    repo.tag("m", 2, "prod")
    assert repo.resolve("m", "prod").version == 2

    fs.pipe(base + "/byhand/3/model.onnx", b"onnx")  # a version copied in by hand
    repo.scan()
    assert repo.models() == ["byhand", "m"]
    assert repo.resolve("byhand").source == "disk"
    assert repo.resolve("byhand").version == 3

    fingerprint = repo.fingerprint()
    assert repo.fingerprint() == fingerprint
    assert [mv.version for mv in repo.delete("m", 1)] == [1]
    assert repo.fingerprint() != fingerprint
    repo.delete("m")
    assert repo.models() == ["byhand"]
    assert not fs.exists(base + "/m")


def test_remote_local_dir_downloads_once(memory_root: str, tmp_path: Path) -> None:
    repo = ModelRepository(memory_root, index=tmp_path / "index.sqlite", cache_dir=tmp_path / "c")
    mv = repo.publish("m", stage(tmp_path / "a", "a", **{"sub/f.json": "{}"}))
    local = repo.local_dir(mv)
    assert local == tmp_path / "c" / mv.checksum
    assert directory_checksum(local) == mv.checksum
    assert (local / "sub" / "f.json").read_text() == "{}"
    assert [p.name for p in (tmp_path / "c").iterdir()] == [mv.checksum]  # no temporary left

    fs, base = fsspec.core.url_to_fs(memory_root)
    fs.rm(base + "/m/1", recursive=True)  # the cached copy is reused: storage is not read
    again = ModelRepository(memory_root, index=tmp_path / "index.sqlite", cache_dir=tmp_path / "c")
    assert again.local_dir(mv) == local
    assert (local / "model.onnx").read_text() == "a"


def test_remote_files_changed_behind_the_index(memory_root: str, tmp_path: Path) -> None:
    repo = ModelRepository(memory_root, index=tmp_path / "index.sqlite", cache_dir=tmp_path / "c")
    mv = repo.publish("m", stage(tmp_path / "a", "a"))
    fs, base = fsspec.core.url_to_fs(memory_root)
    fs.pipe(base + "/m/1/model.onnx", b"tampered")
    with pytest.raises(ModelLoadError, match="changed on storage"):
        repo.local_dir(mv)
    assert list((tmp_path / "c").iterdir()) == []


def test_remote_failed_publish_leaves_nothing(memory_root: str, tmp_path: Path) -> None:
    repo = ModelRepository(memory_root, index=tmp_path / "index.sqlite")
    linked = stage(tmp_path / "linked")
    (linked / "link").symlink_to(linked / "model.onnx")
    with pytest.raises(BadRequest, match="symbolic link"):
        repo.publish("m", linked)
    fs, base = fsspec.core.url_to_fs(memory_root)
    assert not fs.exists(base + "/m")
    assert repo.history() == []


def test_default_index_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    local = ModelRepository(tmp_path / "new" / "repo")  # created when missing
    assert local.index_path == tmp_path / "new" / "repo" / ".mlaas4hep" / "index.sqlite"
    assert local.is_local
    with sqlite3.connect(local.index_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    remote = ModelRepository(f"memory://idx-{uuid.uuid4().hex}")
    assert remote.index_path.parent == tmp_path / "xdg" / "mlaas4hep"
    assert remote.index_path.name.startswith("index-")
    assert remote.cache_dir == tmp_path / "xdg" / "mlaas4hep" / "models"
    file_url = ModelRepository(f"file://{tmp_path / 'new' / 'repo'}")
    assert file_url.is_local
    assert file_url.root == local.root


# -- version policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, VersionPolicy("latest", 1)),
        ("latest", VersionPolicy("latest", 1)),
        ("latest:2", VersionPolicy("latest", 2)),
        (" LATEST : 3 ", VersionPolicy("latest", 3)),
        ("all", VersionPolicy("all")),
        ("specific:1,3", VersionPolicy("specific", versions=(1, 3))),
        ({"latest": {"num_versions": 2}}, VersionPolicy("latest", 2)),
        ({"latest": {}}, VersionPolicy("latest", 1)),
        ({"all": {}}, VersionPolicy("all")),
        ({"specific": {"versions": [1, 3]}}, VersionPolicy("specific", versions=(1, 3))),
        ({"specific": {"versions": ["1", "3"]}}, VersionPolicy("specific", versions=(1, 3))),
    ],
)
def test_version_policy_parse(value: object, expected: VersionPolicy) -> None:
    assert VersionPolicy.parse(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "newest",
        "latest:0",
        "latest:x",
        "all:2",
        "specific:",
        "specific:0",
        "specific:1,a",
        {"latest": {"num_versions": 0}},
        {"latest": {"count": 2}},
        {"all": {}, "latest": {}},
        {"specific": {}},
        {"specific": {"versions": [True]}},
        {"sometimes": {}},
        3,
    ],
)
def test_version_policy_errors_name_the_value(value: object) -> None:
    with pytest.raises(ConfigError, match="invalid version policy") as error:
        VersionPolicy.parse(value)  # type: ignore[arg-type]
    assert repr(value) in str(error.value)


def test_version_policy_select() -> None:
    versions = [3, 1, 7, 5]
    assert VersionPolicy.parse("latest").select(versions) == [7]
    assert VersionPolicy.parse("latest:2").select(versions) == [5, 7]
    assert VersionPolicy.parse("latest:10").select(versions) == [1, 3, 5, 7]
    assert VersionPolicy.parse("all").select(versions) == [1, 3, 5, 7]
    assert VersionPolicy.parse("specific:3,4,7").select(versions) == [3, 7]
    assert VersionPolicy.parse("all").select([]) == []
    assert str(VersionPolicy.parse("specific:1,3")) == "specific:1,3"
    with pytest.raises(ConfigError):
        VersionPolicy("latest", 0)
