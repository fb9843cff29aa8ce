"""TFaaS-style serving throughput: ``wrk`` against ``mlaas4hep serve``.

Single-row ``POST /json`` requests (TFaaS's body: keys, values, model) from
200 concurrent connections, to an ONNX MLP 42 → 1024 → 1024 → 2 (softmax);
in the same run, ``GET /v2/health/live`` on the same server (the ceiling of the
server stack: same process, same request handling, no model). wrk runs on the
same machine, so it takes CPU from the server: compare the two rows of one run.

    python benchmarks/serving.py                     # 1 and 2 server workers, 15 s each
    python benchmarks/serving.py --workers 1 --duration 5 --connections 50

Needs ``wrk`` (Debian package) on PATH.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

# The shared benchmark model, and the tests' server fixture.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mlp_model import FEATURES, write_model
from serving import running_server


def wrk(
    url: str, *, connections: int, threads: int, duration: int, script: Path | None
) -> dict[str, float]:
    """Requests/s and latency percentiles (ms) measured by wrk."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    for percentile in ("50", "99"):
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
        value, unit = float(match.group(1)), match.group(2)  # type: ignore[union-attr]
        result[f"p{percentile}"] = value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    socket_errors = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = socket_errors.group(1) if socket_errors else ""  # type: ignore[assignment]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server setting (server.yaml key), e.g. --setting threads=1",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    scratch = Path(tempfile.mkdtemp(prefix="mlaas4hep-serving-"))
    repository = scratch / "models"
    onnx_path = write_model(repository)
    x = np.random.default_rng(1).normal(size=(1, FEATURES)).astype(np.float32)
    body = {"keys": [f"f{i}" for i in range(FEATURES)], "values": x[0].tolist(), "model": "mlp"}
    script = scratch / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{json.dumps(body)}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0][0]
    model_rate = in_process_rate(onnx_path)

    rows = []
    for workers in args.workers:
        extra = ["--workers", str(workers)]
        if args.setting:
            settings = scratch / "server.yaml"
            settings.write_text("".join(f"{s.replace('=', ': ', 1)}\n" for s in args.setting))
            extra += ["--config", str(settings)]
        with running_server(repository, *extra) as url:
            answer = httpx.post(f"{url}/json", json=body).json()
            np.testing.assert_allclose(answer, expected, rtol=1e-4)
            wrk(
                f"{url}/json",
                connections=args.connections,
                threads=args.wrk_threads,
                duration=3,
                script=script,
            )
            predict = wrk(
                f"{url}/json",
                connections=args.connections,
                threads=args.wrk_threads,
                duration=args.duration,
                script=script,
            )
            ceiling = wrk(
                f"{url}/v2/health/live",
                connections=args.connections,
                threads=args.wrk_threads,
                duration=args.duration,
                script=None,
            )
            status = httpx.get(f"{url}/status").json()["models"]["mlp"]
            batching = next(iter(status["batching"].values()))
        rows.append((workers, "POST /json (MLP 42-1024-1024-2)", predict, ceiling["rps"], batching))
        rows.append((workers, "GET /v2/health/live (ceiling)", ceiling, ceiling["rps"], None))

    print(
        f"\nwrk -t{args.wrk_threads} -c{args.connections} -d{args.duration}s, server and wrk on this machine\n"
    )
    print(
        "| workers | endpoint | req/s | p50 ms | p99 ms | non-2xx | of ceiling | mean rows per model call |"
    )
    print("| --: | --- | --: | --: | --: | --: | --: | --: |")
    for workers, name, result, ceiling_rps, batching in rows:
        share = f"{result['rps'] / ceiling_rps:.0%}"
        mean_rows = f"{batching['mean_batch_rows']:.1f}" if batching else "-"
        print(
            f"| {workers} | {name} | {result['rps']:,.0f} | {result['p50']:.2f} | {result['p99']:.2f} "
            f"| {result['errors']:.0f} | {share} | {mean_rows} |"
        )
    print(
        f"\nThe model alone (ONNX Runtime in this process, 1 thread, batches of 20 rows): "
        f"{model_rate:,.0f} rows/s, i.e. {1e6 / model_rate:.0f} µs of one core per row."
    )
    shutil.rmtree(scratch, ignore_errors=True)


def in_process_rate(path: Path, rows: int = 20, seconds: float = 2.0) -> float:
    """Rows/s of ONNX Runtime running the model directly (the compute bound)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(2).normal(size=(rows, FEATURES)).astype(np.float32)
    session.run(None, {"x": batch})
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"x": batch})
        calls += 1
    return calls * rows / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
