"""Batch inference: score whole ROOT files with a model package (``mlaas4hep predict``).

The work is cut into tasks: one per input file, or one per entry range of
``entries_per_task`` entries for big files. Each task loads the package (once
per process), streams its entries through :class:`~mlaas4hep.data.reader.EventStream`
in file order, turns every chunk into the model's inputs exactly as in training
(:meth:`~mlaas4hep.predict.events.EventInputs.prepare`), runs ONNX Runtime on
the whole chunk and writes one Parquet part with one row per input entry.

Columns of every part (and of the outputs): ``entry`` (entry number in the
input tree), the identifier branches the file has (``run``,
``luminosityBlock``, ``event``), ``selected`` (only when the package's
preprocessing has a selection: events it drops have NaN scores) and one
``float32`` column ``score_<label>`` per label.

Outputs, once all tasks are done:

* ``out`` ending in ``.parquet``: one Parquet file, the parts concatenated in
  input order (file by file, entry by entry), with a ``file`` column (the
  input's URL) in front.
* any other ``out``: a directory with one ROOT friend tree ``Friends`` per
  input file, ``<input name>`` (a ``_<n>`` suffix when two inputs share a
  name), with exactly the input tree's entries (written with ``mktree`` /
  ``extend``: a TTree, not an RNTuple).

Parts are written next to the output (``.<out name>.parts/``) and removed at
the end, so with a remote dask scheduler the output must be on a file system the
workers share. A file that fails (unreadable, missing branch, ...) is reported
in :class:`PredictReport` with its message and left out of the output; the
other files are written.

Distribution: ``scheduler`` is a ``dask.distributed`` scheduler address;
``workers > 1`` starts a local cluster of that many single-threaded worker
processes; otherwise the tasks run one after the other in this process.
"""

from __future__ import annotations

import glob
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import uproot

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.pruned_tree import no_branches
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.rootfile import get_tree, is_remote, open_root, release
from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.errors import ConfigError, DataError, MlaasError
from mlaas4hep.parallel import is_distributed, run_tasks
from mlaas4hep.train.package import load_package
from mlaas4hep.transform.writers import _pa, _pq

FRIEND_TREE = "Friends"
"""The name of the friend trees written for ROOT output."""
IDENTIFIERS = ("run", "luminosityBlock", "event")
"""The identifier branches copied to the output (those the file has), in this order."""


@dataclass
class Task:
    """One unit of work: an entry range of one input file."""

    index: int  # position in the task list (parts are merged in this order)
    file: int  # index of the input file
    source: Source
    part: str  # path of the Parquet part this task writes


@dataclass
class TaskResult:
    """What one task did."""

    index: int
    file: int
    events: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Failure:
    """An input file that could not be scored."""

    file: str
    message: str


@dataclass
class PredictReport:
    """The summary of a ``predict_files`` run."""

    events: int = 0
    files: int = 0
    tasks: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        """Events scored per second of the whole run."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Whether every file was scored."""
        return not self.failures


# -- where the scores come from --------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """The model that scores: a package directory, or a model on a server.

    ``NAME[:VERSION]@URL`` (``mlp@http://host:8083``) names a model on an
    mlaas4hep server, which applies the spec itself (its ``/events``
    endpoint); anything else is a package directory.
    """

    package: str | None = None
    url: str | None = None
    name: str | None = None
    version: str | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str, *, token: str | None = None) -> ModelSource:
        """The model named by ``--model``: ``NAME[:VERSION]@URL`` or a package path."""
        name, at, url = text.partition("@")
        if at and url.startswith(("http://", "https://")) and not Path(text).exists():
            if not name:
                raise ConfigError(f"--model {text}: the model name before '@' is missing")
            model, _, version = name.partition(":")
            return cls(url=url, name=model, version=version or None, token=token)
        return cls(package=str(Path(text).resolve()))

    def __str__(self) -> str:
        if self.package is not None:
            return self.package
        version = f":{self.version}" if self.version else ""
        return f"{self.name}{version}@{self.url}"


class _Scorer:
    """What a task needs of the model: the branches to read, the labels, whether
    events may be dropped, and scores for a block of events."""

    branches: list[str]
    labels: list[str]
    selects: bool

    def score(self, events: Any, where: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``[N, K]`` (NaN rows for dropped events) and the kept mask
        (``None`` when the model drops none)."""
        raise NotImplementedError


class _PackageScorer(_Scorer):
    """In this process, with ONNX Runtime."""

    def __init__(self, path: str, threads: int) -> None:
        self.package = load_package(path)
        self.package.threads = threads
        self.inputs = self.package.event_inputs()
        self.branches = list(self.inputs.branches)
        self.labels = self.package.labels
        preprocessing = self.inputs.preprocessing
        self.selects = preprocessing is not None and "selection" in preprocessing.functions

    def score(self, events: Any, where: str) -> tuple[np.ndarray, np.ndarray | None]:
        prepared = self.inputs.prepare(events, where=where)
        return prepared.scatter(self.package.predict(prepared.inputs)), prepared.selected


class _ServerScorer(_Scorer):
    """Through a server's ``/events`` endpoint (events sent as Parquet)."""

    def __init__(self, source: ModelSource) -> None:
        from mlaas4hep.client import Client  # noqa: PLC0415 - only for remote models

        assert source.url is not None
        assert source.name is not None
        self.client = Client(source.url, source.token, timeout=300)
        try:
            metadata = self.client.events_metadata(source.name, source.version)
        except MlaasError as exc:
            self.client.close()
            raise ConfigError(f"model {source}: {exc}") from None
        self.name = source.name
        # every task uses the version found first, even if a newer one is uploaded meanwhile
        self.version = int(metadata["version"])
        self.branches = [str(b) for b in metadata["branches"]]
        self.labels = [str(label) for label in metadata.get("labels") or []]
        self.selects = bool(metadata.get("selection"))
        self.limit = max(1, int(metadata.get("max_events") or 65_536))

    def score(self, events: Any, where: str) -> tuple[np.ndarray, np.ndarray | None]:
        blocks, kept = [], []
        for start in range(0, len(events), self.limit):
            try:
                answer = self.client.predict_events(
                    events[start : start + self.limit], model=self.name, version=self.version
                )
            except MlaasError as exc:
                raise DataError(f"{where}: {exc}") from None
            blocks.append(answer.probabilities)
            kept.append(answer.kept)
        if not blocks:
            return np.zeros((0, max(1, len(self.labels))), np.float32), None
        return np.concatenate(blocks), np.concatenate(kept) if self.selects else None


_SCORERS: dict[tuple[ModelSource, int], tuple[int | None, _Scorer]] = {}


def _scorer(source: ModelSource, threads: int) -> _Scorer:
    """The scorer of ``source``, made once per process (tasks of one run share it),
    and made again when the package directory was written since."""
    key = (source, threads)
    stamp = _package_stamp(source)
    cached = _SCORERS.get(key)
    if cached is None or cached[0] != stamp:
        if source.package is not None:
            scorer: _Scorer = _PackageScorer(source.package, threads)
        else:
            scorer = _ServerScorer(source)
        _SCORERS[key] = cached = (stamp, scorer)
    return cached[1]


def _package_stamp(source: ModelSource) -> int | None:
    """When the package's metadata.json was written (None: no package there)."""
    if source.package is None:
        return None
    try:
        return (Path(source.package) / "metadata.json").stat().st_mtime_ns
    except OSError:
        return None


def open_model(model: ModelSource) -> ModelSource:
    """Load (or reach) ``model`` in this process, so that a bad package, an unknown
    model or an unreachable server raises :class:`ConfigError` now; a server's
    model comes back pinned to the version it serves."""
    scorer = _scorer(model, 0)
    if isinstance(scorer, _ServerScorer):
        return replace(model, version=str(scorer.version))
    return model


# -- one task ---------------------------------------------------------------


def score_columns(labels: Sequence[str], probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """``score_<label>`` columns (float32) of ``probabilities`` ``[N, K]``.

    A single-column model with two labels gives the probability of the last
    label; the first is its complement.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim == 1:
        p = p[:, None]
    if p.shape[1] == 1 and len(labels) == 2:
        return {f"score_{labels[0]}": 1.0 - p[:, 0], f"score_{labels[1]}": p[:, 0]}
    if p.shape[1] != len(labels):
        names = [f"score_{i}" for i in range(p.shape[1])]
    else:
        names = [f"score_{label}" for label in labels]
    return {name: np.ascontiguousarray(p[:, i]) for i, name in enumerate(names)}


def run_task(
    task: Task, model: ModelSource, tree: str | None, step_size: int | str, threads: int = 0
) -> TaskResult:
    """Score one task's entries and write its Parquet part (runs in a worker).

    ``threads``: ONNX Runtime threads (0: all cores; 1 on dask workers, which
    run one task per core).
    """
    start = time.perf_counter()
    try:
        events = _score(task, model, tree, step_size, threads)
    except MlaasError as exc:
        return TaskResult(task.index, task.file, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a per-file failure, reported
        return TaskResult(task.index, task.file, error=f"{type(exc).__name__}: {exc}")
    return TaskResult(task.index, task.file, events=events, seconds=time.perf_counter() - start)


def _score(
    task: Task, model: ModelSource, tree: str | None, step_size: int | str, threads: int
) -> int:
    pa = _pa()
    scorer = _scorer(model, threads)
    where = task.source.url
    selection = BranchSelection(include=scorer.branches, identifiers=None)
    writer: Any = None
    events = 0
    try:
        with EventStream(
            [task.source],
            selection,
            tree=tree,
            step_size=step_size,
            shuffle=False,
            interleave=False,
            prefetch=1,
            threads=1,
        ) as stream:
            identifiers = [n for n in IDENTIFIERS if n in stream.identifiers]
            for chunk in stream.iter_epoch(0):
                scores, kept = scorer.score(chunk.arrays, where)
                columns: dict[str, Any] = {"entry": np.asarray(chunk.entry, dtype=np.int64)}
                for name in identifiers:
                    columns[name] = np.asarray(chunk.arrays[name].to_numpy())
                if scorer.selects:
                    columns["selected"] = np.ones(len(chunk), dtype=bool) if kept is None else kept
                columns.update(score_columns(scorer.labels, scores))
                table = pa.table(columns)
                if writer is None:
                    writer = _parquet_writer(task.part, table.schema)
                writer.write_table(table)
                events += len(chunk)
    finally:
        if writer is not None:
            writer.close()
    return events


def _parquet_writer(path: str, schema: Any) -> Any:
    # dictionary encoding only where values repeat: on scores it triples the writing time
    repeated = [name for name in ("file", "run", "luminosityBlock") if name in schema.names]
    return _pq().ParquetWriter(path, schema, use_dictionary=repeated)


def resolve_inputs(inputs: Sequence[str], *, redirector: str | None = None) -> list[Source]:
    """The files named by ``inputs`` (as :func:`~mlaas4hep.data.sources.resolve_sources`),
    except that a local file that does not exist becomes a source of its own, so
    that it is reported as a failed file while the others are scored."""
    sources: list[Source] = []
    for item in inputs:
        try:
            sources.extend(resolve_sources([item], redirector=redirector))
        except DataError:
            text = item.removeprefix("file://")
            if glob.has_magic(text) or is_remote(item) or text.endswith(".txt"):
                raise
            sources.append(Source(url=item))
    return sources


# -- planning and merging ----------------------------------------------------


def _entries(source: Source, tree: str | None) -> int:
    directory = open_root(source.url)
    try:
        found = get_tree(directory, source.tree or tree, path=source.url, branches=no_branches)
        return int(found.num_entries)
    finally:
        release(directory)


def plan_tasks(
    sources: Sequence[Source],
    parts: Path,
    *,
    tree: str | None,
    entries_per_task: int | None,
    failures: dict[int, str],
) -> list[Task]:
    """The tasks: one per file, or per ``entries_per_task`` entries (files that
    cannot even be opened to count their entries go to ``failures``)."""
    tasks: list[Task] = []
    for file, source in enumerate(sources):
        ranges: list[Source] = [source]
        if entries_per_task is not None:
            try:
                total = _entries(source, tree)
            except Exception as exc:  # noqa: BLE001 - reported per file
                failures[file] = str(exc) if isinstance(exc, MlaasError) else repr(exc)
                continue
            stop = total if source.entry_stop is None else min(source.entry_stop, total)
            starts = range(source.entry_start, stop, entries_per_task)
            ranges = [
                replace(source, entry_start=s, entry_stop=min(s + entries_per_task, stop))
                for s in starts
            ] or [source]
        for piece in ranges:
            index = len(tasks)
            tasks.append(Task(index, file, piece, str(parts / f"part-{index:06d}.parquet")))
    return tasks


def _friend_names(sources: Sequence[Source]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for source in sources:
        name = source.name if source.name.endswith(".root") else f"{source.name}.root"
        stem = name[: -len(".root")]
        candidate, n = name, 1
        while candidate in seen:
            candidate = f"{stem}_{n}.root"
            n += 1
        seen.add(candidate)
        names.append(candidate)
    return names


class _Outputs:
    """Writes each input file's scores as soon as all its tasks are done, so the
    merge runs while other files are still being scored.

    Parquet output keeps the input order: a finished file waits for the files
    before it. A failed file is skipped; its parts are never read.
    """

    def __init__(self, out: Path, sources: Sequence[Source], tasks: Sequence[Task]) -> None:
        self.out, self.sources = out, sources
        self.parts: dict[int, list[str]] = {}
        for task in tasks:
            self.parts.setdefault(task.file, []).append(task.part)
        self.pending: dict[int, bool] = {}  # finished files: whether they are good
        self.next = 0  # the next file the Parquet output takes
        self.writer: Any = None
        self.written: list[Path] = []
        self.names = _friend_names(sources)
        if out.suffix != ".parquet":
            out.mkdir(parents=True, exist_ok=True)

    def finish(self, file: int, good: bool) -> None:
        """Record that every task of ``file`` is done (``good``: none failed)."""
        self.pending[file] = good
        if self.out.suffix != ".parquet":
            if good:
                self._friend_tree(file)
            return
        while self.next in self.pending:
            if self.pending.pop(self.next, False):
                self._append(self.next)
            self.next += 1

    def close(self) -> list[Path]:
        """Close the Parquet file; the paths written."""
        if self.writer is not None:
            self.writer.close()
            self.written = [self.out]
        return self.written

    def _tables(self, file: int) -> Iterator[Any]:
        for part in self.parts[file]:
            if Path(part).exists():  # a task with no entries writes no part
                yield _pq().read_table(part)
                Path(part).unlink()

    def _append(self, file: int) -> None:
        pa = _pa()
        for part in self._tables(file):
            url = pa.DictionaryArray.from_arrays(
                np.zeros(part.num_rows, np.int32), pa.array([self.sources[file].url], pa.string())
            )
            table = part.add_column(0, "file", url)
            if self.writer is None:
                self.writer = _parquet_writer(str(self.out), table.schema)
            elif table.schema != self.writer.schema:
                table = table.cast(self.writer.schema)
            self.writer.write_table(table)

    def _friend_tree(self, file: int) -> None:
        target = self.out / self.names[file]
        with uproot.recreate(target) as root:
            friend: Any = None
            for table in self._tables(file):
                columns = {name: table.column(name).to_numpy() for name in table.column_names}
                if friend is None:
                    friend = root.mktree(
                        FRIEND_TREE, {name: array.dtype for name, array in columns.items()}
                    )
                friend.extend(columns)
        self.written.append(target)


# -- the driver ---------------------------------------------------------------


def _lost(task: Task, exc: BaseException) -> TaskResult:
    """The result of a task whose worker died (``run_task`` itself never raises)."""
    return TaskResult(task.index, task.file, error=repr(exc))


def predict_files(
    sources: Sequence[Source],
    model: str | Path | ModelSource,
    out: str | Path,
    *,
    token: str | None = None,
    tree: str | None = None,
    step_size: int | str = "100 MB",
    scheduler: str | None = None,
    workers: int = 1,
    entries_per_task: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PredictReport:
    """Score ``sources`` with ``model`` into ``out``.

    ``model`` is a package directory, ``NAME[:VERSION]@URL`` for a model on a
    server (``token``: its access token), or a :class:`ModelSource`. See the
    module documentation for the output layout. Raises :class:`ConfigError`
    for a model that cannot be loaded or reached, or bad options; per-file
    failures are in the report.
    """
    if not sources:
        raise ConfigError("no input files to score")
    if entries_per_task is not None and entries_per_task < 1:
        raise ConfigError(f"entries_per_task must be at least 1, got {entries_per_task}")
    if not isinstance(model, ModelSource):
        model = ModelSource.parse(str(model), token=token)
    model = open_model(model)  # fails fast, before any task
    out = Path(out)
    if out.suffix != ".parquet" and out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory (ROOT friend trees go into one)")
    start = time.perf_counter()
    parts = out.with_name(f".{out.name}.parts")
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    try:
        failures: dict[int, str] = {}
        tasks = plan_tasks(
            sources, parts.resolve(), tree=tree, entries_per_task=entries_per_task,
            failures=failures,
        )  # fmt: skip
        outputs = _Outputs(out, sources, tasks)
        for file in sorted(failures):  # files that could not even be planned
            outputs.finish(file, good=False)
        left: dict[int, int] = {}  # tasks not done yet, by file
        for task in tasks:
            left[task.file] = left.get(task.file, 0) + 1
        events: dict[int, int] = {}

        def finished(result: TaskResult) -> None:
            if result.error is not None:
                failures.setdefault(result.file, result.error)
            events[result.file] = events.get(result.file, 0) + result.events
            left[result.file] -= 1
            if not left[result.file]:
                outputs.finish(result.file, good=result.file not in failures)

        # dask workers run one task per core: one ONNX Runtime thread each
        threads = 1 if is_distributed(scheduler, workers) else 0
        run_tasks(
            run_task, tasks, model, tree, step_size, threads, scheduler=scheduler,
            workers=workers, progress=progress, on_error=_lost, on_result=finished,
        )  # fmt: skip
        good = {task.file for task in tasks} - set(failures)
        written = outputs.close()
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return PredictReport(
        events=sum(events.get(f, 0) for f in good),
        files=len(good),
        tasks=len(tasks),
        seconds=time.perf_counter() - start,
        outputs=written,
        failures=[Failure(sources[f].url, failures[f]) for f in sorted(failures)],
    )


__all__ = [
    "FRIEND_TREE",
    "Failure",
    "ModelSource",
    "PredictReport",
    "open_model",
    "predict_files",
    "resolve_inputs",
    "run_task",
    "score_columns",
]
