"""Batch inference (``mlaas4hep predict``): in-process against a local dask cluster.

Generates ``--events`` events per sample (signal and background, ``--files``
files each) into ``--cache`` once, trains a one-epoch MLP package on them once,
then scores all files into a Parquet file in this process and with
``workers=2`` (a ``LocalCluster``; its start-up is included in the time), and
prints events/s and the ratio.

    python -P benchmarks/predict.py [--events 500000] [--files 4] [--cache .bench-predict]

(``-P``: keep ``benchmarks/`` off ``sys.path``, where ``triton.py`` would shadow the
module torch imports.) Events total: twice ``--events``. The cluster start-up is a
fixed cost of several seconds, so the ratio only favours dask on large datasets.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.predict.batch import predict_files
from mlaas4hep.train.config import TrainConfig
from mlaas4hep.train.workflow import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="Events per sample.")
    parser.add_argument("--files", type=int, default=4, help="Files per sample.")
    parser.add_argument("--cache", type=Path, default=Path(".bench-predict"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    data = args.cache / f"data-{args.events}-{args.files}"
    if not (data / "files.txt").exists():
        generate_dataset(data, n_events=args.events, n_files=args.files, seed=5)
    package = args.cache / f"run-{args.events}-{args.files}" / "model"
    if not (package / "metadata.json").exists():
        result = train(
            str(data / "files.txt"),
            str(data / "labels.txt"),
            ROOT / "examples" / "mlp.py",
            config=TrainConfig(
                branches="Jet_pt,Jet_eta,MET_pt,nJet", epochs=1, step_size=100_000, plots=False
            ),
            out=package.parent,
        )
        assert result is not None
    sources = resolve_sources(str(data / "files.txt"))

    rows = []
    for name, workers in (("in-process", 1), (f"dask, {args.workers} workers", args.workers)):
        start = time.perf_counter()
        report = predict_files(sources, package, args.cache / "scores.parquet", workers=workers)
        seconds = time.perf_counter() - start
        assert report.ok, report.failures
        rows.append((name, report.events, seconds))

    table = Table(title="mlaas4hep predict (Parquet output)")
    for column in ("run", "events", "seconds", "events/s", "ratio"):
        table.add_column(column, justify="right")
    base = rows[0][1] / rows[0][2]
    for name, events, seconds in rows:
        rate = events / seconds
        table.add_row(name, f"{events:,}", f"{seconds:.2f}", f"{rate:,.0f}", f"{rate / base:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
