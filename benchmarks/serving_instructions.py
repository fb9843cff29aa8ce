"""Instructions per ``POST /json`` request, counted by callgrind: the server's
Python work without HTTP, repeatable on a noisy machine.

The application (the RSGI one ``mlaas4hep serve`` runs) is driven in this
process with RSGI scope and protocol objects made here, 200 requests at a
time, against a small ONNX model (42 → 8 → 2), so that the count is the
per-request work and not the model's arithmetic. Two runs under
``valgrind --tool=callgrind``, of 200 and of 200 + N requests: their
difference divided by N is the count per request (start-up cancels out).
Two runs of one build agree to about 1 %; compare builds with ``PYTHONPATH``.

    python -P benchmarks/serving_instructions.py            # N = 4000, about 2 minutes
    PYTHONPATH=/other/checkout/src python -P benchmarks/serving_instructions.py

Needs ``valgrind`` (Debian package) on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mlaas4hep.serve.app import create_app
from mlaas4hep.serve.rsgi import RSGIApp
from mlaas4hep.serve.server import tune_garbage_collection

try:
    import uvloop
except ImportError:  # Granian then runs asyncio's own loop
    uvloop = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serving import write_onnx_mlp  # the tests' model writer

FEATURES = 42
CONCURRENT = 200


class _Scope:
    """The RSGI scope of ``POST /json`` with a JSON body of ``size`` bytes."""

    method = "POST"
    path = "/json"
    http_version = "1.1"
    scheme = "http"
    query_string = ""
    client = "127.0.0.1:50000"
    server = "127.0.0.1:8083"

    def __init__(self, size: int) -> None:
        self.headers = {"content-length": str(size), "content-type": "application/json"}


class _Protocol:
    """The RSGI protocol of one request: the body in one call, the answer kept."""

    __slots__ = ("body", "status")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 0

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, _headers: object, _body: bytes) -> None:
        self.status = status


async def drive(repository: Path, requests: int) -> None:
    """Answer ``requests`` requests (in waves of :data:`CONCURRENT`), checking each."""
    tune_garbage_collection()  # as in a server worker
    app = RSGIApp(create_app(repository=str(repository), threads=1, model_control="explicit"))
    x = np.random.default_rng(1).normal(size=FEATURES)
    body = json.dumps(
        {"keys": [f"f{i}" for i in range(FEATURES)], "values": x.tolist(), "model": "mlp"}
    ).encode()
    scope = _Scope(len(body))

    async def one() -> None:
        protocol = _Protocol(body)
        await app.__rsgi__(scope, protocol)
        if protocol.status != 200:
            raise SystemExit(f"/json answered {protocol.status}")

    async with app.app.lifespan():
        await one()  # loads the model
        for _ in range(requests // CONCURRENT):
            await asyncio.gather(*(one() for _ in range(CONCURRENT)))


def instructions(repository: Path, requests: int) -> int:
    """Instructions callgrind counts for this script answering ``requests`` requests."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={scratch}/callgrind.out",
            sys.executable,
            "-P",
            __file__,
            "--drive",
            str(requests),
            "--repository",
            str(repository),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise SystemExit(f"no count in callgrind's output:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="N, a multiple of 200")
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repository", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive is not None:
        run = asyncio.run if uvloop is None else uvloop.run  # as Granian picks
        run(drive(args.repository, args.drive))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch) / "models"
        names = [f"f{i}" for i in range(FEATURES)]
        write_onnx_mlp(
            repository / "mlp" / "1",
            inputs=FEATURES,
            hidden=8,
            classes=2,
            params={"name": "mlp", "features": names},
        )
        base = instructions(repository, CONCURRENT)
        total = instructions(repository, CONCURRENT + args.requests)
    print("| requests | instructions per request |\n| --: | --: |")
    print(f"| {args.requests:,} | {(total - base) / args.requests:,.0f} |")


if __name__ == "__main__":
    main()
