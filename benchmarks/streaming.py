"""Streaming-layer throughput against plain ``uproot.iterate``, in the same run.

Generates a 200k-event NanoAOD-like dataset (100k signal + 100k background,
two files each) unless it exists, then reads it

* with ``uproot.iterate`` (the reference: files one after the other, no mixing),
* with :class:`mlaas4hep.data.reader.EventStream` (interleaved mixing of all
  files and event-level shuffling on),

for ~20 branches and for all branches, from local files and over a loopback
XRootD server. Each measurement is the best of ``--repeat`` runs. Prints a
table of events/s, MB/s (in-memory, uncompressed) and the ratios the targets
are stated in: ours / uproot locally, remote / local for ours.

    python benchmarks/streaming.py [--events 100000] [--repeat 3] [--no-remote]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import awkward as ak
import uproot
from rich.console import Console
from rich.table import Table

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.testing import start_xrootd

TWENTY = [
    "nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepB",
    "nMuon", "Muon_pt", "Muon_eta", "Muon_phi",
    "nElectron", "Electron_pt", "Electron_eta", "Electron_phi",
    "MET_pt", "MET_phi", "PV_npvs",
    "nPFCands", "PFCands_pt", "PFCands_eta",
]  # fmt: skip
STEP = "100 MB"  # turned into an entry count on the local files (see chunk_events)


def consume(chunks: Iterable[ak.Array]) -> tuple[int, int]:
    """Events and in-memory bytes of every chunk (touching each one)."""
    events = nbytes = 0
    for chunk in chunks:
        events += len(chunk)
        nbytes += chunk.nbytes
    return events, nbytes


def best_of(repeat: int, run: Callable[[], tuple[int, int]]) -> tuple[float, int, int]:
    """(seconds, events, bytes) of the fastest of ``repeat`` runs."""
    best = None
    for _ in range(repeat):
        start = time.perf_counter()
        events, nbytes = run()
        seconds = time.perf_counter() - start
        best = min(best or (seconds, events, nbytes), (seconds, events, nbytes))
    assert best is not None
    return best


def chunk_events(local_file: str, branches: list[str] | None) -> int:
    """Entries per step as ``uproot.iterate`` computes them for ``STEP`` on a local file.

    Both readers get this entry count, local and remote alike: over root://,
    ``uproot.iterate(step_size="100 MB")`` fails in uproot 5.7 + fsspec-xrootd
    0.5 (numpy integers reach the XRootD bindings), so bytes cannot be used there.
    """
    tree = uproot.open(local_file)["Events"]
    return int(tree.num_entries_for(STEP, branches))


def plain_uproot(urls: list[str], branches: list[str] | None, step: int) -> tuple[int, int]:
    targets = dict.fromkeys(urls, "Events")
    return consume(uproot.iterate(targets, branches, step_size=step))


def ours(
    urls: list[str], labels: list[int], branches: list[str] | None, step: int
) -> tuple[int, int]:
    selection = BranchSelection(include=branches, identifiers=[])
    sources = resolve_sources(urls, labels=labels)
    with EventStream(sources, selection, step_size=step, shuffle=True, seed=1) as stream:
        return consume(chunk.arrays for chunk in stream.iter_epoch(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per sample")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument("--no-remote", action="store_true", help="skip the XRootD rows")
    args = parser.parse_args()

    folder = args.data / f"nanoaod-{args.events}"
    if not (folder / "files.txt").exists():
        generate_dataset(folder, n_events=args.events, n_files=2, seed=7)
    files = sorted(str(p.resolve()) for p in folder.glob("*.root"))
    labels = [int(Path(f).name.startswith("signal")) for f in files]

    locations = {"local": files}
    server = None
    if not args.no_remote:
        export = Path(tempfile.mkdtemp(prefix="mlaas4hep-bench-")) / "export"
        server = start_xrootd(export)
        locations["xrootd"] = [server.publish(Path(f)) for f in files]

    table = Table(title=f"streaming {2 * args.events:,} events, step {STEP}, best of {args.repeat}")
    for column in ("where", "branches", "reader", "events/s", "MB/s", "ratio"):
        table.add_column(column, justify="left" if column in {"where", "reader"} else "right")
    rates: dict[tuple[str, str, str], float] = {}
    try:
        for where, urls in locations.items():
            for name, branches in (("20", TWENTY), ("all", None)):
                step = chunk_events(files[0], branches)
                for reader, run in (
                    ("uproot.iterate", functools.partial(plain_uproot, urls, branches, step)),
                    (
                        "mlaas4hep (mix+shuffle)",
                        functools.partial(ours, urls, labels, branches, step),
                    ),
                ):
                    seconds, events, nbytes = best_of(args.repeat, run)
                    rates[where, name, reader] = events / seconds
                    if reader == "uproot.iterate":
                        ratio = "1.00"
                    else:
                        reference = rates[where, name, "uproot.iterate"]
                        ratio = f"{events / seconds / reference:.2f} of uproot"
                        if where != "local":
                            local = rates["local", name, reader]
                            ratio += f", {events / seconds / local:.2f} of local"
                    table.add_row(
                        where,
                        name,
                        reader,
                        f"{events / seconds:,.0f}",
                        f"{nbytes / 1e6 / seconds:,.0f}",
                        ratio,
                    )
    finally:
        if server is not None:
            server.stop()
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
