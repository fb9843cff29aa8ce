"""Read + vector-wise transform against raw uproot reading, in the same run.

Two workloads on a generated NanoAOD-like dataset (``--wide``: ~900 branches):

* **wide**: every numeric branch, jagged ones padded to their 0.95 length
  quantile, flat layout with mask and standard normalisation (~2000+ features);
* **small**: 5 flat + 8 jagged branches (jets to 10, muons to 3), ~64 features.

For each, events/s of ``uproot.iterate`` of the same branches (the reference)
and of ``EventStream`` + ``VectorTransform.flat`` (shuffle off, so the
transform cost is what is compared), each on one core (the process pinned to
CPU 0, one reader thread) and on all cores. Best of ``--repeat``.

    python benchmarks/transform.py [--events 25000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import uproot
from rich.console import Console
from rich.table import Table

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.transform.scan import ScanOptions, scan
from mlaas4hep.transform.spec import FeatureSpec
from mlaas4hep.transform.vector import VectorTransform

STEP = 10_000  # events per chunk for both readers
SMALL = {
    "flat": ["MET_pt", "MET_phi", "PV_npvs", "nJet", "nMuon"],
    "jagged": ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepB",
               "Muon_pt", "Muon_eta", "Muon_phi"],
}  # fmt: skip


def best_of(repeat: int, run: Callable[[], int]) -> float:
    """Events per second of the fastest of ``repeat`` runs."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        events = run()
        best = max(best, events / (time.perf_counter() - start))
    return best


def raw_uproot(files: list[str], branches: list[str]) -> int:
    events = 0
    for arrays in uproot.iterate(dict.fromkeys(files, "Events"), branches, step_size=STEP):
        events += len(arrays)
    return events


def ours(files: list[str], spec: FeatureSpec, threads: int) -> int:
    transform = VectorTransform(spec)
    selection = BranchSelection(include=spec.source_branches, identifiers=[])
    events = 0
    with EventStream(
        resolve_sources(files), selection, step_size=STEP, shuffle=False, threads=threads,
        prefetch=2 if threads > 1 else 0,
    ) as stream:  # fmt: skip
        for chunk in stream.iter_epoch(0):
            tensors = transform.flat(chunk.data, check=False)
            events += len(tensors.x)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=25_000, help="events per sample")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    args = parser.parse_args()

    folder = args.data / f"wide-{args.events}"
    if not (folder / "files.txt").exists():
        generate_dataset(folder, n_events=args.events, seed=11, wide=True)
    files = sorted(str(p.resolve()) for p in folder.glob("*.root"))
    sources = resolve_sources(files)

    wide, _ = scan(
        sources, BranchSelection(identifiers=[]), options=ScanOptions(length="q0.95"), workers=2
    )
    small, _ = scan(
        sources,
        BranchSelection(include=SMALL["flat"] + SMALL["jagged"], identifiers=[]),
        options=ScanOptions(lengths={"Jet_*": 10, "Muon_*": 3}),
    )
    cores = len(os.sched_getaffinity(0))
    table = Table(title=f"read + transform, {2 * args.events:,} events, best of {args.repeat}")
    for column in (
        "workload",
        "branches",
        "features",
        "cores",
        "uproot ev/s",
        "ours ev/s",
        "ratio",
    ):
        table.add_column(column, justify="left" if column == "workload" else "right")
    everything = os.sched_getaffinity(0)
    for name, spec in (("wide", wide), ("small", small)):
        for pinned in (True, False):
            os.sched_setaffinity(0, {min(everything)} if pinned else everything)
            threads = 1 if pinned else 4
            reference = best_of(args.repeat, lambda s=spec: raw_uproot(files, s.source_branches))
            rate = best_of(args.repeat, lambda s=spec, t=threads: ours(files, s, t))
            table.add_row(
                name,
                str(len(spec.source_branches)),
                f"{len(spec.columns()):,}",
                "1" if pinned else str(cores),
                f"{reference:,.0f}",
                f"{rate:,.0f}",
                f"{rate / reference:.2f}",
            )
    os.sched_setaffinity(0, everything)
    Console().print(table)


if __name__ == "__main__":
    main()
