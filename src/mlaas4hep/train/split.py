"""Train / validation / test splits by entry ranges within each source.

Every source's entries ``[start, stop)`` are cut into three consecutive ranges
in the given fractions: the same files and fractions always give the same
split, every split sees every file, and no event is in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from mlaas4hep.data.sources import Source
from mlaas4hep.errors import ConfigError

SPLITS = ("train", "validation", "test")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(train, validation, test)`` fractions: non-negative, summing to 1."""
    if len(fractions) != 3:
        raise ConfigError(f"split takes three fractions (train, validation, test), got {fractions}")
    train, validation, test = (float(f) for f in fractions)
    if min(train, validation, test) < 0 or abs(train + validation + test - 1) > 1e-6:
        raise ConfigError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    if train == 0:
        raise ConfigError("the train fraction of the split must be positive")
    return train, validation, test


def split_sources(sources: Sequence[Source], fractions: Sequence[float]) -> dict[str, list[Source]]:
    """Sources of each split (``train``, ``validation``, ``test``).

    ``sources`` must have a known ``entry_stop`` (see
    :func:`mlaas4hep.transform.scan.identify_inputs`). A split that gets no
    events of a source leaves that source out.
    """
    train, validation, _ = check_fractions(fractions)
    out: dict[str, list[Source]] = {name: [] for name in SPLITS}
    for source in sources:
        if source.entry_stop is None:
            raise ConfigError(f"{source.url}: the entry range must be known to split it")
        start, stop = source.entry_start, source.entry_stop
        size = stop - start
        edges = [
            start,
            start + round(size * train),
            start + round(size * (train + validation)),
            stop,
        ]
        for name, a, b in zip(SPLITS, edges, edges[1:], strict=False):
            if b > a:
                out[name].append(replace(source, entry_start=a, entry_stop=b))
    return out
