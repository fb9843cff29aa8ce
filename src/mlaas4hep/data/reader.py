"""Chunked, prefetched reading of many ROOT files: the :class:`EventStream`.

The stream opens every source once to learn its entries and check its
branches, plans each epoch (see :mod:`mlaas4hep.data.shuffle`), and reads the
planned segments in a background thread, the sources of one chunk in
parallel, so that I/O and decompression overlap with the consumer. At most
``prefetch`` chunks wait in memory, whatever the dataset size.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Self

import awkward as ak
import numpy as np
import uproot

from mlaas4hep.data.branches import BranchSelection, close_matches
from mlaas4hep.data.chunk import Chunk
from mlaas4hep.data.pruned_tree import listed_branch_names
from mlaas4hep.data.rootfile import (
    NO_RETRY,
    RetryPolicy,
    describe_exception,
    get_tree,
    is_remote,
    is_rntuple,
    open_root,
    release,
    with_retries,
)
from mlaas4hep.data.shuffle import (
    Balance,
    Segment,
    ShuffleBuffer,
    apportion,
    balance_index,
    epoch_rng,
    plan_epoch,
    split_units,
)
from mlaas4hep.data.sources import Source
from mlaas4hep.errors import ConfigError, DataError

log = logging.getLogger(__name__)

READ_BUFFER_CHUNKS = 8  # default read buffer, in chunks
SIZE_SAMPLE_EVENTS = 2000  # events read to learn the bytes per event of a dataset
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?B|B)?\s*$")
_UNITS = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "kiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


def parse_step(step: int | str) -> tuple[int | None, int | None]:
    """``(events, bytes)`` from a step size: an entry count or a size like ``"100 MB"``."""
    if isinstance(step, int) and not isinstance(step, bool):
        if step < 1:
            raise ConfigError(f"step size must be at least 1 entry, got {step}")
        return step, None
    text = str(step)
    found = _SIZE.match(text)
    if not found:
        raise ConfigError(f"step size {text!r} is neither an entry count nor a size like '100 MB'")
    number, unit = found.groups()
    if unit is None:
        return parse_step(int(float(number)))
    nbytes = int(float(number) * _UNITS[unit])
    if nbytes < 1:
        raise ConfigError(f"step size {text!r} is too small")
    return None, nbytes


@dataclass
class OpenSource:
    """What opening a source told: its entry range, branches and cluster boundaries."""

    index: int
    source: Source
    start: int
    stop: int
    branches: list[str]
    clusters: list[int]
    listed: list[str]  # for hints: every branch name, also those whose metadata was not read

    @property
    def entries(self) -> int:
        return self.stop - self.start


@dataclass
class StreamReport:
    """What one pass over the stream did: counts, bytes, time and skipped files."""

    events: int = 0
    nbytes: int = 0
    chunks: int = 0
    seconds: float = 0.0
    per_source: dict[int, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def _visible_fields(tree: Any) -> list[str]:
    """Branch names of a TTree, or the user-facing top-level fields of an RNTuple."""
    if is_rntuple(tree):
        # The RNTuple importer adds "_collectionN" records that repeat the
        # projected fields ("Muon_pt" and "_collection0.Muon_pt"): hide them.
        return [name for name in tree.keys(recursive=False) if not name.startswith("_")]
    names = []
    for name, branch in tree.items(recursive=True):
        interpretation = branch.interpretation
        if isinstance(interpretation, uproot.interpretation.identify.UnknownInterpretation):
            continue
        names.append(name)
    return names


def _cluster_edges(tree: Any) -> list[int]:
    """Entry numbers where a tree's clusters begin (and its end): the cheap read units."""
    if is_rntuple(tree):
        firsts = [int(c.num_first_entry) for c in tree.cluster_summaries]
        return [*firsts, int(tree.num_entries)]
    return [int(e) for e in tree.common_entry_offsets()]


class EventStream:
    """Iterate over a dataset of ROOT files in chunks of mixed, shuffled events.

    Parameters
    ----------
    sources
        From :func:`mlaas4hep.data.sources.resolve_sources`.
    branches
        Which branches are features and which are identifiers.
    tree
        Tree (TTree or RNTuple) name; ``None`` picks the file's only tree (or
        ``Events``). A source's own ``tree`` wins.
    step_size
        Events per chunk, or a size such as ``"100 MB"`` (in memory,
        uncompressed, as in ``uproot.iterate``).
    nevts
        Total events per epoch, shared among the sources in proportion (-1: all).
    interleave
        Build every chunk from all sources (default) rather than one file
        after the other.
    shares
        Optional fraction of each chunk per source, or per label as
        ``{label: fraction}``; default: in proportion to the sources' sizes.
    shuffle
        Shuffle the piece order and the events (default on).
    shuffle_buffer
        Events in the shuffle buffer (default: one chunk).
    shuffle_events
        With ``shuffle``, also permute the events (default). ``False`` shuffles
        only the order of the pieces read, for callers that permute the rows of
        their dense tensors instead, which is cheaper than reordering jagged
        arrays.
    balance
        ``"undersample"``, ``"oversample"`` or ``{label: fraction}``.
    seed
        Seed of every random choice; epochs derive their own streams from it.
    prefetch
        Chunks read ahead in the background (0: read in the consumer's thread).
    threads
        Sources of one chunk read in parallel.
    retry
        Retries, backoff and timeout for remote reads.
    skip_bad_files
        Report and skip files that cannot be read instead of failing.
    max_open_files
        Files kept open at once (least recently used ones are closed).
    read_buffer
        Events kept decompressed across chunks, shared by the sources
        (default: eight chunks). Each source reads whole clusters (cut to its
        share of this buffer: all of it when files are read one after the
        other) and serves its pieces from them, so a cluster is decompressed
        once however finely the sources are mixed.

    Memory is bounded by about ``prefetch + 1`` chunks, the shuffle buffer and
    the read buffer, whatever the dataset size.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        branches: BranchSelection | None = None,
        *,
        tree: str | None = None,
        step_size: int | str = "100 MB",
        nevts: int = -1,
        interleave: bool = True,
        shares: Sequence[float] | Mapping[float, float] | None = None,
        shuffle: bool = True,
        shuffle_buffer: int | None = None,
        shuffle_events: bool = True,
        balance: Balance = None,
        seed: int = 0,
        prefetch: int = 2,
        threads: int = 4,
        retry: RetryPolicy | None = None,
        skip_bad_files: bool = False,
        max_open_files: int = 128,
        read_buffer: int | None = None,
    ) -> None:
        if not sources:
            raise ConfigError("no sources to read")
        if nevts < -1 or nevts == 0:
            raise ConfigError(f"nevts must be -1 (all) or a positive count, got {nevts}")
        self.sources = list(sources)
        self.selection = branches or BranchSelection()
        self.tree_name = tree
        self.nevts = nevts
        self.interleave = interleave
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_events = shuffle and shuffle_events
        self.balance = balance
        self.seed = seed
        self.prefetch = max(0, prefetch)
        self.threads = max(1, threads)
        self.retry = retry or RetryPolicy()
        self.skip_bad_files = skip_bad_files
        self.max_open_files = max_open_files
        self.skipped: dict[str, str] = {}
        self.epoch = 0
        self._open: OrderedDict[int, Any] = OrderedDict()
        # Baskets of one read are decompressed in parallel (zlib, lz4, zstd
        # release the GIL): this is what uses the cores when a chunk comes
        # from fewer files than there are cores.
        self._decompression = (
            ThreadPoolExecutor(self.threads, "mlaas4hep-decompress") if self.threads > 1 else None
        )
        self._lock = threading.Lock()
        self._events_step, self._bytes_step = parse_step(step_size)

        self._opened = self._open_all()
        first = self._opened[0]
        self.features, self.identifiers = self.selection.resolve(
            first.branches, where=first.source.url, hints=first.listed
        )
        for opened in self._opened[1:]:
            self._check_branches(opened)
        self.chunk_events = self._events_step or self._estimate_chunk_events(first)
        self._shares = self._source_shares(shares)
        self.read_buffer = read_buffer or READ_BUFFER_CHUNKS * self.chunk_events
        self._units = self._read_units()
        self._buffers: dict[int, tuple[int, int, ak.Array]] = {}

    # -- opening -------------------------------------------------------------

    def _policy(self, url: str) -> RetryPolicy:
        return self.retry if is_remote(url) else NO_RETRY

    def _open_tree(self, index: int, *, retried: bool = True) -> Any:
        """The open tree of source ``index``, reopened if it was evicted or broke.

        ``retried=False`` opens without retries of its own, for callers that
        retry the whole read.
        """
        with self._lock:
            if index in self._open:
                self._open.move_to_end(index)
                return self._open[index]
        source = self.sources[index]
        policy = self._policy(source.url) if retried else NO_RETRY
        directory = open_root(source.url, policy=policy)
        # Only the selected branches' metadata is read, when the selection names them.
        choose = self.selection.candidates if self.selection.narrows else None
        tree = get_tree(directory, source.tree or self.tree_name, path=source.url, branches=choose)
        with self._lock:
            self._open[index] = tree
            evicted = []
            while len(self._open) > self.max_open_files:
                evicted.append(self._open.popitem(last=False)[1])
        for old in evicted:
            release(old.file)
        return tree

    def _forget(self, index: int) -> None:
        with self._lock:
            tree = self._open.pop(index, None)
        if tree is not None:
            release(tree.file)

    def _open_one(self, index: int) -> OpenSource | None:
        source = self.sources[index]
        try:
            tree = self._open_tree(index)
            try:
                entries = int(tree.num_entries)
                fields = _visible_fields(tree)
                listed = fields
                if not is_rntuple(tree):
                    listed = list(dict.fromkeys([*listed_branch_names(tree), *fields]))
                clusters = _cluster_edges(tree)
            except Exception as exc:
                raise DataError(
                    f"cannot read the layout of {source.url}: {describe_exception(exc)}",
                    path=source.url,
                ) from exc
            stop = entries if source.entry_stop is None else min(source.entry_stop, entries)
            start = min(max(0, source.entry_start), stop)
            return OpenSource(index, source, start, stop, fields, clusters, listed)
        except DataError as exc:
            if not self.skip_bad_files:
                raise
            self._skip(source.url, str(exc))
            return None

    def _open_all(self) -> list[OpenSource]:
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            opened = [o for o in pool.map(self._open_one, range(len(self.sources))) if o]
        if not opened:
            raise DataError("no readable source: " + "; ".join(self.skipped.values()))
        return opened

    def _skip(self, url: str, reason: str) -> None:
        self.skipped[url] = reason
        log.warning("skipping %s: %s", url, reason)

    def _check_branches(self, opened: OpenSource) -> None:
        have = set(opened.branches)
        for name in [*self.features, *self.identifiers]:
            if name not in have:
                raise DataError(
                    f"branch {name!r} is missing in {opened.source.url} "
                    f"(present in {self._opened[0].source.url})"
                    f"{close_matches(name, opened.listed)}",
                    path=opened.source.url,
                )

    # -- planning ------------------------------------------------------------

    def _estimate_chunk_events(self, first: OpenSource) -> int:
        """Events per chunk for a step given in bytes, from the size of the data in memory.

        A TTree's branches record their uncompressed size, which is close to
        the in-memory size; elsewhere (RNTuple) a sample of events is read.
        """
        assert self._bytes_step is not None
        if first.entries == 0:
            return 1
        tree = self._open_tree(first.index)
        total = tree.num_entries
        try:
            recorded = sum(tree[n].uncompressed_bytes for n in [*self.features, *self.identifiers])
            per_event = recorded / max(total, 1)
        except (AttributeError, KeyError, TypeError):
            sample = min(first.entries, SIZE_SAMPLE_EVENTS)
            arrays = self._read_entries(first.index, first.start, first.start + sample)
            per_event = arrays.nbytes / sample
        return max(1, int(self._bytes_step / max(1.0, per_event)))

    def _source_shares(
        self, shares: Sequence[float] | Mapping[float, float] | None
    ) -> list[float] | None:
        if shares is None:
            return None
        if isinstance(shares, Mapping):
            by_label = {float(k): float(v) for k, v in shares.items()}
            sizes_per_label: dict[float, int] = {}
            for o in self._opened:
                if o.source.label is None:
                    raise ConfigError(f"shares per label need a label on {o.source.url}")
                sizes_per_label[o.source.label] = sizes_per_label.get(o.source.label, 0) + o.entries
            missing = set(sizes_per_label) - set(by_label)
            if missing:
                raise ConfigError(f"no share given for labels {sorted(missing)}")
            result = [0.0] * len(self.sources)
            for o in self._opened:
                label = float(o.source.label)  # type: ignore[arg-type]
                result[o.index] = by_label[label] * o.entries / max(1, sizes_per_label[label])
            return result
        if len(shares) != len(self.sources):
            raise ConfigError(f"{len(shares)} shares given for {len(self.sources)} sources")
        return [float(s) for s in shares]

    def _read_units(self) -> list[np.ndarray]:
        """Per source, the boundaries of its read units over the entries to read."""
        ranges = [(0, 0)] * len(self.sources)
        sizes = [0] * len(self.sources)
        for o in self._opened:
            ranges[o.index] = (o.start, o.stop)
            sizes[o.index] = o.entries
        if self.nevts > 0 and self.nevts < sum(sizes):
            weights = sizes if self._shares is None else self._shares
            for i, n in enumerate(apportion(self.nevts, weights)):
                start, stop = ranges[i]
                ranges[i] = (start, min(stop, start + n))
        sharing = len(self._opened) if self.interleave else 1
        max_unit = max(1, self.read_buffer // sharing)
        clusters = {o.index: o.clusters for o in self._opened}
        return [
            split_units(start, stop, clusters.get(i, []), max_unit)
            for i, (start, stop) in enumerate(ranges)
        ]

    @property
    def total_events(self) -> int:
        """Events one epoch reads (before balancing)."""
        return sum(len(s) for chunk in self.plan(0) for s in chunk)

    def plan(self, epoch: int, shard: tuple[int, int] | None = None) -> list[list[Segment]]:
        """The segments each chunk of ``epoch`` reads.

        With ``shard=(index, count)`` only every ``count``-th chunk, starting at
        ``index``: the ``count`` shards of one epoch read disjoint entries that
        together are the whole epoch (same seed, same plan in every process).
        """
        rng = epoch_rng(self.seed, epoch) if self.shuffle else None
        chunks = plan_epoch(
            self._units,
            self.chunk_events,
            interleave=self.interleave,
            shares=self._shares,
            rng=rng,
        )
        if shard is None:
            return chunks
        index, count = shard
        if not 0 <= index < count:
            raise ConfigError(f"shard index must be within [0, {count}), got {index}")
        return chunks[index::count]

    # -- reading -------------------------------------------------------------

    def _read_entries(self, index: int, start: int, stop: int) -> ak.Array:
        """Entries ``[start, stop)`` of source ``index`` (retried as configured)."""
        source = self.sources[index]
        names = [*self.features, *self.identifiers]

        def read() -> Any:
            tree = self._open_tree(index, retried=False)
            try:
                # Branch names, not a filter: a filter visits every branch of the tree,
                # ~20 ms per read on a 900-branch NanoAOD file.
                return tree.arrays(
                    names,
                    entry_start=start,
                    entry_stop=stop,
                    array_cache=None,
                    decompression_executor=self._decompression,
                )
            except Exception:
                self._forget(index)  # a broken connection is reopened on retry
                raise

        arrays = with_retries(
            read,
            what=f"read entries {start}-{stop} of",
            path=source.url,
            policy=self._policy(source.url),
        )
        if len(arrays) != stop - start:
            raise DataError(
                f"read {len(arrays)} entries instead of {stop - start} from {source.url}",
                path=source.url,
            )
        return arrays[names]

    def _read_range(self, index: int, start: int, stop: int) -> list[ak.Array]:
        """Entries ``[start, stop)`` served from whole read units, each read once."""
        units = self._units[index]
        parts = []
        while start < stop:
            unit = int(np.searchsorted(units, start, side="right")) - 1
            first, last = int(units[unit]), int(units[unit + 1])
            buffered = self._buffers.get(index)
            if buffered is None or buffered[:2] != (first, last):
                buffered = (first, last, self._read_entries(index, first, last))
                self._buffers[index] = buffered
            end = min(stop, last)
            parts.append(buffered[2][start - first : end - first])
            start = end
        return parts

    def _read_segment(self, segment: Segment) -> Chunk:
        source = self.sources[segment.source]
        parts = [p for a, b in segment.ranges for p in self._read_range(segment.source, a, b)]
        arrays = parts[0] if len(parts) == 1 else ak.concatenate(parts)
        n = len(segment)
        label = np.nan if source.label is None else source.label
        return Chunk(
            arrays=arrays,
            features=self.features,
            identifiers=self.identifiers,
            label=np.full(n, label, dtype=np.float64),
            weight=np.full(n, source.weight, dtype=np.float64),
            source=np.full(n, segment.source, dtype=np.int32),
            entry=np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in segment.ranges]),
        )

    def _read_chunk(self, segments: list[Segment], pool: ThreadPoolExecutor) -> Chunk | None:
        live = [s for s in segments if self.sources[s.source].url not in self.skipped]
        futures = [pool.submit(self._read_segment, s) for s in live]
        parts = []
        for segment, future in zip(live, futures, strict=True):
            try:
                parts.append(future.result())
            except DataError as exc:
                if not self.skip_bad_files:
                    raise
                self._skip(self.sources[segment.source].url, str(exc))
        return Chunk.concatenate(parts) if parts else None

    def _raw_chunks(self, plan: list[list[Segment]]) -> Iterator[Chunk]:
        """Chunks as planned, read ahead by a background thread when prefetching."""
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            if self.prefetch == 0:
                for segments in plan:
                    chunk = self._read_chunk(segments, pool)
                    if chunk is not None:
                        yield chunk
                return
            ready: queue.Queue[Chunk | BaseException | None] = queue.Queue(self.prefetch)
            stop = threading.Event()

            def produce() -> None:
                try:
                    for segments in plan:
                        if stop.is_set():
                            return
                        chunk = self._read_chunk(segments, pool)
                        if chunk is not None:
                            ready.put(chunk)
                    ready.put(None)
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                    ready.put(exc)

            worker = threading.Thread(target=produce, name="mlaas4hep-prefetch", daemon=True)
            worker.start()
            try:
                while (item := ready.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                stop.set()
                while worker.is_alive():  # unblock a producer waiting on a full queue
                    with contextlib.suppress(queue.Empty):
                        ready.get(timeout=0.05)
                worker.join()

    def iter_epoch(
        self,
        epoch: int,
        report: StreamReport | None = None,
        *,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Chunk]:
        """Yield the chunks of one epoch (mixed, shuffled and balanced as configured).

        ``shard=(index, count)`` reads only that shard's chunks (see :meth:`plan`),
        as data-parallel training processes and loader workers do.
        """
        rng = epoch_rng(self.seed, epoch, *(shard[:1] if shard else ()))
        buffer = (
            ShuffleBuffer(self.shuffle_buffer or self.chunk_events, self.chunk_events, rng)
            if self.shuffle_events
            else None
        )
        report = report if report is not None else StreamReport()
        started = time.perf_counter()

        def finish(chunk: Chunk) -> Chunk:
            if self.balance is not None:
                chunk = chunk.take(balance_index(chunk.label, self.balance, rng))
                if self.shuffle_events:
                    chunk = chunk.take(rng.permutation(len(chunk)))
            report.events += len(chunk)
            report.chunks += 1
            report.nbytes += chunk.nbytes
            counts = np.bincount(chunk.source, minlength=len(self.sources))
            for i in np.flatnonzero(counts):
                report.per_source[int(i)] = report.per_source.get(int(i), 0) + int(counts[i])
            report.seconds = time.perf_counter() - started
            return chunk

        try:
            for raw in self._raw_chunks(self.plan(epoch, shard)):
                for chunk in buffer.push(raw) if buffer else [raw]:
                    yield finish(chunk)
            if buffer:
                for chunk in buffer.flush():
                    yield finish(chunk)
        finally:
            self._buffers.clear()
        report.skipped = dict(self.skipped)
        report.seconds = time.perf_counter() - started

    def __iter__(self) -> Iterator[Chunk]:
        """Iterate over the next epoch (each ``iter`` call starts a new one)."""
        epoch = self.epoch
        self.epoch += 1
        return self.iter_epoch(epoch)

    def close(self) -> None:
        """Close every open file and stop the decompression threads."""
        for index in list(self._open):
            self._forget(index)
        if self._decompression is not None:
            self._decompression.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
