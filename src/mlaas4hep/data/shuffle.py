"""Mixing sources and shuffling events: the epoch plan, the shuffle buffer, class balancing.

All randomness comes from a :class:`numpy.random.Generator` seeded with
``(seed, epoch)``: the same seed gives the same order, a new epoch a new one.

Interleaving splits every source into as many pieces as the epoch has chunks
and builds chunk ``k`` from one piece of *every* source, so each chunk mixes
the sources in proportion to their sizes (or to chosen shares) and each event
is read exactly once per epoch. Shuffling permutes the order in which each
source's read units (its clusters) are visited, then the events inside each
chunk, optionally through a larger shuffle buffer. Pieces follow the permuted
units, so every unit is decompressed once per epoch however small the pieces.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mlaas4hep.data.chunk import Chunk
from mlaas4hep.errors import ConfigError

BALANCE_MODES = ("undersample", "oversample")
Balance = str | Mapping[float, float] | None


@dataclass(frozen=True)
class Segment:
    """Some entries of source number ``source``: the ``[start, stop)`` ``ranges``."""

    source: int
    ranges: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return sum(stop - start for start, stop in self.ranges)


def epoch_rng(seed: int, epoch: int, *more: int) -> np.random.Generator:
    """The random generator of one epoch (and shard): same keys, same stream."""
    return np.random.default_rng([seed, epoch, *more])


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder)."""
    weight_sum = float(sum(weights))
    if total <= 0 or weight_sum <= 0:
        return [0] * len(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def split_units(start: int, stop: int, edges: Sequence[int], max_unit: int) -> np.ndarray:
    """Read-unit boundaries of ``[start, stop)``: cluster ``edges`` cut to at most ``max_unit``."""
    inner = [e for e in edges if start < e < stop]
    bounds = [start, *inner, stop]
    out = [start]
    for a, b in itertools.pairwise(bounds):
        pieces = max(1, math.ceil((b - a) / max(1, max_unit)))
        out.extend(int(x) for x in (a + (np.arange(1, pieces + 1) * (b - a)) // pieces))
    return np.asarray(out, dtype=np.int64)


class _Walk:
    """A source's entries seen as its read units in a chosen order."""

    def __init__(self, units: np.ndarray, order: np.ndarray) -> None:
        self.starts = units[:-1][order]
        self.sizes = np.diff(units)[order]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def ranges(self, a: int, b: int) -> tuple[tuple[int, int], ...]:
        """Entry ranges of the walk's positions ``[a, b)``."""
        out: list[tuple[int, int]] = []
        unit = int(np.searchsorted(self.offsets, a, side="right")) - 1
        while a < b:
            take = min(b, int(self.offsets[unit + 1])) - a
            first = int(self.starts[unit]) + a - int(self.offsets[unit])
            if out and out[-1][1] == first:  # units that follow each other on disk
                out[-1] = (out[-1][0], first + take)
            else:
                out.append((first, first + take))
            a += take
            unit += 1
        return tuple(out)


def plan_epoch(
    units: Sequence[np.ndarray],
    chunk_events: int,
    *,
    interleave: bool = True,
    shares: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
) -> list[list[Segment]]:
    """The chunks of one epoch, each a list of source segments.

    ``units`` holds, per source, the boundaries of its read units (clusters):
    from the first entry to read to the end. Shuffling permutes the units of
    every source (and, without interleaving, the file order); pieces are then
    cut along that walk, so a unit is decompressed once however small the
    pieces. With ``interleave`` every chunk takes one piece of every source;
    ``shares`` (fractions of a chunk per source, default proportional to
    size) change the mixture, and the epoch then ends when the first source
    runs out. Without ``interleave`` the sources are read one after the other
    in chunks of ``chunk_events`` (the ``uproot.iterate`` order when not
    shuffled).
    """
    if chunk_events < 1:
        raise ConfigError(f"chunk size must be at least 1 event, got {chunk_events}")
    walks = {}
    for i, edges in enumerate(units):
        if len(edges) > 1 and edges[-1] > edges[0]:
            n_units = len(edges) - 1
            order = rng.permutation(n_units) if rng is not None else np.arange(n_units)
            walks[i] = _Walk(np.asarray(edges, dtype=np.int64), order)
    if not walks:
        return []
    if not interleave:
        files = [int(i) for i in rng.permutation(list(walks))] if rng is not None else list(walks)
        return [
            [Segment(i, walks[i].ranges(a, min(a + chunk_events, walks[i].size)))]
            for i in files
            for a in range(0, walks[i].size, chunk_events)
        ]

    if shares is None:
        n_chunks = max(1, math.ceil(sum(w.size for w in walks.values()) / chunk_events))
        pieces = dict.fromkeys(walks, n_chunks)
    else:
        share_sum = sum(shares[i] for i in walks)
        if share_sum <= 0:
            raise ConfigError("source shares must add up to more than zero")
        per_chunk = {i: chunk_events * shares[i] / share_sum for i in walks if shares[i] > 0}
        pieces = {i: max(1, round(walks[i].size / per_chunk[i])) for i in per_chunk}
        n_chunks = min(pieces.values())
    plan = []
    for k in range(n_chunks):
        segments = []
        for i, p in pieces.items():
            size = walks[i].size
            a, b = k * size // p, (k + 1) * size // p
            if b > a:
                segments.append(Segment(i, walks[i].ranges(a, b)))
        plan.append(segments)
    return plan


def balance_index(labels: np.ndarray, balance: Balance, rng: np.random.Generator) -> np.ndarray:
    """Indices that resample ``labels`` to balanced classes.

    ``"undersample"`` keeps as many events of each class as the rarest has;
    ``"oversample"`` repeats events of the rarer classes (drawn with
    replacement) up to the most common count; a mapping ``{label: fraction}``
    keeps the largest sample with those class fractions. Events without a
    label (NaN) are an error: balancing needs labels.
    """
    if np.isnan(labels).any():
        raise ConfigError("class balancing needs a label on every source")
    classes, counts = np.unique(labels, return_counts=True)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    picked: list[np.ndarray] = []
    if balance == "undersample":
        n = int(counts.min())
        picked = [rng.choice(members[c], n, replace=False) for c in classes]
    elif balance == "oversample":
        n = int(counts.max())
        picked = [
            np.concatenate([members[c], rng.choice(members[c], n - len(members[c]))])
            for c in classes
        ]
    elif isinstance(balance, Mapping):
        fractions = {float(k): float(v) for k, v in balance.items()}
        unknown = set(fractions) - {float(c) for c in classes}
        if any(v < 0 for v in fractions.values()) or sum(fractions.values()) <= 0:
            raise ConfigError(f"class fractions must be non-negative, got {fractions}")
        total = min(
            (len(members[c]) / fractions[float(c)] for c in classes if fractions.get(float(c))),
            default=0.0,
        )
        if unknown and total == 0.0:
            raise ConfigError(f"no events with labels {sorted(unknown)} to balance")
        for c in classes:
            n = min(len(members[c]), round(total * fractions.get(float(c), 0.0)))
            picked.append(rng.choice(members[c], n, replace=False))
    else:
        raise ConfigError(
            f"balance must be one of {', '.join(BALANCE_MODES)} or a {{label: fraction}} "
            f"mapping, got {balance!r}"
        )
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)


class ShuffleBuffer:
    """Event-level shuffle across chunk boundaries with bounded memory.

    Holds up to ``size`` events; once full, it emits a random ``out_events``
    of them and keeps the rest, so each event is mixed with ``size`` others.
    With ``size <= out_events`` it simply permutes each chunk.
    """

    def __init__(self, size: int, out_events: int, rng: np.random.Generator) -> None:
        self.size = max(size, out_events)
        self.out_events = out_events
        self.rng = rng
        self._parts: list[Chunk] = []
        self._count = 0

    def push(self, chunk: Chunk) -> Iterator[Chunk]:
        """Add a chunk; yield the chunks that are ready."""
        if self.size == self.out_events and not self._parts:
            yield chunk.take(self.rng.permutation(len(chunk)))
            return
        self._parts.append(chunk)
        self._count += len(chunk)
        while self._count >= self.size:
            merged = Chunk.concatenate(self._parts)
            order = self.rng.permutation(len(merged))
            yield merged.take(order[: self.out_events])
            rest = merged.take(order[self.out_events :])
            self._parts = [rest] if len(rest) else []
            self._count = len(rest)

    def flush(self) -> Iterator[Chunk]:
        """Yield what is left at the end of an epoch."""
        if not self._parts:
            return
        merged = Chunk.concatenate(self._parts)
        self._parts, self._count = [], 0
        order = self.rng.permutation(len(merged))
        for start in range(0, len(merged), self.out_events):
            yield merged.take(order[start : start + self.out_events])
