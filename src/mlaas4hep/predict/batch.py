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

Parts are written next to the output (``<out>.parts/``) and removed at the
end, so with a remote dask scheduler the output must be on a file system the
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
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.rootfile import get_tree, is_remote, open_root, release
from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.errors import ConfigError, DataError, MlaasError
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
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


# -- one task ---------------------------------------------------------------

_PACKAGES: dict[str, Any] = {}


def _package(path: str) -> tuple[Any, Any]:
    """The package at ``path`` and its event inputs, loaded once per process."""
    if path not in _PACKAGES:
        package = load_package(path)
        _PACKAGES[path] = (package, package.event_inputs())
    cached: tuple[Any, Any] = _PACKAGES[path]
    return cached


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


def run_task(task: Task, package_path: str, tree: str | None, step_size: int | str) -> TaskResult:
    """Score one task's entries and write its Parquet part (runs in a worker)."""
    start = time.perf_counter()
    try:
        events = _score(task, package_path, tree, step_size)
    except MlaasError as exc:
        return TaskResult(task.index, task.file, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a per-file failure, reported
        return TaskResult(task.index, task.file, error=f"{type(exc).__name__}: {exc}")
    return TaskResult(task.index, task.file, events=events, seconds=time.perf_counter() - start)


def _score(task: Task, package_path: str, tree: str | None, step_size: int | str) -> int:
    pa, pq = _pa(), _pq()
    package, event_inputs = _package(package_path)
    where = task.source.url
    selection = BranchSelection(include=list(event_inputs.branches), identifiers=None)
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
            selects = event_inputs.preprocessing is not None and (
                "selection" in event_inputs.preprocessing.functions
            )
            for chunk in stream.iter_epoch(0):
                prepared = event_inputs.prepare(chunk.arrays, where=where)
                scores = prepared.scatter(package.predict(prepared.inputs))
                columns: dict[str, Any] = {"entry": np.asarray(chunk.entry, dtype=np.int64)}
                for name in identifiers:
                    columns[name] = np.asarray(chunk.arrays[name].to_numpy())
                if selects:
                    selected = prepared.selected
                    columns["selected"] = (
                        np.ones(len(chunk), dtype=bool) if selected is None else selected
                    )
                columns.update(score_columns(package.labels, scores))
                table = pa.table(columns)
                if writer is None:
                    writer = pq.ParquetWriter(task.part, table.schema)
                writer.write_table(table)
                events += len(chunk)
    finally:
        if writer is not None:
            writer.close()
    return events


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
        return int(get_tree(directory, source.tree or tree, path=source.url).num_entries)
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


def _write_outputs(
    out: Path, sources: Sequence[Source], tasks: Sequence[Task], good: set[int]
) -> list[Path]:
    pa, pq = _pa(), _pq()
    by_file: dict[int, list[Task]] = {}
    for task in tasks:
        if task.file in good:
            by_file.setdefault(task.file, []).append(task)

    def tables(file: int) -> Iterator[Any]:
        for task in by_file[file]:
            if Path(task.part).exists():  # a task with no entries writes no part
                yield pq.read_table(task.part)

    if out.suffix == ".parquet":
        writer: Any = None
        try:
            for file in sorted(by_file):
                for part in tables(file):
                    url = pa.array([sources[file].url] * part.num_rows, pa.string())
                    table = part.add_column(0, "file", url.dictionary_encode())
                    if writer is None:
                        writer = pq.ParquetWriter(str(out), table.schema)
                    elif table.schema != writer.schema:
                        table = table.cast(writer.schema)
                    writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        return [out] if writer is not None else []

    out.mkdir(parents=True, exist_ok=True)
    names = _friend_names(sources)
    written: list[Path] = []
    for file in sorted(by_file):
        target = out / names[file]
        with uproot.recreate(target) as root:
            friend: Any = None
            for table in tables(file):
                columns = {name: table.column(name).to_numpy() for name in table.column_names}
                if friend is None:
                    friend = root.mktree(
                        FRIEND_TREE, {name: array.dtype for name, array in columns.items()}
                    )
                friend.extend(columns)
        written.append(target)
    return written


# -- the driver ---------------------------------------------------------------


def _run_local(
    tasks: Sequence[Task], args: tuple[Any, ...], progress: Callable[[int, int], None] | None
) -> list[TaskResult]:
    results = []
    for task in tasks:
        results.append(run_task(task, *args))
        if progress is not None:
            progress(len(results), len(tasks))
    return results


def _run_dask(
    tasks: Sequence[Task],
    args: tuple[Any, ...],
    progress: Callable[[int, int], None] | None,
    *,
    scheduler: str | None,
    workers: int,
) -> list[TaskResult]:
    try:
        from distributed import Client, LocalCluster, as_completed  # noqa: PLC0415 - optional
    except ImportError:
        raise ConfigError(
            "distributed prediction needs dask: pip install 'mlaas4hep[dask]'"
        ) from None
    cluster: Any = None
    if scheduler is None:
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    try:
        target = scheduler if cluster is None else cluster
        with Client(target) as client:  # type: ignore[no-untyped-call]
            futures = [client.submit(run_task, task, *args, pure=False) for task in tasks]
            results = []
            for future in as_completed(futures):  # type: ignore[no-untyped-call]
                try:
                    results.append(future.result())
                except Exception as exc:  # noqa: BLE001 - a worker died: report the task
                    task = tasks[futures.index(future)]
                    results.append(TaskResult(task.index, task.file, error=repr(exc)))
                if progress is not None:
                    progress(len(results), len(tasks))
            return results
    finally:
        if cluster is not None:
            cluster.close()


def predict_files(
    sources: Sequence[Source],
    package_path: str | Path,
    out: str | Path,
    *,
    tree: str | None = None,
    step_size: int | str = "100 MB",
    scheduler: str | None = None,
    workers: int = 1,
    entries_per_task: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PredictReport:
    """Score ``sources`` with the package at ``package_path`` into ``out``.

    See the module documentation for the output layout. Raises
    :class:`ConfigError` for a package that cannot be loaded or bad options;
    per-file failures are in the report.
    """
    if not sources:
        raise ConfigError("no input files to score")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if entries_per_task is not None and entries_per_task < 1:
        raise ConfigError(f"entries_per_task must be at least 1, got {entries_per_task}")
    package_path = str(Path(package_path).resolve())
    load_package(package_path).event_inputs()  # fail fast, before any task
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
        args = (package_path, tree, step_size)
        if scheduler is not None or workers > 1:
            results = _run_dask(tasks, args, progress, scheduler=scheduler, workers=workers)
        else:
            results = _run_local(tasks, args, progress)
        events: dict[int, int] = {}
        for result in sorted(results, key=lambda r: r.index):
            if result.error is not None:
                failures.setdefault(result.file, result.error)
            events[result.file] = events.get(result.file, 0) + result.events
        good = {task.file for task in tasks} - set(failures)
        outputs = _write_outputs(out, sources, tasks, good)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return PredictReport(
        events=sum(events.get(f, 0) for f in good),
        files=len(good),
        tasks=len(tasks),
        seconds=time.perf_counter() - start,
        outputs=outputs,
        failures=[Failure(sources[f].url, failures[f]) for f in sorted(failures)],
    )


__all__ = [
    "FRIEND_TREE",
    "Failure",
    "PredictReport",
    "predict_files",
    "resolve_inputs",
    "run_task",
    "score_columns",
]
