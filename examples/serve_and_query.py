"""Serve a trained model package and query it four ways (the end of ``make demo``).

    python examples/serve_and_query.py demo-data/run/model demo-data/signal_0.root

Starts ``mlaas4hep serve`` on a fresh repository, uploads the package with the
Python client, turns a few events of the ROOT file into the model's inputs with
the package's own feature spec, and asks the server for predictions through
TFaaS's ``/json`` (curl-style body), ``/proto`` (protobuf) and the client
library. Then it sends the same events raw, as they are in the file, to
``/v2/models/demo/events``, where the server applies the package's own
transform. Every answer is compared with ONNX Runtime in this process.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import uproot

from mlaas4hep.client import Client
from mlaas4hep.serve.tfaas_proto import Predictions, Row
from mlaas4hep.train.package import load_package
from mlaas4hep.transform.vector import VectorTransform

EVENTS = 5


def start_server(repository: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "mlaas4hep", "serve", "--repository", str(repository), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    sys.exit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("events", type=Path, help="a ROOT file with an Events tree")
    parser.add_argument("--port", type=int, default=8083)
    args = parser.parse_args()

    package = load_package(args.package)
    if package.metadata.get("layout") != "flat":
        sys.exit("this demo sends flat rows; the package uses the grouped layout")
    spec = package.spec
    tree = uproot.open(args.events)[spec.tree or "Events"]
    tensors = VectorTransform(spec).flat(tree.arrays(spec.source_branches, entry_stop=EVENTS))
    pad = float(package.metadata["training"]["params"].get("pad_value", 0.0))
    x = np.where(tensors.mask > 0, tensors.x, np.float32(pad))  # padded slots as in training
    feeds = {"x": x} | ({"mask": np.ones_like(x)} if len(package.inputs) > 1 else {})
    expected = package.predict(feeds)  # TFaaS rows carry no mask: every value counts as real

    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as scratch:
        server = start_server(Path(scratch) / "models", args.port)
        try:
            with Client(url) as client:
                uploaded = client.upload_package(args.package, name="demo")
                print(f"uploaded {args.package} as model 'demo' version {uploaded['version']}")

                body = {"keys": package.metadata["columns"], "values": x.tolist(), "model": "demo"}
                by_json = np.array(httpx.post(f"{url}/json", json=body).raise_for_status().json())

                row = Row(key=package.metadata["columns"], value=x[0].tolist(), model="demo")
                answer = httpx.post(f"{url}/proto", content=row.SerializeToString()).raise_for_status()
                by_proto = Predictions.FromString(answer.content)

                by_client = client.predict(x, keys=package.metadata["columns"], model="demo")

                raw = tree.arrays(client.events_metadata("demo")["branches"], entry_stop=EVENTS)
                by_events = client.predict_events(raw, model="demo").probabilities
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

    print(f"\n{'event':>5}  {'/json':>24}  {'client':>24}  {'in-process':>24}")
    for i in range(EVENTS):
        print(f"{i:>5}  {np.array2string(by_json[i], precision=4):>24}  "
              f"{np.array2string(by_client[i], precision=4):>24}  {np.array2string(expected[i], precision=4):>24}")
    labelled = ", ".join(f"{c.label or '?'}: {c.probability:.4f}" for c in by_proto.prediction)
    print(f"/proto, event 0: {labelled}")
    raw_expected = package.predict_events(raw)  # the training transform, mask included
    print("raw events via /events:", np.array2string(by_events, precision=4).replace("\n", ""))
    deviation = max(
        np.abs(by_json - expected).max(),
        np.abs(by_client - expected).max(),
        np.abs(by_events - raw_expected).max(),
    )
    print(f"largest difference from ONNX Runtime in this process: {deviation:.2e}")
    if deviation > 1e-5:
        sys.exit("the server's answers differ from the in-process predictions")


if __name__ == "__main__":
    main()
