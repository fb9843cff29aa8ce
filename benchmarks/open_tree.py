"""Seconds to open a wide TTree (892 branches) with Python's garbage collector
running during the read of the tree's metadata, and paused as ``get_tree`` does.

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
from mlaas4hep.data.rootfile import get_tree, open_root
from mlaas4hep.datasets import generate_dataset


def open_seconds(files: list[str], *, paused: bool) -> float:
    """Seconds per file to open it and read its tree's metadata."""
    started = time.perf_counter()
    for file in files:
        directory = open_root(file)
        if paused:
            get_tree(directory, "Events", path=file)
        else:
            directory["Events"]  # uproot alone, the collector running
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
    times: dict[bool, list[float]] = {False: [], True: []}
    open_seconds(files, paused=True)  # warm the page cache and uproot's class lookups
    for _ in range(args.repeat):
        for paused in (False, True):
            times[paused].append(open_seconds(files, paused=paused))
    best = {paused: min(seconds) for paused, seconds in times.items()}
    print("\n| collector during the read | best s per file | median s | vs running |")
    print("| --- | --: | --: | --: |")
    for paused, label in ((False, "running (uproot alone)"), (True, "paused (get_tree)")):
        median = sorted(times[paused])[len(times[paused]) // 2]
        print(
            f"| {label} | {best[paused]:.3f} | {median:.3f} | {best[False] / best[paused]:.2f} × |"
        )


if __name__ == "__main__":
    main()
