"""PyTorch loading: events/s of batches delivered to Python, ours against two other loaders.

The workloads of ``benchmarks/transform.py``, on its generated NanoAOD-like
dataset with ``wide=True`` (892 branches, all numeric; one file per sample):

* **small**: 5 flat + 8 jagged branches (jets to 10, muons to 3), 64
  features; ``--events`` per sample (default 50,000: 100,000 events);
* **wide**: every numeric branch, jagged ones padded to their 0.95 length
  quantile (~2,200 features); ``--wide-events`` per sample (default 10,000:
  a pass over all branches is slow for every loader).

Every loader reads the same branches, those of the feature spec (for
**wide** that is every branch of these files, as every one is numeric),
delivers batches of ``BATCH`` shuffled events as torch tensors in the spec's
column order and lengths, and every tensor of each batch is read (summed) as
it arrives:

* **mlaas4hep**: :class:`mlaas4hep.train.loaders.TorchEvents` (shuffle on,
  otherwise its defaults: a 50 MB step, interleaved files, reader threads and
  prefetch) in ``torch.utils.data.DataLoader(batch_size=None)`` with 0 and 2
  workers; batches hold ``x``, ``mask``, ``label`` and ``weight``;
* **uproot loop**: a straightforward ``uproot.iterate`` (50 MB steps, files
  one after the other), per chunk each jagged branch ``ak.pad_none(..., L,
  clip=True)`` + ``ak.fill_none`` + ``ak.to_numpy``, columns stacked into a
  float32 ``[N, F]`` with a mask, normalised with the spec's shift and scale,
  rows shuffled within the chunk with numpy, cut into batches and
  ``torch.from_numpy``: the same tensor contents as ours (checked on the
  warm-up pass: events, mask count and the sum of the real values agree);
* **RDataLoader**: ROOT's ``ROOT.Experimental.ML.RDataLoader`` (ROOT >= 6.40;
  ``pip install root``, not a dependency of this project: the rows are skipped
  with a message when it cannot be imported), one ``RDataFrame`` per file with
  the label ``Define``-d as the target, the same columns, ``max_vec_sizes``
  from the spec's lengths, shuffle on, default ``batches_in_memory``,
  ``as_torch()``. It pads with 0 and neither normalises nor returns a mask.

Each timed pass is one epoch from scratch: constructing the loader (the
``RDataFrame`` for ROOT, worker start-up for ours) and opening the files are
inside the clock. One warm-up pass per loader is excluded (ROOT compiles its
loader's template then, numba loads its kernels); then ``--repeat`` rounds,
each running every loader once in turn (the order rotates per round, so the
machine's noise spreads over all of them). Reported: the best pass (noise from
other processes only ever adds time), its CPU time (this process and its
DataLoader workers) and, for scale, the median pass; rates and ratios are of
the best passes.

Torch runs one intra-op thread (``--torch-threads``; DataLoader workers have
one anyway): ``RDataLoader.as_torch()`` splits the target off each batch with
a torch indexing op, which torch parallelises; with another multi-threaded
process on this 2-core machine its OpenMP threads wait for each other and
those passes take 3-6 times longer (user CPU time included).

    python benchmarks/loader.py [--quick] [--events 50000] [--wide-events 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import torch
import uproot
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.train.loaders import TorchEvents
from mlaas4hep.transform.scan import ScanOptions, scan
from mlaas4hep.transform.spec import BranchSpec, FeatureSpec

BATCH = 512
STEP = "50 MB"  # TorchEvents' default step; the uproot loop reads chunks of the same size
SMALL = {
    "flat": ["MET_pt", "MET_phi", "PV_npvs", "nJet", "nMuon"],
    "jagged": ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepB",
               "Muon_pt", "Muon_eta", "Muon_phi"],
}  # fmt: skip
WORKLOADS = ("small", "wide")
ROOT_NAME = "RDataLoader"
UPROOT_NAME = "uproot loop"


@dataclass
class Tally:
    """What one pass delivered: events and, when checking, real (mask 1) values and their sum.

    Every pass reads every element of each tensor (a float32 ``sum``); the
    checked sums (float64, NaN padding skipped) cost more and are only taken on
    the warm-up pass, which is not timed.
    """

    check: bool
    events: int = 0
    real: int = 0
    total: float = 0.0

    def add(
        self, events: int, x: torch.Tensor, mask: torch.Tensor | None, *rest: torch.Tensor
    ) -> None:
        """Count a batch and touch its tensors."""
        self.events += events
        if self.check:
            self.total += float(torch.nansum(x, dtype=torch.float64))
            self.real += 0 if mask is None else int(mask.sum())
        else:
            x.sum()
            if mask is not None:
                mask.sum()
        for tensor in rest:
            tensor.sum()


# -- ours ---------------------------------------------------------------------


def ours(
    sources: list[Source], spec: FeatureSpec, workers: int, epochs: int, cache: bool, seed: int
) -> Tally:
    """``epochs`` of ``TorchEvents`` through one ``DataLoader`` with ``workers`` workers.

    As a training loop uses it: built once, ``set_epoch`` before each epoch,
    workers kept across epochs (with their open files); with ``cache`` the
    tensors stay in memory after the first epoch (``mlaas4hep train`` turns
    this on when they fit).
    """
    dataset = TorchEvents(
        sources, spec, batch_size=BATCH, seed=seed, stream_options={"shuffle": True}, cache=cache
    )
    loader = DataLoader(
        dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0
    )
    tally = Tally(check=seed == 0)
    with dataset:
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            for batch in loader:
                tally.add(
                    len(batch["weight"]), batch["x"], batch["mask"], batch["label"], batch["weight"]
                )
    return tally


# -- uproot + numpy -------------------------------------------------------------


def normalised(values: np.ndarray, b: BranchSpec) -> np.ndarray:
    """``(f(x) - shift) / scale`` in float32, as the spec says (NaN padding stays NaN)."""
    out = values.astype(np.float32)
    norm = b.normalization
    if norm.log:
        np.log1p(out, out=out)
    return (out - np.float32(norm.shift)) * np.float32(1.0 / norm.scale)


def uproot_batches(
    files: list[str], labels: list[int], spec: FeatureSpec, seed: int
) -> Iterable[dict[str, torch.Tensor]]:
    """The straightforward loop: read, pad, stack, normalise, shuffle, batch."""
    rng = np.random.default_rng(seed)
    label_of = dict(zip(files, labels, strict=True))
    flat = spec.flat_branches
    jagged = [b for group in spec.collections().values() for b in group]
    width = len(flat) + sum(b.length for b in jagged)
    targets = dict.fromkeys(files, spec.tree or "Events")
    for arrays, report in uproot.iterate(
        targets, spec.source_branches, step_size=STEP, report=True
    ):
        n = len(arrays)
        x = np.empty((n, width), dtype=np.float32)
        mask = np.zeros((n, width), dtype=np.uint8)
        for j, b in enumerate(flat):
            x[:, j] = normalised(ak.to_numpy(arrays[b.name]), b)
        mask[:, : len(flat)] = 1
        start = len(flat)
        for b in jagged:
            padded = ak.pad_none(arrays[b.name], b.length, clip=True)
            stop = start + b.length
            mask[:, start:stop] = ak.to_numpy(~ak.is_none(padded, axis=1))
            x[:, start:stop] = normalised(ak.to_numpy(ak.fill_none(padded, spec.pad_value)), b)
            start = stop
        order = rng.permutation(n)
        x, mask = x[order], mask[order]
        label = np.full(n, label_of[report.file_path], dtype=np.float64)
        weight = np.ones(n, dtype=np.float64)
        for i in range(0, n, BATCH):
            yield {
                "x": torch.from_numpy(x[i : i + BATCH]),
                "mask": torch.from_numpy(mask[i : i + BATCH]),
                "label": torch.from_numpy(label[i : i + BATCH]),
                "weight": torch.from_numpy(weight[i : i + BATCH]),
            }


def uproot_loop(
    files: list[str], labels: list[int], spec: FeatureSpec, epochs: int, seed: int
) -> Tally:
    """``epochs`` of :func:`uproot_batches`."""
    tally = Tally(check=seed == 0)
    for epoch in range(epochs):
        for batch in uproot_batches(files, labels, spec, seed * 1000 + epoch):
            tally.add(
                len(batch["weight"]), batch["x"], batch["mask"], batch["label"], batch["weight"]
            )
    return tally


# -- ROOT -----------------------------------------------------------------------


def import_root(cling_args: str) -> Any | None:
    """The ROOT module with ``Experimental.ML.RDataLoader``, or ``None`` (and why, printed).

    ``cling_args`` are added to ``EXTRA_CLING_ARGS`` (read when ROOT starts its
    interpreter): the loader is a class template over every column's type, and
    for the wide workload's ~900 columns its fold expressions exceed clang's
    default nesting limit of 256 (``-fbracket-depth``). The optimisation level
    stays ROOT's default (cling's ``-O1``) unless given here.
    """
    os.environ["EXTRA_CLING_ARGS"] = (
        f"{os.environ.get('EXTRA_CLING_ARGS', '')} {cling_args}".strip()
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the PyPI build's "alpha stage" warning
            root = importlib.import_module("ROOT")
        root.Experimental.ML.RDataLoader  # noqa: B018 (ROOT >= 6.40)
    except (ImportError, AttributeError) as exc:  # no ROOT, or one older than 6.40
        print(f"skipping {ROOT_NAME}: {type(exc).__name__}: {exc}".splitlines()[0])
        return None
    return root


def root_loader(
    root: Any, files: list[str], labels: list[int], spec: FeatureSpec, epochs: int, seed: int
) -> Tally:
    """``epochs`` of ROOT's ``RDataLoader``, from building the ``RDataFrame`` s on."""
    flat = [b.name for b in spec.flat_branches]
    jagged = {b.name: b.length for group in spec.collections().values() for b in group}
    frames = [
        root.RDataFrame(spec.tree or "Events", f).Define("label", f"{float(label)}f")
        for f, label in zip(files, labels, strict=True)
    ]
    loader = root.Experimental.ML.RDataLoader(
        frames,
        batch_size=BATCH,
        columns=[*flat, *jagged, "label"],
        max_vec_sizes=jagged,
        target="label",
        shuffle=True,
        drop_remainder=False,
        set_seed=seed + 1,  # 0 would draw one from the system
    )
    tally = Tally(check=seed == 0)
    for _ in range(epochs):
        for x, y in loader.as_torch():
            tally.add(len(x), x, None, y)
    return tally


# -- driver ---------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Competitor:
    """One loader configuration and its timed passes."""

    loader: str
    workers: str
    run: Callable[[int], Tally]
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    warmup: Tally | None = None

    @property
    def events(self) -> int:
        assert self.warmup is not None
        return self.warmup.events

    @property
    def best(self) -> int:
        """Index of the fastest timed pass."""
        return min(range(len(self.seconds)), key=self.seconds.__getitem__)

    def rate(self) -> float:
        """Events per second of the fastest pass."""
        return self.events / self.seconds[self.best]


def measure(competitors: list[Competitor], repeat: int, log: Callable[[str], None]) -> None:
    """One warm-up pass each (seed 0, checked), then ``repeat`` rounds (rotating order)."""
    for c in competitors:
        start = time.perf_counter()
        c.warmup = c.run(0)
        log(f"  warm-up {c.loader} ({c.workers}): {time.perf_counter() - start:.2f} s")
    for r in range(repeat):
        shift = r % len(competitors)
        for c in competitors[shift:] + competitors[:shift]:
            start, cpu = time.perf_counter(), cpu_seconds()
            tally = c.run(r + 1)
            c.seconds.append(time.perf_counter() - start)
            c.cpu.append(cpu_seconds() - cpu)
            if tally.events != c.events:
                raise RuntimeError(f"{c.loader} delivered {tally.events} events, then {c.events}")


def same_contents(reference: Tally, other: Tally) -> bool:
    """Whether two passes delivered the same values (up to float32 summation order)."""
    return (
        reference.events == other.events
        and reference.real == other.real
        and bool(np.isclose(reference.total, other.total, rtol=1e-5, atol=1e-3 * other.events))
    )


@dataclass
class Dataset:
    """The generated files of one size, their labels and sources."""

    files: list[str]
    labels: list[int]
    sources: list[Source]


def dataset(data: Path, events: int) -> Dataset:
    """The ``wide=True`` dataset with ``events`` per sample (generated unless cached)."""
    folder = data / f"wide-{events}"
    if not (folder / "files.txt").exists():
        generate_dataset(folder, n_events=events, seed=11, wide=True)
    files = sorted(str(p.resolve()) for p in folder.glob("*.root"))
    labels = [int(Path(f).name.startswith("signal")) for f in files]
    return Dataset(files, labels, resolve_sources(files, labels=labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="per sample, small workload")
    parser.add_argument("--wide-events", type=int, default=10_000, help="per sample, wide")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="ours")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument(
        "--cling-args", default="-fbracket-depth=4096", help="added to EXTRA_CLING_ARGS for ROOT"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch intra-op threads of this process"
    )
    parser.add_argument(
        "--epochs", type=int, default=1, help="epochs per timed pass (loaders built once)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 events, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.events = args.wide_events = 5_000
        args.repeat = 2
    console = Console(width=120)
    torch.set_num_threads(args.torch_threads)
    root = import_root(args.cling_args)

    workloads: dict[str, tuple[Dataset, FeatureSpec]] = {}
    if "small" in args.workloads:
        data = dataset(args.data, args.events)
        small, _ = scan(
            data.sources,
            BranchSelection(include=SMALL["flat"] + SMALL["jagged"], identifiers=[]),
            options=ScanOptions(lengths={"Jet_*": 10, "Muon_*": 3}),
        )
        workloads["small"] = data, small
    if "wide" in args.workloads:
        data = dataset(args.data, args.wide_events)
        wide, _ = scan(
            data.sources,
            BranchSelection(identifiers=[]),
            options=ScanOptions(length="q0.95"),
            nevts=20_000,
            workers=2,
        )
        workloads["wide"] = data, wide

    table = Table(
        title=f"PyTorch loaders: batches of {BATCH} shuffled events, {args.epochs} epoch(s) "
        f"per pass, best of {args.repeat} passes (warm-up excluded)"
    )
    for column in ("workload", "loader", "workers", "events"):
        table.add_column(column, justify="left" if column in {"workload", "loader"} else "right")
    for column in (
        "seconds",
        "CPU s",
        "median s",
        "events/s",
        f"vs {ROOT_NAME}",
        f"vs {UPROOT_NAME}",
    ):
        table.add_column(column, justify="right")
    for name, (data, spec) in workloads.items():
        console.print(
            f"{name}: {len(spec.source_branches)} branches, {len(spec.columns()):,} features"
        )
        competitors = [
            Competitor(
                "mlaas4hep", str(w), partial(ours, data.sources, spec, w, args.epochs, False)
            )
            for w in args.workers
        ]
        if args.epochs > 1:
            run = partial(ours, data.sources, spec, 0, args.epochs, True)
            competitors.append(Competitor("mlaas4hep cached", "0", run))
        competitors.append(
            Competitor(
                UPROOT_NAME, "-", partial(uproot_loop, data.files, data.labels, spec, args.epochs)
            )
        )
        if root is not None:
            run = partial(root_loader, root, data.files, data.labels, spec, args.epochs)
            competitors.append(Competitor(ROOT_NAME, "-", run))
        measure(competitors, args.repeat, console.print)

        references = {
            c.loader: c.rate() for c in competitors if not c.loader.startswith("mlaas4hep")
        }
        reference = next(c for c in competitors if c.loader == UPROOT_NAME).warmup
        assert reference is not None
        for c in competitors:
            assert c.warmup is not None
            if c.loader.startswith("mlaas4hep"):
                w = c.warmup
                console.print(
                    f"  {c.loader} ({c.workers}): "
                    + (
                        f"same contents as the {UPROOT_NAME} ({w.events:,} events, "
                        f"{w.real:,} real values, sum {w.total:.9g})"
                        if same_contents(reference, w)
                        else f"[red]other contents than the {UPROOT_NAME}: {w} vs {reference}"
                    )
                )
            console.print(
                f"  {c.loader} ({c.workers}): "
                + ", ".join(f"{s:.3f}" for s in c.seconds)
                + f" s (CPU {', '.join(f'{s:.2f}' for s in c.cpu)} s)"
            )
            rate = c.rate()
            table.add_row(
                name,
                c.loader,
                c.workers,
                f"{c.events:,}",
                f"{c.seconds[c.best]:.3f}",
                f"{c.cpu[c.best]:.2f}",
                f"{statistics.median(c.seconds):.3f}",
                f"{rate:,.0f}",
                f"{rate / references[ROOT_NAME]:.2f}" if ROOT_NAME in references else "n/a",
                f"{rate / references[UPROOT_NAME]:.2f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
