"""Small ROOT files with known content, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot


def write_indexed(
    path: Path, n: int, first_event: int = 0, *, tree: str = "Events", basket: int = 500
) -> Path:
    """A TTree whose every value is derived from its ``event`` number.

    ``event`` = first_event + entry; ``nX`` = event % 4; ``X_val[j]`` =
    10 * event + j; ``flat`` = event / 2; ``run`` = 1. Any event read back can
    thus be checked against its own number. Written in clusters of ``basket``
    entries.
    """
    event = np.arange(first_event, first_event + n, dtype=np.uint64)
    counts = (event % 4).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    local = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
    values = 10 * np.repeat(event, counts).astype(np.int64) + local
    with uproot.recreate(path) as out:
        out.mktree(
            tree,
            {"run": np.int32, "event": np.uint64, "flat": np.float64, "X_val": "var * int64"},
            counter_name=lambda _: "nX",
        )
        jagged = ak.unflatten(values, counts)
        for a in range(0, n, basket):
            b = min(n, a + basket)
            out[tree].extend(
                {
                    "run": np.ones(b - a, dtype=np.int32),
                    "event": event[a:b],
                    "flat": event[a:b] / 2.0,
                    "X_val": jagged[a:b],
                }
            )
    return path


def check_consistent(arrays: ak.Array) -> None:
    """Assert that every value of a chunk of :func:`write_indexed` events matches its event."""
    event = np.asarray(arrays["event"]).astype(np.int64)
    assert np.array_equal(np.asarray(arrays["flat"]), event / 2.0)
    assert np.array_equal(np.asarray(arrays["nX"]), event % 4)
    x = arrays["X_val"]
    expected = 10 * event[:, None] + ak.local_index(x)
    assert ak.all(x == expected)
