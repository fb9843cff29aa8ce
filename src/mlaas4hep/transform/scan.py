"""The first pass: statistics of a dataset, turned into a :class:`FeatureSpec`.

Each file is scanned on its own (in parallel on dask when asked) into
mergeable accumulators: exact count, min, max, mean and variance (Chan's parallel update), exact per-event length histograms, and a
seeded random sample of values for the quantiles. The spec records a hash of
the inputs (file UUIDs, entry ranges, trees, branches, preprocessing), so a
spec used with other data is detected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import awkward as ak
import numpy as np

from mlaas4hep.data.branches import BranchSelection, matches, parse_patterns
from mlaas4hep.data.pruned_tree import no_branches
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.rootfile import get_tree, open_root
from mlaas4hep.data.shuffle import apportion
from mlaas4hep.data.sources import Source
from mlaas4hep.errors import ConfigError
from mlaas4hep.parallel import run_tasks
from mlaas4hep.transform import normalize
from mlaas4hep.transform.preprocess import Preprocessing, load_preprocessing
from mlaas4hep.transform.spec import (
    BranchSpec,
    FeatureSpec,
    InputFile,
    LengthStats,
    ValueStats,
)
from mlaas4hep.transform.vector import describe, jagged_parts

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
SAMPLE_SIZE = 100_000  # values kept per branch for the quantiles


@dataclass
class Accumulator:
    """Mergeable statistics of one branch."""

    kind: str
    dtype: str
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = np.inf
    maximum: float = -np.inf
    log_count: int = 0
    log_mean: float = 0.0
    log_m2: float = 0.0
    negative: bool = False
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    sample: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    @staticmethod
    def _merge_moments(
        n1: int, mean1: float, m21: float, n2: int, mean2: float, m22: float
    ) -> tuple[int, float, float]:
        n = n1 + n2
        if n == 0:
            return 0, 0.0, 0.0
        delta = mean2 - mean1
        return n, mean1 + delta * n2 / n, m21 + m22 + delta * delta * n1 * n2 / n

    def add(self, values: np.ndarray, rng: np.random.Generator) -> None:
        """Add real entries (already flattened)."""
        values = values.astype(np.float64, copy=False)
        values = values[np.isfinite(values)]
        if not len(values):
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        self.count, self.mean, self.m2 = self._merge_moments(
            self.count, self.mean, self.m2, len(values), mean, m2
        )
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        if self.minimum < 0:
            self.negative = True
        if not self.negative:
            logs = np.log1p(values)
            log_mean = float(logs.mean())
            self.log_count, self.log_mean, self.log_m2 = self._merge_moments(
                self.log_count, self.log_mean, self.log_m2,
                len(logs), log_mean, float(((logs - log_mean) ** 2).sum()),
            )  # fmt: skip
        take = min(len(values), SAMPLE_SIZE)
        picked = values if take == len(values) else rng.choice(values, take, replace=False)
        self.sample = _subsample(np.concatenate([self.sample, picked]), rng)

    def add_lengths(self, histogram: np.ndarray) -> None:
        """Add a histogram of per-event lengths (``histogram[k]`` events of length k)."""
        if len(histogram) > len(self.lengths):
            histogram, self.lengths = self.lengths, histogram.copy()
        self.lengths[: len(histogram)] += histogram

    def merge(self, other: Accumulator, rng: np.random.Generator) -> None:
        self.count, self.mean, self.m2 = self._merge_moments(
            self.count, self.mean, self.m2, other.count, other.mean, other.m2
        )
        self.log_count, self.log_mean, self.log_m2 = self._merge_moments(
            self.log_count,
            self.log_mean,
            self.log_m2,
            other.log_count,
            other.log_mean,
            other.log_m2,
        )
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.negative = self.negative or other.negative
        self.add_lengths(other.lengths)
        self.sample = _subsample(np.concatenate([self.sample, other.sample]), rng)

    def value_stats(self) -> ValueStats | None:
        if self.count == 0:
            return None
        quantiles = np.quantile(self.sample, QUANTILES) if len(self.sample) else []
        log_ok = not self.negative and self.log_count
        return ValueStats(
            count=self.count,
            min=self.minimum,
            max=self.maximum,
            mean=self.mean,
            std=float(np.sqrt(self.m2 / self.count)),
            quantiles={str(q): float(v) for q, v in zip(QUANTILES, quantiles, strict=False)},
            log_mean=self.log_mean if log_ok else None,
            log_std=float(np.sqrt(self.log_m2 / self.log_count)) if log_ok else None,
        )


def _subsample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(values) <= SAMPLE_SIZE:
        return values
    return rng.choice(values, SAMPLE_SIZE, replace=False)


@dataclass
class FileScan:
    """What scanning one file found."""

    accumulators: dict[str, Accumulator]
    events: int
    selected: int
    split: set[str]  # jagged branches whose lengths differ from their prefix group
    derived: set[str]  # names the preprocessing added


def _collection_key(name: str) -> str:
    return name.split("_", 1)[0] if "_" in name else name


def accumulate(
    events: ak.Array, names: Sequence[str], accumulators: dict[str, Accumulator],
    split: set[str], rng: np.random.Generator,
) -> None:  # fmt: skip
    """Add one chunk of events to the per-branch accumulators."""
    group_counts: dict[str, np.ndarray] = {}
    for name in names:
        kind, dtype = describe(events[name])
        if kind == "other":
            raise ConfigError(
                f"branch {name!r} has type {events[name].type.content}: only flat and "
                "jagged (var * number) branches can become features; exclude it"
            )
        acc = accumulators.setdefault(name, Accumulator(kind=kind, dtype=dtype))
        if (acc.kind, acc.dtype) != (kind, dtype):
            raise ConfigError(
                f"branch {name!r} changes type from {acc.dtype} ({acc.kind}) to {dtype} ({kind})"
            )
        if kind == "flat":
            acc.add(events[name].to_numpy(), rng)
            continue
        counts, content = jagged_parts(events[name])
        acc.add(content, rng)
        acc.add_lengths(np.bincount(counts))
        key = _collection_key(name)
        if key in group_counts and not np.array_equal(group_counts[key], counts):
            split.add(name)
        group_counts.setdefault(key, counts)


def scan_source(
    source: Source,
    selection: BranchSelection,
    tree: str | None,
    preprocessing_path: str | None,
    step_size: int | str,
    seed: int,
) -> FileScan:
    """Scan one file (runs in a worker process)."""
    digest = hashlib.sha256(source.url.encode()).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest[:4], "little")])
    preprocessing = load_preprocessing(preprocessing_path) if preprocessing_path else None
    accumulators: dict[str, Accumulator] = {}
    split: set[str] = set()
    derived: set[str] = set()
    events_seen = selected = 0
    with EventStream(
        [source], selection, tree=tree, step_size=step_size, shuffle=False, prefetch=1, threads=1
    ) as stream:
        for chunk in stream.iter_epoch(0):
            events = chunk.data
            events_seen += len(events)
            if preprocessing is not None:
                read = set(events.fields)
                events, mask, _ = preprocessing.apply(events, where=source.url)
                derived |= set(events.fields) - read
                if mask is not None:
                    events = events[mask]
            selected += len(events)
            accumulate(events, events.fields, accumulators, split, rng)
    return FileScan(accumulators, events_seen, selected, split, derived)


@dataclass
class ScanOptions:
    """How lengths and normalisation are chosen from the statistics."""

    length: str | int | float = "max"
    lengths: Mapping[str, str | float] = field(default_factory=dict)
    normalization: str = "standard"
    log: list[str] = field(default_factory=list)
    pad_value: float = float("nan")
    layout: str = "flat"
    clip: str = "clip"


def choose_length(policy: str | float, stats: LengthStats, name: str) -> tuple[int, str]:
    """``(length, policy text)`` for a jagged branch: max, a quantile or a fixed number."""
    if isinstance(policy, int) or (isinstance(policy, str) and policy.isdigit()):
        length = int(policy)
        if length < 1:
            raise ConfigError(f"the length of {name} must be at least 1, got {length}")
        return length, "fixed"
    if policy == "max":
        return max(1, stats.max), "max"
    text = str(policy).removeprefix("q")
    try:
        q = float(text)
    except ValueError:
        raise ConfigError(
            f"length policy for {name} must be 'max', a quantile like 'q0.95' or a number, "
            f"got {policy!r}"
        ) from None
    return max(1, stats.quantile(q)), f"quantile {q:g}"


def identify_inputs(
    sources: Sequence[Source], tree: str | None, nevts: int
) -> tuple[list[Source], list[InputFile]]:
    """Sources limited to ``nevts`` in all, and their content identities."""
    found = []
    for source in sources:
        directory = open_root(source.url)
        found_tree = get_tree(directory, source.tree or tree, path=source.url, branches=no_branches)
        entries = int(found_tree.num_entries)
        stop = entries if source.entry_stop is None else min(entries, source.entry_stop)
        found.append((source, str(directory.file.uuid), max(0, stop - source.entry_start)))
    sizes = [n for _, _, n in found]
    if nevts > 0 and nevts < sum(sizes):
        sizes = apportion(nevts, sizes)
    limited = [
        replace(s, entry_stop=s.entry_start + n) for (s, _, _), n in zip(found, sizes, strict=True)
    ]
    inputs = [
        InputFile(url=s.url, uuid=uuid, entries=n)
        for (s, uuid, _), n in zip(found, sizes, strict=True)
    ]
    return limited, inputs


def data_hash(
    limited: Sequence[Source],
    inputs: Sequence[InputFile],
    tree: str | None,
    branches: Sequence[str],
    preprocessing_sha256: str | None,
) -> str:
    """The hash of what a spec is computed on.

    It covers the files' ROOT UUIDs and entry ranges (not their paths: the same
    files moved elsewhere hash the same), the tree, the branches and the
    preprocessing.
    """
    body = json.dumps(
        {
            "inputs": [
                [i.uuid, s.entry_start, i.entries] for i, s in zip(inputs, limited, strict=True)
            ],
            "tree": tree,
            "branches": sorted(branches),
            "preprocessing": preprocessing_sha256,
        },
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def build_spec(
    merged: dict[str, Accumulator], split: set[str], options: ScanOptions, *,
    tree: str | None, identifiers: list[str], derived: set[str],
) -> tuple[FeatureSpec, dict[str, int]]:  # fmt: skip
    """The spec from merged statistics, and the events each collection clips."""
    branches = []
    log_patterns = parse_patterns(options.log)
    logged = {n for p in log_patterns for n in matches(p, list(merged))}
    per_collection: dict[str, tuple[int, str]] = {}
    clipped: dict[str, int] = {}
    for name, acc in merged.items():
        stats = acc.value_stats()
        norm = normalize.choose(stats, options.normalization, log=name in logged, name=name)
        branch = BranchSpec(
            name=name, dtype=acc.dtype, kind="flat" if acc.kind == "flat" else "jagged",
            stats=stats, normalization=norm, derived=name in derived,
        )  # fmt: skip
        if branch.kind == "jagged":
            branch.lengths = LengthStats(counts=[int(c) for c in acc.lengths])
            branch.collection = name if name in split else _collection_key(name)
            override = next((v for p, v in options.lengths.items() if matches(p, [name])), None)
            if override is not None:
                branch.length, branch.length_policy = choose_length(override, branch.lengths, name)
            elif branch.collection in per_collection:
                branch.length, branch.length_policy = per_collection[branch.collection]
            else:
                branch.length, branch.length_policy = choose_length(
                    options.length, branch.lengths, name
                )
            per_collection.setdefault(branch.collection, (branch.length, branch.length_policy))
            clipped[branch.collection] = branch.lengths.clipped(branch.length)
        branches.append(branch)
    feature_spec = FeatureSpec(
        branches=branches, tree=tree, layout=options.layout, pad_value=options.pad_value,
        identifiers=identifiers, clip=options.clip,
    )  # fmt: skip
    return feature_spec, clipped


@dataclass
class ScanReport:
    """Counts a scan reports besides the spec."""

    events: int
    selected: int
    clipped: dict[str, int]


def scan(
    sources: Sequence[Source],
    selection: BranchSelection | None = None,
    *,
    tree: str | None = None,
    preprocessing: str | Path | None = None,
    options: ScanOptions | None = None,
    nevts: int = -1,
    step_size: int | str = "100 MB",
    workers: int = 1,
    scheduler: str | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[FeatureSpec, ScanReport]:
    """Scan ``sources`` and return the feature spec and what it found.

    Files are scanned one per task: ``workers`` > 1 on a local dask cluster of
    that many processes, or on the dask ``scheduler`` at that address
    (:func:`~mlaas4hep.parallel.run_tasks`). ``progress(done, total)`` is
    called as files finish.
    """
    selection = selection or BranchSelection()
    options = options or ScanOptions()
    if not sources:
        raise ConfigError("no sources to scan")
    loaded: Preprocessing | None = load_preprocessing(preprocessing) if preprocessing else None
    limited, inputs = identify_inputs(sources, tree, nevts)
    with EventStream(limited[:1], selection, tree=tree, prefetch=0) as probe:
        identifiers = probe.identifiers
    preprocessing_path = str(loaded.path) if loaded else None
    tasks = [s for s in limited if (s.entry_stop or 0) > s.entry_start]
    arguments = (selection, tree, preprocessing_path, step_size, seed)
    # in source order, so the merge does not depend on which file finished first
    results = run_tasks(
        scan_source, tasks, *arguments, scheduler=scheduler, workers=workers, progress=progress
    )
    rng = np.random.default_rng(seed)
    merged: dict[str, Accumulator] = {}
    split: set[str] = set()
    for result in results:
        split |= result.split
        for name, acc in result.accumulators.items():
            if name not in merged:
                merged[name] = acc
            elif (merged[name].kind, merged[name].dtype) != (acc.kind, acc.dtype):
                raise ConfigError(
                    f"branch {name!r} is {merged[name].dtype} in one file and {acc.dtype} in another"
                )
            else:
                merged[name].merge(acc, rng)
    derived = set().union(*(r.derived for r in results)) if results else set()
    spec, clipped = build_spec(
        merged, split, options, tree=tree, identifiers=identifiers, derived=derived
    )
    spec.preprocessing = loaded.describe() if loaded else None
    spec.inputs = inputs
    spec.data_hash = data_hash(
        limited, inputs, tree, spec.source_branches, loaded.sha256 if loaded else None
    )
    report = ScanReport(
        events=sum(r.events for r in results),
        selected=sum(r.selected for r in results),
        clipped=clipped,
    )
    return spec, report


def spec_from_events(
    events: ak.Array, options: ScanOptions | None = None, *, seed: int = 0
) -> FeatureSpec:
    """A feature spec computed from events already in memory (every field a feature)."""
    accumulators: dict[str, Accumulator] = {}
    split: set[str] = set()
    accumulate(events, events.fields, accumulators, split, np.random.default_rng(seed))
    spec, _ = build_spec(
        accumulators, split, options or ScanOptions(), tree=None, identifiers=[], derived=set()
    )
    return spec
