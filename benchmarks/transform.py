"""Read + vector-wise transform against raw uproot reading, in the same run.

Two workloads on a generated NanoAOD-like dataset (``wide=True``: ~900 branches):

* **wide**: every numeric branch, jagged ones padded to their 0.95 length
  quantile, flat layout with mask and standard normalisation (~2000+ features);
* **small**: 5 flat + 8 jagged branches (jets to 10, muons to 3), 64 features.

For each, events/s of uproot reading the same branches (``TTree.iterate``, the
reference) and of ``EventStream`` + ``VectorTransform.flat`` (mixing and
shuffling off, files in order as uproot reads them, so the transform cost is
what is compared; ``benchmarks/streaming.py`` measures mixing), with the step
``uproot.iterate`` uses by default (100 MB, as an entry count), on one core
(the process pinned to CPU 0, one reader thread) and on all cores. Files are
opened before the clock starts, for both: opening a ~900-branch file costs
~0.2 s, a fixed cost that would otherwise dominate; the rates are steady-state
throughput. Best of ``--repeat``.

    python benchmarks/transform.py [--events 50000] [--repeat 3] [--compression lz4]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import uproot
from rich.console import Console
from rich.table import Table

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.transform.scan import ScanOptions, scan
from mlaas4hep.transform.vector import VectorTransform

STEP = "100 MB"  # uproot.iterate's default, turned into one entry count for both readers
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


def raw_uproot(trees: list[Any], branches: list[str], step: int) -> int:
    events = 0
    for tree in trees:
        for arrays in tree.iterate(branches, step_size=step):
            events += len(arrays)
    return events


def ours(stream: EventStream, transform: VectorTransform) -> int:
    events = 0
    for chunk in stream.iter_epoch(0):
        events += len(transform.flat(chunk.data, check=False).x)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per sample")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument("--compression", default="zlib", help="of the generated files")
    args = parser.parse_args()

    suffix = "" if args.compression == "zlib" else f"-{args.compression.replace(':', '')}"
    folder = args.data / f"wide-{args.events}{suffix}"
    if not (folder / "files.txt").exists():
        generate_dataset(
            folder, n_events=args.events, seed=11, wide=True, compression=args.compression
        )
    files = sorted(str(p.resolve()) for p in folder.glob("*.root"))
    sources = resolve_sources(files)

    wide, _ = scan(
        sources,
        BranchSelection(identifiers=[]),
        options=ScanOptions(length="q0.95"),
        nevts=20_000,
        workers=2,
    )
    small, _ = scan(
        sources,
        BranchSelection(include=SMALL["flat"] + SMALL["jagged"], identifiers=[]),
        options=ScanOptions(lengths={"Jet_*": 10, "Muon_*": 3}),
    )
    everything = os.sched_getaffinity(0)
    title = (
        f"read + transform, {2 * args.events:,} events ({args.compression}), best of {args.repeat}"
    )
    table = Table(title=title)
    for column in ("workload", "branches", "features", "step", "cores", "uproot ev/s", "ours ev/s"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    table.add_column("ratio", justify="right")
    for name, spec in (("wide", wide), ("small", small)):
        for pinned in (True, False):
            os.sched_setaffinity(0, {min(everything)} if pinned else everything)
            trees = [uproot.open(f, array_cache=None)["Events"] for f in files]
            step = int(trees[0].num_entries_for(STEP, spec.source_branches))
            stream = EventStream(
                sources, BranchSelection(include=spec.source_branches, identifiers=[]),
                step_size=step, shuffle=False, interleave=False,
                threads=1 if pinned else 4, prefetch=0 if pinned else 2,
            )  # fmt: skip
            reference = best_of(args.repeat, partial(raw_uproot, trees, spec.source_branches, step))
            rate = best_of(args.repeat, partial(ours, stream, VectorTransform(spec)))
            stream.close()
            table.add_row(
                name,
                str(len(spec.source_branches)),
                f"{len(spec.columns()):,}",
                f"{step:,}",
                "1" if pinned else str(len(everything)),
                f"{reference:,.0f}",
                f"{rate:,.0f}",
                f"{rate / reference:.2f}",
            )
    os.sched_setaffinity(0, everything)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
