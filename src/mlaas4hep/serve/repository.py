"""The model repository: versioned models on a local disk or any fsspec URL.

The layout is Triton's, so existing Triton repositories are read as they are::

    <root>/<model>/config.pbtxt          optional, left alone
    <root>/<model>/<version>/<files>     versions are integers ≥ 1

Names starting with ``.`` are never models or versions; they hold the index
(``<root>/.mlaas4hep/``), publications in progress (``<model>/.tmp-*``) and
deletions in progress (``<root>/.trash-*``).

The storage is the truth for which versions exist. An SQLite index (WAL mode,
one connection per call, so any number of threads and processes may share it)
adds what the files cannot say: checksum, creation time, source, size and
metadata of each version, tags (``prod``, ``staging``, ...; one version per tag
and model) and an append-only history. Versions copied in by hand are indexed
with source ``"disk"`` the first time they are seen.

Publishing is atomic on a local file system: files are copied and fsynced into
a hidden directory next to the versions, then renamed to the new version number
while the index's write lock is held, so concurrent publishers (threads or
processes) always get distinct numbers. Object stores have no atomic rename:
there the files are moved one by one, and the version is indexed only once all
of them are in place; a reader listing the storage meanwhile may see a version
directory that is still filling.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve.errors import (
    BadRequest,
    InvalidName,
    ModelLoadError,
    ModelNotFound,
    Unavailable,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_TAG = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")  # fits SQLite's 64-bit integers
RESERVED_TAGS = frozenset({"latest"})
"""Tag names that cannot be set: ``latest`` always means the highest version."""

_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS versions (
        model TEXT NOT NULL, version INTEGER NOT NULL, checksum TEXT NOT NULL,
        created REAL NOT NULL, source TEXT NOT NULL, size INTEGER NOT NULL, metadata TEXT,
        PRIMARY KEY (model, version))""",
    """CREATE TABLE IF NOT EXISTS tags (
        model TEXT NOT NULL, tag TEXT NOT NULL, version INTEGER NOT NULL,
        PRIMARY KEY (model, tag))""",
    """CREATE TABLE IF NOT EXISTS history (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, action TEXT NOT NULL,
        model TEXT NOT NULL, version INTEGER, checksum TEXT, actor TEXT, details TEXT)""",
    "CREATE INDEX IF NOT EXISTS history_model ON history (model, id)",
)
_BUSY_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_STALE_TMP_S = 24 * 3600.0
_RENAME_TAKEN = (errno.EEXIST, errno.ENOTEMPTY)


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`InvalidName`.

    Valid: 1 to 100 characters among letters, digits, ``_``, ``.`` and ``-``,
    starting with a letter or digit, and no ``..``.
    """
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"invalid model name {name!r}: use 1 to 100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag name, else raise :class:`InvalidName`.

    Valid: a lower-case letter followed by up to 62 lower-case letters, digits,
    ``_`` or ``-``; not one of :data:`RESERVED_TAGS`.
    """
    if not _TAG.fullmatch(tag) or tag in RESERVED_TAGS:
        raise InvalidName(
            f"invalid tag {tag!r}: use a lower-case letter followed by lower-case letters, "
            "digits, '_' or '-' (at most 63 characters); 'latest' is reserved"
        )
    return tag


def directory_checksum(path: str | os.PathLike[str]) -> str:
    """The checksum the repository gives a version with the files under ``path``.

    SHA-256 over the sorted relative paths (``/``-separated) and the SHA-256
    of each file's contents; directories themselves do not count.
    """
    files = _local_files(Path(path))
    return _checksum((rel, functools.partial(_open, p)) for rel, p in files)[0]


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model, as stored and indexed."""

    model: str
    version: int
    path: str
    """The version directory: a local path, or a URL for a remote repository."""
    checksum: str
    created: float
    """Unix time of publication (for versions found on disk: the directory's mtime)."""
    source: str
    """How it came: ``"upload"``, ``"package"``, ``"disk"`` (found on storage), ..."""
    size: int
    """Total bytes of its files."""
    tags: tuple[str, ...]
    metadata: Mapping[str, Any] | None = field(default=None, compare=False)
    """The metadata given to :meth:`ModelRepository.publish` (TFaaS ``params``), if any."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are available to serve (Triton's ``version_policy``)."""

    kind: Literal["latest", "all", "specific"]
    count: int = 1
    """For ``latest``: how many of the highest versions."""
    versions: tuple[int, ...] = ()
    """For ``specific``: the version numbers."""

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ConfigError(f"version policy kind must be latest, all or specific: {self.kind!r}")
        if self.kind == "latest" and self.count < 1:
            raise ConfigError(f"version policy latest:{self.count}: the count must be ≥ 1")
        if self.kind == "specific" and (not self.versions or min(self.versions) < 1):
            raise ConfigError(
                f"version policy specific:{self.versions}: give one or more versions ≥ 1"
            )

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | None) -> VersionPolicy:
        """Read ``"latest"``, ``"latest:2"``, ``"all"``, ``"specific:1,3"``, Triton's
        ``{"latest": {"num_versions": 2}}``, ``{"all": {}}`` or
        ``{"specific": {"versions": [1, 3]}}``; None means ``latest:1``.

        Anything else raises :class:`ConfigError` naming the value.
        """
        if value is None:
            return cls("latest")
        with contextlib.suppress(TypeError, ValueError):
            if isinstance(value, str):
                return cls._parse_text(value)
            if len(value) == 1:  # a TypeError for anything else (from YAML, say)
                return cls._parse_mapping(value)
        raise ConfigError(
            f"invalid version policy {value!r}: expected 'latest', 'latest:N', 'all', "
            "'specific:V1,V2,...' or Triton's {'latest': {'num_versions': N}}, {'all': {}}, "
            "{'specific': {'versions': [V1, ...]}}"
        )

    @classmethod
    def _parse_text(cls, value: str) -> VersionPolicy:
        kind, _, rest = (part.strip() for part in value.lower().partition(":"))
        if kind == "latest":
            return cls("latest", count=_positive(rest) if rest else 1)
        if kind == "all" and not rest:
            return cls("all")
        if kind == "specific":
            return cls("specific", versions=tuple(_positive(v) for v in rest.split(",")))
        raise ValueError(value)

    @classmethod
    def _parse_mapping(cls, value: Mapping[str, Any]) -> VersionPolicy:
        ((kind, options),) = value.items()
        options = options or {}
        if not isinstance(options, Mapping):
            raise TypeError(options)
        if kind == "latest" and set(options) <= {"num_versions"}:
            return cls("latest", count=_positive(options.get("num_versions", 1)))
        if kind == "all" and not options:
            return cls("all")
        if kind == "specific" and set(options) == {"versions"}:
            return cls("specific", versions=tuple(_positive(v) for v in options["versions"]))
        raise ValueError(value)

    def select(self, versions: Sequence[int]) -> list[int]:
        """The allowed ones of ``versions``, ascending."""
        ordered = sorted(set(versions))
        if self.kind == "latest":
            return ordered[-self.count :]
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


def _positive(value: object) -> int:
    """A positive integer from an int or a digit string (Triton's JSON writes int64 as text)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(value)
    number = int(str(value).strip())
    if number < 1:
        raise ValueError(value)
    return number


class ModelRepository:
    """Versioned models under ``root``: a local path or an fsspec URL (``s3://...``).

    ``index`` is the SQLite file; by default ``<root>/.mlaas4hep/index.sqlite``
    for a writable local root, else ``~/.cache/mlaas4hep/index-<hash>.sqlite``.
    ``cache_dir`` holds local copies of remote versions (by checksum; default
    ``~/.cache/mlaas4hep/models``). ``storage_options`` go to fsspec.

    Every method may be called from several threads and processes at once.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        index: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        fs, base = fsspec.core.url_to_fs(os.fspath(root), **(storage_options or {}))
        self._fs = fs
        self.is_local: bool = isinstance(fs, LocalFileSystem)
        if self.is_local:
            self._base = str(Path(base).resolve())
            Path(self._base).mkdir(parents=True, exist_ok=True)
            self.root: str = self._base
        else:
            self._base = base.rstrip("/")
            self.root = fs.unstrip_protocol(self._base)
        cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mlaas4hep"
        if index is not None:
            self.index_path = Path(index)
        elif self.is_local and os.access(self._base, os.W_OK):
            self.index_path = Path(self._base, ".mlaas4hep", "index.sqlite")
        else:
            key = hashlib.sha256(self.root.encode()).hexdigest()[:16]
            self.index_path = cache / f"index-{key}.sqlite"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache / "models"
        self._init_index()

    def __repr__(self) -> str:
        return f"ModelRepository({self.root!r})"

    # -- reading -----------------------------------------------------------

    def models(self) -> list[str]:
        """Names of the models with at least one version directory, sorted."""
        return [name for name in self._model_dirs() if self._storage_versions(name)]

    def versions(self, model: str) -> list[ModelVersion]:
        """Every version of ``model``, ascending; :class:`ModelNotFound` if it has none."""
        name = validate_model_name(model)
        found = self._reconcile(name)
        if not found:
            raise ModelNotFound(self._no_model(name))
        return found

    def resolve(self, model: str, ref: int | str | None = None) -> ModelVersion:
        """One version of ``model``: ``None`` or ``"latest"`` for the highest, a
        number (int or digit string) for that version, else a tag name."""
        versions = self.versions(model)
        if ref is None or ref == "latest":
            return versions[-1]
        number = _version_number(ref)
        if number is not None:
            for mv in versions:
                if mv.version == number:
                    return mv
            raise ModelNotFound(
                f"model {model!r} has no version {number}; it has {_numbers(versions)}"
            )
        for mv in versions:
            if ref in mv.tags:
                return mv
        raise ModelNotFound(
            f"model {model!r} has no version or tag {ref!r}; "
            f"it has {_numbers(versions)} and {_tag_list(versions)}"
        )

    def tags(self, model: str) -> dict[str, int]:
        """The tags of ``model`` and the version each points to."""
        return {tag: mv.version for mv in self.versions(model) for tag in mv.tags}

    def history(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The latest ``limit`` publish/delete/tag/untag records (of ``model``), newest first.

        Each is a dict with ``time``, ``action``, ``model``, ``version``,
        ``checksum``, ``actor`` and ``details`` (a dict).
        """
        query = "SELECT time, action, model, version, checksum, actor, details FROM history"
        args: tuple[Any, ...] = ()
        if model is not None:
            query += " WHERE model = ?"
            args = (validate_model_name(model),)
        with self._reading() as conn:
            rows = conn.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [dict(row) | {"details": json.loads(row["details"] or "{}")} for row in rows]

    def read_model_file(self, model: str, name: str) -> str | None:
        """The text of ``<root>/<model>/<name>`` (e.g. Triton's ``config.pbtxt``), if it exists."""
        model = validate_model_name(model)
        path = self._join(model, name)
        try:
            with self._fs.open(path, "rb") as handle:
                data: bytes = handle.read()
        except FileNotFoundError:
            return None
        return data.decode("utf-8", "replace")

    def local_dir(self, mv: ModelVersion) -> Path:
        """A local directory with the files of ``mv``.

        For a local repository the version directory itself; for a remote one a
        copy in ``cache_dir/<checksum>/``, downloaded once (into a temporary
        directory renamed into place, so concurrent callers never see half a
        copy) and verified against the checksum.
        """
        if self.is_local:
            return Path(mv.path)
        target = self.cache_dir / mv.checksum
        if target.is_dir():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.cache_dir))
        try:
            files = self._remote_files(self._version_path(mv.model, mv.version))
            checksum, _ = _checksum(
                ((rel, functools.partial(self._fs.open, full, "rb")) for rel, full in files),
                sink=functools.partial(_local_writer, tmp),
            )
            if checksum != mv.checksum:
                raise ModelLoadError(
                    f"the files of model {mv.model!r} version {mv.version} changed on storage "
                    "after they were indexed; publish them as a new version"
                )
            _fsync_tree(tmp)
            try:
                tmp.rename(target)
            except OSError as error:
                if error.errno not in _RENAME_TAKEN:  # else: another process was faster
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def fingerprint(self) -> str:
        """A digest that changes when models, versions, their files or tags change.

        Made from names, sizes and modification times (one listing for a
        remote root), never from file contents: cheap enough to poll.
        """
        digest = hashlib.sha256()
        entries = self._local_listing() if self.is_local else self._remote_listing()
        for entry in entries:
            digest.update(entry.encode() + b"\n")
        with self._reading() as conn:
            for row in conn.execute("SELECT model, tag, version FROM tags ORDER BY model, tag"):
                digest.update(f"tag {row[0]} {row[1]} {row[2]}\n".encode())
        return digest.hexdigest()

    def scan(self) -> None:
        """Reconcile the index with the storage.

        Versions found on storage but not indexed are indexed (source
        ``"disk"``, checksum computed); index rows whose directory vanished are
        forgotten (with their tags). On a local root, leftovers of interrupted
        deletions and publications older than a day are removed.
        """
        with self._reading() as conn:
            indexed = {row[0] for row in conn.execute("SELECT DISTINCT model FROM versions")}
        for name in sorted(set(self._model_dirs()) | indexed):
            self._reconcile(name)
        if self.is_local:
            self._sweep()

    # -- writing -----------------------------------------------------------

    def publish(
        self,
        model: str,
        staged: str | os.PathLike[str],
        *,
        source: str = "upload",
        metadata: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> ModelVersion:
        """Copy the files under ``staged`` into a new version of ``model``.

        The new version number is the highest existing one plus one, distinct
        for every concurrent caller. ``staged`` must hold at least one regular
        file and no links or special files (:class:`BadRequest` otherwise).
        Nothing is left behind by a publication that fails.
        """
        name = validate_model_name(model)
        files = _staged_files(Path(staged))
        try:
            meta_json = json.dumps(dict(metadata), sort_keys=True) if metadata else None
        except (TypeError, ValueError) as error:
            raise BadRequest(
                f"the metadata of {name!r} is not JSON-serialisable: {error}"
            ) from None
        record = {"source": source, "metadata": meta_json, "actor": actor}
        if self.is_local:
            return self._publish_local(name, files, record)
        return self._publish_remote(name, files, record)

    def delete(
        self, model: str, version: int | None = None, *, actor: str | None = None
    ) -> list[ModelVersion]:
        """Delete one version of ``model``, or all of them; return what was deleted.

        When no version is left the model directory goes too (its
        ``config.pbtxt`` included).
        """
        name = validate_model_name(model)
        current = self.versions(name)
        if version is None:
            targets = current
        else:
            targets = [mv for mv in current if mv.version == _version_number(version)]
            if not targets:
                raise ModelNotFound(
                    f"model {name!r} has no version {version}; it has {_numbers(current)}"
                )
        trash: list[Path] = []
        deleted = []
        with self._writing() as conn:
            for mv in targets:
                if self._remove(self._version_path(name, mv.version), trash):
                    tags = _drop_version(conn, name, mv.version)
                    _record(conn, "delete", name, mv.version, mv.checksum, actor, {"tags": tags})
                    deleted.append(mv)
            if not self._storage_versions(name):
                model_dir = self._join(name)
                for entry in self._list_dir(model_dir):
                    if not entry.startswith(".tmp-"):
                        self._remove(self._join(name, entry), trash)
        for path in trash:
            _discard(path)
        if not self._storage_versions(name):
            self._remove_empty_dir(self._join(name))
        return deleted

    def tag(self, model: str, version: int, tag: str, *, actor: str | None = None) -> None:
        """Point ``tag`` of ``model`` at ``version`` (moving it from another version)."""
        tag = validate_tag(tag)
        number = _version_number(version)
        if number is None:
            raise InvalidName(f"invalid version {version!r}: tags point at version numbers")
        mv = self.resolve(model, number)
        with self._writing() as conn:
            if not conn.execute(
                "SELECT 1 FROM versions WHERE model = ? AND version = ?", (mv.model, mv.version)
            ).fetchone():
                raise ModelNotFound(f"model {mv.model!r} version {mv.version} was just deleted")
            row = conn.execute(
                "SELECT version FROM tags WHERE model = ? AND tag = ?", (mv.model, tag)
            ).fetchone()
            previous = None if row is None else row[0]
            if previous == mv.version:
                return
            conn.execute(
                "INSERT INTO tags (model, tag, version) VALUES (?, ?, ?) "
                "ON CONFLICT (model, tag) DO UPDATE SET version = excluded.version",
                (mv.model, tag, mv.version),
            )
            _record(
                conn, "tag", mv.model, mv.version, mv.checksum, actor,
                {"tag": tag, "previous": previous},
            )  # fmt: skip

    def untag(self, model: str, tag: str, *, actor: str | None = None) -> None:
        """Remove ``tag`` from ``model``; :class:`ModelNotFound` if it is not set."""
        tag = validate_tag(tag)
        versions = self.versions(model)
        with self._writing() as conn:
            row = conn.execute(
                "DELETE FROM tags WHERE model = ? AND tag = ? RETURNING version", (model, tag)
            ).fetchone()
            if row is None:
                raise ModelNotFound(f"model {model!r} has no tag {tag!r}; {_tag_list(versions)}")
            checksum = next((mv.checksum for mv in versions if mv.version == row[0]), None)
            _record(conn, "untag", model, row[0], checksum, actor, {"tag": tag})

    # -- publication -------------------------------------------------------

    def _publish_local(
        self, name: str, files: list[tuple[str, Path]], record: dict[str, Any]
    ) -> ModelVersion:
        model_dir = Path(self._base, name)
        tmp, created_model_dir = _make_tmp(model_dir)
        try:
            checksum, size = _checksum(
                ((rel, functools.partial(_open, p)) for rel, p in files),
                sink=functools.partial(_local_writer, tmp),
            )
            _fsync_tree(tmp)
            with self._writing() as conn:
                number = max(self._storage_versions(name), default=0) + 1
                while True:
                    target = model_dir / str(number)
                    try:
                        tmp.rename(target)  # atomic; fails if another process took the number
                        break
                    except OSError as error:
                        if error.errno not in _RENAME_TAKEN:
                            raise
                        number += 1
                try:
                    _fsync_dir(model_dir)
                    mv = self._insert(conn, name, number, checksum, size, record)
                except BaseException:
                    shutil.rmtree(target, ignore_errors=True)
                    raise
            return mv
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if created_model_dir:
                with contextlib.suppress(OSError):
                    model_dir.rmdir()
            raise

    def _publish_remote(
        self, name: str, files: list[tuple[str, Path]], record: dict[str, Any]
    ) -> ModelVersion:
        model_dir = self._join(name)
        existed = self._fs.exists(model_dir)
        tmp = self._join(name, f".tmp-{uuid.uuid4().hex}")
        try:
            try:
                checksum, size = _checksum(
                    ((rel, functools.partial(_open, p)) for rel, p in files),
                    sink=functools.partial(self._remote_writer, tmp),
                )
                # The lock makes the number distinct among the processes sharing this
                # index; the move is file by file (object stores cannot rename).
                with self._writing() as conn:
                    number = max(self._storage_versions(name), default=0) + 1
                    target = self._join(name, str(number))
                    try:
                        for rel, _ in files:
                            self._fs.mv(f"{tmp}/{rel}", f"{target}/{rel}")
                        return self._insert(conn, name, number, checksum, size, record)
                    except BaseException:
                        with contextlib.suppress(FileNotFoundError):
                            self._fs.rm(target, recursive=True)
                        raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    self._fs.rm(tmp, recursive=True)
        except BaseException:
            if not existed:
                self._remove_empty_dir(model_dir)
            raise

    @contextlib.contextmanager
    def _remote_writer(self, base: str, rel: str) -> Iterator[IO[bytes]]:
        path = f"{base}/{rel}"
        self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self._fs.open(path, "wb") as out:
            yield out

    def _insert(
        self,
        conn: sqlite3.Connection,
        name: str,
        number: int,
        checksum: str,
        size: int,
        record: dict[str, Any],
    ) -> ModelVersion:
        """Index a version just published (in the write transaction that placed it)."""
        stale = conn.execute(
            "SELECT checksum FROM versions WHERE model = ? AND version = ?", (name, number)
        ).fetchone()
        if stale is not None:  # a directory removed by hand, not yet forgotten
            tags = _drop_version(conn, name, number)
            gone: dict[str, Any] = {"reason": "missing from storage", "tags": tags}
            _record(conn, "delete", name, number, stale[0], None, gone)
        created = time.time()
        conn.execute(
            "INSERT INTO versions (model, version, checksum, created, source, size, metadata) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (name, number, checksum, created, record["source"], size, record["metadata"]),
        )
        details = {"source": record["source"], "size": size}
        _record(conn, "publish", name, number, checksum, record["actor"], details)
        metadata = json.loads(record["metadata"]) if record["metadata"] else None
        path = self._version_path(name, number)
        return ModelVersion(
            name, number, self._url(path), checksum, created, record["source"], size, (), metadata
        )

    # -- index ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.index_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; holding it serialises writers across processes."""
        with self._reading() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:  # still locked after the busy timeout
                raise Unavailable(f"the model repository index is busy ({error}); retry") from None
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _init_index(self) -> None:
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        with self._reading() as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
        with self._writing() as conn:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > _SCHEMA_VERSION:
                raise ConfigError(
                    f"the repository index {self.index_path} was written by a newer "
                    f"mlaas4hep (schema {found}; this one knows {_SCHEMA_VERSION})"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _reconcile(self, name: str) -> list[ModelVersion]:
        """The indexed versions of ``name`` present on storage, after indexing new
        directories and forgetting vanished ones."""
        on_storage = self._storage_versions(name)
        rows, tags = self._rows(name)
        missing = sorted(set(on_storage) - set(rows))
        vanished = sorted(set(rows) - set(on_storage))
        if missing or vanished:
            found = {}
            for number in missing:  # checksums outside the lock: they may take long
                with contextlib.suppress(FileNotFoundError):
                    found[number] = self._digest(on_storage[number])
            with self._writing() as conn:
                # Checked again under the lock: a concurrent publish or delete
                # may have placed or removed the directory meanwhile.
                for number, (checksum, size, created) in found.items():
                    if not self._is_dir(on_storage[number]):
                        continue
                    inserted = conn.execute(
                        "INSERT INTO versions (model, version, checksum, created, source, size) "
                        "VALUES (?, ?, ?, ?, 'disk', ?) ON CONFLICT DO NOTHING",
                        (name, number, checksum, created, size),
                    ).rowcount
                    if inserted:
                        log.info("indexed model %s version %s found on storage", name, number)
                        details = {"source": "disk", "size": size}
                        _record(conn, "publish", name, number, checksum, None, details)
                for number in vanished:
                    row = conn.execute(
                        "SELECT checksum FROM versions WHERE model = ? AND version = ?",
                        (name, number),
                    ).fetchone()
                    if row is None or self._is_dir(self._version_path(name, number)):
                        continue
                    log.info("model %s version %s vanished from storage", name, number)
                    details = {"reason": "missing from storage", "tags": tags.get(number, [])}
                    _drop_version(conn, name, number)
                    _record(conn, "delete", name, number, row[0], None, details)
            rows, tags = self._rows(name)
        return [
            self._model_version(name, number, rows[number], tags.get(number, []))
            for number in sorted(on_storage)
            if number in rows
        ]

    def _rows(self, name: str) -> tuple[dict[int, sqlite3.Row], dict[int, list[str]]]:
        with self._reading() as conn:
            rows = conn.execute("SELECT * FROM versions WHERE model = ?", (name,)).fetchall()
            tags = conn.execute(
                "SELECT tag, version FROM tags WHERE model = ? ORDER BY tag", (name,)
            ).fetchall()
        by_version: dict[int, list[str]] = {}
        for tag, number in tags:
            by_version.setdefault(number, []).append(tag)
        return {row["version"]: row for row in rows}, by_version

    def _model_version(
        self, name: str, number: int, row: sqlite3.Row, tags: list[str]
    ) -> ModelVersion:
        return ModelVersion(
            model=name,
            version=number,
            path=self._url(self._version_path(name, number)),
            checksum=row["checksum"],
            created=row["created"],
            source=row["source"],
            size=row["size"],
            tags=tuple(tags),
            metadata=json.loads(row["metadata"]) if row["metadata"] else None,
        )

    def _no_model(self, name: str) -> str:
        known = [n for n in self._model_dirs() if n != name]
        listed = ", ".join(known[:20]) + (f", ... ({len(known)} models)" if len(known) > 20 else "")
        return f"no model named {name!r}; " + (
            f"it has {listed}" if known else "the repository has no models"
        )

    # -- storage -------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        if self.is_local:
            return str(Path(self._base, *parts))
        return "/".join((self._base, *parts))

    def _version_path(self, name: str, number: int) -> str:
        return self._join(name, str(number))

    def _url(self, path: str) -> str:
        return path if self.is_local else str(self._fs.unstrip_protocol(path))

    def _list_dir(self, path: str) -> dict[str, bool]:
        """Entries of the directory ``path`` → whether each is a directory ({} if none)."""
        try:
            if self.is_local:
                with os.scandir(path) as entries:
                    return {e.name: e.is_dir() for e in entries}
            self._fs.invalidate_cache(path)  # other replicas change the storage
            listing = self._fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return {
            info["name"].rstrip("/").rsplit("/", 1)[-1]: info["type"] == "directory"
            for info in listing
            if info["name"].rstrip("/") != path
        }

    def _is_dir(self, path: str) -> bool:
        return Path(path).is_dir() if self.is_local else bool(self._fs.isdir(path))

    def _model_dirs(self) -> list[str]:
        return sorted(
            name
            for name, is_dir in self._list_dir(self._base).items()
            if is_dir and _NAME.fullmatch(name) and ".." not in name
        )

    def _storage_versions(self, name: str) -> dict[int, str]:
        return {
            int(entry): self._join(name, entry)
            for entry, is_dir in self._list_dir(self._join(name)).items()
            if is_dir and _VERSION.fullmatch(entry)
        }

    def _remote_files(self, path: str) -> list[tuple[str, str]]:
        """(relative path, full path) of every file under the remote directory ``path``."""
        self._fs.invalidate_cache(path)
        found = self._fs.find(path, detail=True)
        prefix = path.rstrip("/") + "/"
        return sorted(
            (full[len(prefix) :], full)
            for full, info in found.items()
            if info["type"] == "file" and full.startswith(prefix)
        )

    def _digest(self, path: str) -> tuple[str, int, float]:
        """(checksum, size, creation time) of the version directory ``path``."""
        if self.is_local:
            files = _local_files(Path(path))
            opened = ((rel, functools.partial(_open, p)) for rel, p in files)
            created = Path(path).stat().st_mtime
        else:
            remote = self._remote_files(path)
            opened = ((rel, functools.partial(self._fs.open, full, "rb")) for rel, full in remote)
            created = time.time()
        return (*_checksum(opened), created)

    def _remove(self, path: str, trash: list[Path]) -> bool:
        """Make ``path`` vanish (False if it already had). Local: an atomic rename
        into ``<root>/.trash-*`` (appended to ``trash`` to be deleted later)."""
        try:
            if not self.is_local:
                self._fs.rm(path, recursive=True)
                return True
            target = Path(self._base, f".trash-{uuid.uuid4().hex}")
            Path(path).rename(target)
        except FileNotFoundError:
            return False
        trash.append(target)
        return True

    def _remove_empty_dir(self, path: str) -> None:
        with contextlib.suppress(OSError, NotImplementedError):
            if self.is_local:
                Path(path).rmdir()
            elif not self._list_dir(path):
                self._fs.rmdir(path)

    def _sweep(self) -> None:
        """Remove leftovers of interrupted deletions and day-old interrupted publications."""
        now = time.time()
        for entry in os.scandir(self._base):
            if entry.name.startswith(".trash-"):
                _discard(Path(entry.path))
        for name in self._model_dirs():
            for child in self._list_dir(self._join(name)):
                path = Path(self._join(name, child))
                with contextlib.suppress(OSError):
                    if child.startswith(".tmp-") and now - path.stat().st_mtime > _STALE_TMP_S:
                        log.warning("removing an abandoned publication %s", path)
                        shutil.rmtree(path)

    def _local_listing(self) -> Iterator[str]:
        for name in self._model_dirs():
            for entry, is_dir in sorted(self._list_dir(self._join(name)).items()):
                path = Path(self._join(name, entry))
                try:
                    if is_dir and _VERSION.fullmatch(entry):
                        yield f"{name}/{entry}/"
                        for rel, file in _local_files(path):
                            st = file.stat()
                            yield f"{name}/{entry}/{rel} {st.st_size} {st.st_mtime_ns}"
                    elif not is_dir and not entry.startswith("."):
                        st = path.stat()
                        yield f"{name}/{entry} {st.st_size} {st.st_mtime_ns}"
                except FileNotFoundError:  # changing right now: the next poll sees it
                    continue

    def _remote_listing(self) -> Iterator[str]:
        self._fs.invalidate_cache(self._base)
        try:
            found = self._fs.find(self._base, detail=True)
        except FileNotFoundError:
            return
        prefix = self._base + "/"
        for full, info in sorted(found.items()):
            parts = full[len(prefix) :].split("/")
            if len(parts) < 2 or any(p.startswith(".") for p in parts):
                continue
            if not _NAME.fullmatch(parts[0]):
                continue
            stamp = next(
                (info[k] for k in ("mtime", "LastModified", "ETag", "created") if k in info), ""
            )
            yield f"{'/'.join(parts)} {info.get('size')} {stamp}"


# -- helpers -------------------------------------------------------------------


def _version_number(ref: object) -> int | None:
    """``ref`` as a version number if it is an int or a digit string, else None."""
    if isinstance(ref, bool):
        raise InvalidName(f"invalid version {ref!r}")
    if isinstance(ref, int):
        return ref
    if isinstance(ref, str) and ref.isascii() and ref.isdigit():
        return int(ref)
    return None


def _numbers(versions: Sequence[ModelVersion]) -> str:
    numbers = [str(mv.version) for mv in versions]
    if len(numbers) > 12:
        numbers = [*numbers[:5], "...", *numbers[-5:]]
    return ("version " if len(versions) == 1 else "versions ") + ", ".join(numbers)


def _tag_list(versions: Sequence[ModelVersion]) -> str:
    tags = sorted(f"{tag} → {mv.version}" for mv in versions for tag in mv.tags)
    return "tags " + ", ".join(tags) if tags else "no tags"


def _record(
    conn: sqlite3.Connection,
    action: str,
    model: str,
    version: int | None,
    checksum: str | None,
    actor: str | None,
    details: Mapping[str, Any],
) -> None:
    conn.execute(
        "INSERT INTO history (time, action, model, version, checksum, actor, details) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (time.time(), action, model, version, checksum, actor, json.dumps(details)),
    )


def _drop_version(conn: sqlite3.Connection, name: str, number: int) -> list[str]:
    """Remove the index row of a version and its tags; return the tags it had."""
    tags = conn.execute(
        "DELETE FROM tags WHERE model = ? AND version = ? RETURNING tag", (name, number)
    ).fetchall()
    conn.execute("DELETE FROM versions WHERE model = ? AND version = ?", (name, number))
    return sorted(row[0] for row in tags)


def _staged_files(root: Path) -> list[tuple[str, Path]]:
    """(relative path, path) of the regular files under ``root``, sorted; BadRequest
    if ``root`` is not a directory, holds links or special files, or no file."""
    if root.is_symlink() or not root.is_dir():
        raise BadRequest(f"cannot publish {root}: it is not a directory")
    files = []

    def fail(error: OSError) -> None:
        raise error

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        for entry in [*dirnames, *filenames]:
            path = Path(dirpath, entry)
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BadRequest(f"cannot publish {root}: {rel} is a symbolic link")
            if stat.S_ISREG(mode):
                files.append((rel, path))
            elif not stat.S_ISDIR(mode):
                raise BadRequest(f"cannot publish {root}: {rel} is not a regular file")
    if not files:
        raise BadRequest(f"cannot publish {root}: it holds no files")
    return sorted(files)


def _local_files(root: Path) -> list[tuple[str, Path]]:
    """(relative path, path) of the files under ``root`` (links to files included), sorted."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        for entry in filenames:
            path = Path(dirpath, entry)
            if path.is_file():
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _checksum(
    files: Iterable[tuple[str, Callable[[], IO[bytes]]]],
    sink: Callable[[str], AbstractContextManager[IO[bytes]]] | None = None,
) -> tuple[str, int]:
    """(checksum, total size) of ``files`` given as (relative path, opener), in
    that order; each file is also written to ``sink(relative path)`` if given."""
    total = hashlib.sha256()
    size = 0
    for rel, opener in files:
        digest = hashlib.sha256()
        with opener() as source, sink(rel) if sink else contextlib.nullcontext() as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
        total.update(f"{rel}\0{digest.hexdigest()}\n".encode())
    return total.hexdigest(), size


@contextlib.contextmanager
def _local_writer(base: Path, rel: str) -> Iterator[IO[bytes]]:
    path = base.joinpath(*rel.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


def _make_tmp(model_dir: Path) -> tuple[Path, bool]:
    """A new hidden directory in ``model_dir`` (created if needed: second item True)."""
    for _ in range(10):
        created = False
        try:
            model_dir.mkdir()
            created = True
        except FileExistsError:
            pass
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
        except FileNotFoundError:  # a concurrent delete removed the empty model dir
            continue
        return tmp, created
    raise OSError(f"cannot create a directory in {model_dir}")


def _open(path: Path) -> IO[bytes]:
    return path.open("rb")


def _discard(path: Path) -> None:
    """Delete ``path`` (a file or a directory tree), ignoring errors."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every directory under ``root`` (files are fsynced as they are written)."""
    for dirpath, _, _ in os.walk(root, topdown=False):
        _fsync_dir(dirpath)
