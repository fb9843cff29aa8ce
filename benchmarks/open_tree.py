"""Seconds to open a wide TTree (892 branches) and read its metadata: uproot alone
(the garbage collector running), ``get_tree`` (collector paused), and ``get_tree``
reading only the 13 branches of the loader's small workload (a pruned read).

The process first imports what a training job holds (torch, awkward, numba,
the loaders), so each collection walks a realistic heap. The files are the
loader benchmark's ``wide=True`` files (generated into ``--data`` unless there).

    python benchmarks/open_tree.py          # --events 50000 --repeat 5
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch  # noqa: F401 - a training process's heap
import uproot

import mlaas4hep.train.loaders  # noqa: F401 - as above
from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.rootfile import get_tree, open_root
from mlaas4hep.datasets import generate_dataset

# The loader benchmark's small workload (benchmarks/loader.py).
SMALL = ["MET_pt", "MET_phi", "PV_npvs", "nJet", "nMuon", "Jet_pt", "Jet_eta", "Jet_phi",
         "Jet_mass", "Jet_btagDeepB", "Muon_pt", "Muon_eta", "Muon_phi"]  # fmt: skip
WAYS = {
    "uproot alone, collector running": "uproot",
    "get_tree, every branch (collector paused)": "all",
    "get_tree, the 13 branches of the small workload": "pruned",
}


def open_seconds(files: list[str], *, way: str) -> float:
    """Seconds per file to open it and read its tree's metadata."""
    selection = BranchSelection(include=SMALL, identifiers=[])
    started = time.perf_counter()
    for file in files:
        directory = open_root(file)
        if way == "uproot":
            tree = directory["Events"]
        else:
            choose = selection.candidates if way == "pruned" else None
            tree = get_tree(directory, "Events", path=file, branches=choose)
        assert tree.num_entries > 0
        directory.close()
    return (time.perf_counter() - started) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument("--events", type=int, default=50_000, help="per file")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = args.data / f"wide-{args.events}"
    if not (folder / "files.txt").exists():
        generate_dataset(folder, n_events=args.events, seed=11, wide=True)
    files = sorted(str(p) for p in folder.glob("*.root"))
    branches = len(uproot.open(files[0])["Events"].keys())
    print(f"{len(files)} files of {branches} branches; {len(gc.get_objects()):,} objects tracked")
    times: dict[str, list[float]] = {way: [] for way in WAYS.values()}
    for way in WAYS.values():  # warm the page cache and uproot's class lookups
        open_seconds(files, way=way)
    for _ in range(args.repeat):
        for way in WAYS.values():
            times[way].append(open_seconds(files, way=way))
    best = {way: min(seconds) for way, seconds in times.items()}
    print("\n| read | best s per file | median s | vs uproot alone |")
    print("| --- | --: | --: | --: |")
    for label, way in WAYS.items():
        median = sorted(times[way])[len(times[way]) // 2]
        print(f"| {label} | {best[way]:.4f} | {median:.4f} | {best['uproot'] / best[way]:.2f} × |")


if __name__ == "__main__":
    main()
