"""Embedded demo data: a toy NanoAOD-like signal (ttbar) / background (W+jets) generator.

Used by ``mlaas4hep generate``, the demo, the tests and the benchmarks, so that
everything runs on a fresh machine without downloading data::

    from mlaas4hep.datasets import generate_dataset

    ds = generate_dataset("demo-data", n_events=10_000, n_files=2, fmt="rntuple")
    ds.files_txt, ds.labels_txt  # feed these to the data layer

``wide=True`` writes ~900 branches with real NanoAOD names and dtypes instead of 35
(:data:`WIDE_BRANCHES`), for benchmarks that need NanoAOD's width.
"""

from __future__ import annotations

from mlaas4hep.datasets.nanoaod import (
    BRANCHES,
    COLLECTIONS,
    COMPRESSIONS,
    FORMATS,
    LABELS,
    SAMPLES,
    WIDE_BRANCHES,
    WIDE_COLLECTIONS,
    EventArrays,
    GeneratedDataset,
    generate_dataset,
    generate_events,
    parse_compression,
    write_events,
)

__all__ = [
    "BRANCHES",
    "COLLECTIONS",
    "COMPRESSIONS",
    "FORMATS",
    "LABELS",
    "SAMPLES",
    "WIDE_BRANCHES",
    "WIDE_COLLECTIONS",
    "EventArrays",
    "GeneratedDataset",
    "generate_dataset",
    "generate_events",
    "parse_compression",
    "write_events",
]
