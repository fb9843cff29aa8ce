"""Raw-event inference: ``mlaas4hep predict`` in-process and on dask, and ``/events``.

Generates ``--events`` events per sample (signal and background, ``--files``
files each) into ``--cache`` once and trains a one-epoch MLP package on them
once (branches ``--branches``). Then, in the same run:

* ``predict`` of all files into one Parquet file: in this process; with
  ``workers=2`` (a ``LocalCluster`` started and closed by the call: its
  start-up and the workers' imports are in the time); and against an already
  running 1-worker and 2-worker cluster (``--scheduler``), after one warm-up
  pass each (the scaling of the tasks themselves);
* ``POST /v2/models/{m}/events`` on ``mlaas4hep serve`` with batches of
  ``--batch`` events taken from the same files: JSON records and Parquet
  uploads, from 1 and 4 concurrent clients (bodies made before timing).

    python -P benchmarks/predict.py [--events 500000] [--files 4] [--cache .bench-predict]

(``-P``: keep ``benchmarks/`` off ``sys.path``, where ``triton.py`` would shadow the
module torch imports.) The dask rows are compared with the in-process row of
the same run; the machine's core count bounds what 2 workers can add.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import awkward as ak
import httpx
import orjson
import pyarrow.parquet as pq
import uproot
from distributed import LocalCluster
from rich.console import Console
from rich.table import Table

from mlaas4hep.client import Client
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.predict.batch import predict_files
from mlaas4hep.train.config import TrainConfig
from mlaas4hep.train.package import load_package
from mlaas4hep.train.workflow import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serving import running_server  # the tests' server fixture


def _package(args: argparse.Namespace, data: Path) -> Path:
    tag = f"{args.events}-{args.files}-{args.branches.replace(',', '+')}"
    package = args.cache / f"run-{tag}" / "model"
    if not (package / "metadata.json").exists():
        result = train(
            str(data / "files.txt"),
            str(data / "labels.txt"),
            ROOT / "examples" / "mlp.py",
            config=TrainConfig(branches=args.branches, epochs=1, step_size=100_000, plots=False),
            out=package.parent,
        )
        assert result is not None
    return package


def _predict_rows(sources: list, package: Path, out: Path, workers: int) -> list[tuple]:
    rows = []

    def timed(name: str, **kwargs: object) -> None:
        start = time.perf_counter()
        report = predict_files(sources, package, out, **kwargs)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        assert report.ok, report.failures
        rows.append((name, report.events, seconds))

    predict_files(sources, package, out)  # warms the page cache and this process
    timed("in-process")
    timed(f"dask, --workers {workers} (cluster start included)", workers=workers)
    for n in sorted({1, workers}):  # how the tasks scale from one worker to several
        with LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster:
            predict_files(sources, package, out, scheduler=cluster.scheduler_address)  # warm-up
            timed(f"dask, running {n}-worker cluster", scheduler=cluster.scheduler_address)
    return rows


async def _post_all(url: str, bodies: list[tuple[dict, int]], clients: int, seconds: float):
    """Sends the bodies round-robin from ``clients`` concurrent connections for
    ``seconds``; returns the events answered and the time taken."""
    answered = 0
    deadline = time.perf_counter() + seconds

    async def one(worker: int) -> None:
        nonlocal answered
        async with httpx.AsyncClient(timeout=60) as http:
            i = worker
            while time.perf_counter() < deadline:
                request, events = bodies[i % len(bodies)]
                response = await http.post(url, **request)
                response.raise_for_status()
                answered += events
                i += clients

    start = time.perf_counter()
    await asyncio.gather(*(one(w) for w in range(clients)))
    return answered, time.perf_counter() - start


def _events_rows(package: Path, path: str, batch: int, seconds: float) -> list[tuple]:
    branches = [*load_package(package).spec.source_branches, "run", "luminosityBlock", "event"]
    with uproot.open(path) as file:
        events = file["Events"].arrays(branches, entry_stop=20 * batch)
    blocks = [events[i : i + batch] for i in range(0, len(events), batch)]
    as_json = [
        ({"content": orjson.dumps(ak.to_list(b)), "headers": {"Content-Type": "application/json"}},
         len(b))
        for b in blocks
    ]  # fmt: skip
    as_parquet = []
    for block in blocks:
        buffer = io.BytesIO()
        pq.write_table(ak.to_arrow_table(block), buffer)
        as_parquet.append(({"files": {"file": ("e.parquet", buffer.getvalue())}}, len(block)))
    rows = []
    with running_server(Path(tempfile.mkdtemp()) / "repository") as url:
        with Client(url, timeout=60) as client:
            client.upload_package(package, name="bench")
        endpoint = f"{url}/v2/models/bench/events"
        for kind, bodies in (("JSON records", as_json), ("Parquet upload", as_parquet)):
            for clients in (1, 4):
                asyncio.run(_post_all(endpoint, bodies, clients, 1.0))  # warm-up
                events, took = asyncio.run(_post_all(endpoint, bodies, clients, seconds))
                rows.append((f"/events, {kind}, {clients} client(s)", events, took))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="Events per sample.")
    parser.add_argument("--files", type=int, default=4, help="Files per sample.")
    parser.add_argument("--branches", default="Jet_pt,Jet_eta,MET_pt,nJet")
    parser.add_argument("--cache", type=Path, default=Path(".bench-predict"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000, help="Events per /events request.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Per /events row.")
    args = parser.parse_args()

    data = args.cache / f"data-{args.events}-{args.files}"
    if not (data / "files.txt").exists():
        generate_dataset(data, n_events=args.events, n_files=args.files, seed=5)
    package = _package(args, data)
    sources = resolve_sources(str(data / "files.txt"))

    console = Console()
    rows = _predict_rows(sources, package, args.cache / "scores.parquet", args.workers)
    table = Table(title=f"mlaas4hep predict -> Parquet ({os.cpu_count()} cores, {args.branches})")
    for column in ("run", "events", "seconds", "events/s", "vs in-process"):
        table.add_column(column, justify="right")
    base = rows[0][1] / rows[0][2]
    for name, events, seconds in rows:
        rate = events / seconds
        table.add_row(name, f"{events:,}", f"{seconds:.2f}", f"{rate:,.0f}", f"{rate / base:.2f}")
    console.print(table)

    rows = _events_rows(package, sources[0].url, args.batch, args.seconds)
    table = Table(title=f"POST /v2/models/{{m}}/events, {args.batch:,} events per request")
    for column in ("run", "events", "seconds", "events/s"):
        table.add_column(column, justify="right")
    for name, events, seconds in rows:
        table.add_row(name, f"{events:,}", f"{seconds:.2f}", f"{events / seconds:,.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
