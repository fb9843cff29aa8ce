"""Mixing sources and shuffling events: the epoch plan, the shuffle buffer, class balancing.

All randomness comes from a :class:`numpy.random.Generator` seeded with
``(seed, epoch)``: the same seed gives the same order, a new epoch a new one.

Interleaving splits every source into as many contiguous pieces as the epoch
has chunks and builds chunk ``k`` from one piece of *every* source, so each
chunk mixes the sources in proportion to their sizes (or to chosen shares) and
each event is read exactly once per epoch. Shuffling permutes which piece of a
source goes into which chunk (a random file order at piece granularity), then
the events inside each chunk, optionally through a larger shuffle buffer.
"""

from __future__ import annotations

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
    """Entries ``[start, stop)`` of source number ``source``."""

    source: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The random generator of one epoch: same seed and epoch, same stream."""
    return np.random.default_rng([seed, epoch])


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


def _boundaries(start: int, size: int, pieces: int) -> np.ndarray:
    return start + (np.arange(pieces + 1, dtype=np.int64) * size) // pieces


def plan_epoch(
    ranges: Sequence[tuple[int, int]],
    chunk_events: int,
    *,
    interleave: bool = True,
    shares: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
) -> list[list[Segment]]:
    """The chunks of one epoch, each a list of source segments.

    ``ranges`` holds each source's ``(start, stop)`` entries. With
    ``interleave`` every chunk takes one piece of every source; ``shares``
    (fractions of a chunk per source, default proportional to size) change the
    mixture, and the epoch then ends when the first source runs out. Without
    ``interleave`` the sources are read one after the other in chunks of
    ``chunk_events`` (the plain ``uproot.iterate`` order). ``rng`` shuffles the
    piece order (or the file order), ``None`` keeps the natural order.
    """
    if chunk_events < 1:
        raise ConfigError(f"chunk size must be at least 1 event, got {chunk_events}")
    sizes = [max(0, stop - start) for start, stop in ranges]
    live = [i for i, size in enumerate(sizes) if size > 0]
    if not live:
        return []
    if not interleave:
        order = list(rng.permutation(live)) if rng is not None else live
        chunks = []
        for i in order:
            start = ranges[i][0]
            edges = range(start, start + sizes[i], chunk_events)
            chunks.extend(
                [Segment(int(i), a, min(a + chunk_events, start + sizes[i]))] for a in edges
            )
        return chunks

    total = sum(sizes)
    if shares is None:
        n_chunks = max(1, math.ceil(total / chunk_events))
        pieces = dict.fromkeys(live, n_chunks)
    else:
        share_sum = sum(shares[i] for i in live)
        if share_sum <= 0:
            raise ConfigError("source shares must add up to more than zero")
        per_chunk = {i: chunk_events * shares[i] / share_sum for i in live if shares[i] > 0}
        pieces = {i: max(1, round(sizes[i] / per_chunk[i])) for i in per_chunk}
        n_chunks = min(pieces.values())
    order = {
        i: (rng.permutation(p)[:n_chunks] if rng is not None else np.arange(n_chunks))
        for i, p in pieces.items()
    }
    bounds = {i: _boundaries(ranges[i][0], sizes[i], p) for i, p in pieces.items()}
    plan = []
    for k in range(n_chunks):
        segments = []
        for i in pieces:
            j = int(order[i][k])
            a, b = int(bounds[i][j]), int(bounds[i][j + 1])
            if b > a:
                segments.append(Segment(i, a, b))
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
