"""Triton-protocol throughput of ``mlaas4hep serve`` (gRPC and HTTP with binary tensors).

(a) Batch-1 inference, 64 concurrent requests: gRPC ``ModelInfer`` driven by
    ``h2load`` (a length-prefixed protobuf body, as gRPC frames it), gRPC
    ``ModelStreamInfer`` driven by ``h2load`` (4 streams of 16 requests each,
    so 64 in flight; what ``perf_analyzer --streaming`` measures), and REST
    ``/v2/models/mlp/infer`` with Triton's binary tensor data driven by ``wrk``
    → infer/s. Both load generators are compiled programs on the same machine.
    h2load cannot read gRPC's status trailers, so the errors are counted by the
    server (``/metrics``): every request h2load finished must have been answered.
    A call is one request, or one stream of 16.
(b) Batches of 1024 rows of the MLP 42 → 1024 → 1024 → 2 sent by
    ``tritonclient.grpc`` one after another → rows/s, against ONNX Runtime
    running the same batches in this process (same thread settings).

    python -P benchmarks/triton.py             # --duration 10 --connections 64 --big-requests 40

(``-P``: this file is named ``triton``; on ``sys.path`` it would shadow the
module of that name that torch imports.)

Needs ``h2load`` (Debian ``nghttp2-client``) and ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

# The shared benchmark model, and the tests' server fixture.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mlp_model import FEATURES, write_model
from serving import free_port, running_server

from mlaas4hep.serve.metrics import PUBLISH_INTERVAL


def grpc_frame(message: bytes) -> bytes:
    """``message`` in gRPC's framing (flag byte + 4-byte length)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_request(x: np.ndarray) -> bytes:
    """A serialised ModelInfer request for ``x``."""
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request.SerializeToString()


def http_body(x: np.ndarray) -> tuple[bytes, int]:
    """A v2 infer request with binary input and output; and its JSON header length."""
    head = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": list(x.shape), "datatype": "FP32",
                 "parameters": {"binary_data_size": x.nbytes}},
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    return head + x.astype("<f4").tobytes(), len(head)


def served_counts(url: str) -> tuple[float, float]:
    """The server's own count of inference requests to ``mlp`` and of failed ones
    (``/metrics``, every worker's counts added up)."""
    time.sleep(1.5 * PUBLISH_INTERVAL)  # let every worker publish its latest counts
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()

    def count(family: str) -> float:
        match = re.search(rf'^{family}_total{{model="mlp"}} ([\d.e+]+)$', text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    return count("mlaas4hep_inference_requests"), count("mlaas4hep_inference_errors")


def h2load(
    url: str, body: Path, *, connections: int, duration: int, messages: int, server: str
) -> dict[str, float]:
    """infer/s of ``connections`` gRPC calls at a time, each sending ``body``
    (``messages`` framed requests), after a 2 s warm-up run.

    h2load cannot see gRPC's status (it is in the trailers), so the errors are
    the requests h2load finished that the server did not answer successfully
    (the server also counts the calls h2load cancels at the end as failed; those
    h2load never finished).
    """
    command = [
        "h2load", "-c", str(connections), "-m", "1",
        "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body), url,
    ]  # fmt: skip
    subprocess.run([*command, "-D", "2"], capture_output=True, check=True)
    requests_before, errors_before = served_counts(server)
    output = subprocess.run(
        [*command, "-D", str(duration)], capture_output=True, text=True, check=True
    ).stdout
    requests_after, errors_after = served_counts(server)
    calls = float(re.search(r"finished in .*?, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) done", output).group(1))  # type: ignore[union-attr]
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    errors = sum(int(status.group(i)) for i in (2, 3, 4)) if status else -1  # type: ignore[union-attr]
    answered = requests_after - requests_before - (errors_after - errors_before)
    errors += max(0.0, done * messages - answered)
    latency = re.search(
        r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", output
    )
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    mean = float(latency.group(5)) * scale[latency.group(6)] if latency else float("nan")
    return {"rps": calls * messages, "errors": errors, "mean_ms": mean}


def wrk(url: str, script: Path, *, connections: int, duration: int) -> dict[str, float]:
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    match = re.search(r"^\s+Latency\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
    mean = (
        float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]
        if match
        else float("nan")
    )
    return {"rps": rate, "errors": float(errors.group(1)) if errors else 0.0, "mean_ms": mean}


def check_answers(grpc_url: str, request: bytes, expected: np.ndarray) -> None:
    """Sends ``request`` (a serialised ModelInferRequest, the one h2load sends) once
    as a ModelInfer call and once on a ModelStreamInfer stream, and checks both
    answers against ONNX Runtime."""
    with grpc.insecure_channel(grpc_url) as channel:
        # No serialisers: bytes in, bytes out, exactly what goes over the wire.
        unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        answer = unary(request, timeout=30)
        (streamed,) = list(stream(iter([request]), timeout=30))
    response = service_pb2.ModelInferResponse.FromString(answer)
    wrapped = service_pb2.ModelStreamInferResponse.FromString(streamed)
    if wrapped.error_message:
        raise RuntimeError(f"ModelStreamInfer answered {wrapped.error_message!r}")
    for got in (response, wrapped.infer_response):
        probabilities = np.frombuffer(got.raw_output_contents[0], "<f4").reshape(expected.shape)
        np.testing.assert_allclose(probabilities, expected, rtol=1e-4)


def big_batches(grpc_url: str, x: np.ndarray, requests: int) -> float:
    """Rows/s of ``requests`` sequential gRPC requests of ``x``."""
    client = grpcclient.InferenceServerClient(grpc_url)
    request = grpcclient.InferInput("x", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    client.infer("mlp", [request])
    started = time.perf_counter()
    for _ in range(requests):
        client.infer("mlp", [request])
    elapsed = time.perf_counter() - started
    client.close()
    return requests * len(x) / elapsed


def in_process(path: Path, x: np.ndarray, requests: int) -> float:
    """Rows/s of ONNX Runtime on ``x`` here, with the server's session settings."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": x})
    started = time.perf_counter()
    for _ in range(requests):
        session.run(None, {"x": x})
    return requests * len(x) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--big-requests", type=int, default=40)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--stream-requests",
        type=int,
        default=16,
        help="requests per ModelStreamInfer stream (connections / this many streams)",
    )
    args = parser.parse_args()
    for tool in ("h2load", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install nghttp2-client wrk)")

    scratch = Path(tempfile.mkdtemp(prefix="mlaas4hep-triton-"))
    onnx_path = write_model(scratch / "models")
    one = np.random.default_rng(1).normal(size=(1, FEATURES)).astype(np.float32)
    big = np.random.default_rng(2).normal(size=(1024, FEATURES)).astype(np.float32)
    request = grpc_request(one)
    (scratch / "grpc.bin").write_bytes(grpc_frame(request))
    body, head_length = http_body(one)
    (scratch / "http.bin").write_bytes(body)
    (scratch / "post.lua").write_text(
        'wrk.method = "POST"\n'
        f'local f = io.open("{scratch / "http.bin"}", "rb")\n'
        'wrk.body = f:read("*a")\nf:close()\n'
        f'wrk.headers["Inference-Header-Content-Length"] = "{head_length}"\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    grpc_port = free_port()
    with running_server(
        scratch / "models", "--grpc-port", str(grpc_port), "--workers", str(args.workers)
    ) as url:
        grpc_url = f"127.0.0.1:{grpc_port}"
        expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
            None, {"x": one}
        )[0]
        check_answers(grpc_url, request, expected)
        grpc_rate = h2load(
            f"http://{grpc_url}/inference.GRPCInferenceService/ModelInfer",
            scratch / "grpc.bin",
            connections=args.connections,
            duration=args.duration,
            messages=1,
            server=url,
        )
        streams = max(1, args.connections // args.stream_requests)
        (scratch / "stream.bin").write_bytes(grpc_frame(request) * args.stream_requests)
        stream_rate = h2load(
            f"http://{grpc_url}/inference.GRPCInferenceService/ModelStreamInfer",
            scratch / "stream.bin",
            connections=streams,
            duration=args.duration,
            messages=args.stream_requests,
            server=url,
        )
        http_rate = wrk(
            f"{url}/v2/models/mlp/infer",
            scratch / "post.lua",
            connections=args.connections,
            duration=args.duration,
        )
        served_rows = big_batches(grpc_url, big, args.big_requests)
    local_rows = in_process(onnx_path, big, args.big_requests)

    print(
        f"\n(a) batch 1, {args.connections} concurrent requests, {args.duration} s, {args.workers} server worker(s)\n"
    )
    print("| protocol | load generator | infer/s | mean ms per call | errors |")
    print("| --- | --- | --: | --: | --: |")
    print(
        f"| gRPC ModelInfer | h2load | {grpc_rate['rps']:,.0f} | {grpc_rate['mean_ms']:.2f} | {grpc_rate['errors']:.0f} |"
    )
    print(
        f"| gRPC ModelStreamInfer, {streams} × {args.stream_requests} | h2load | {stream_rate['rps']:,.0f} | {stream_rate['mean_ms']:.2f} | {stream_rate['errors']:.0f} |"
    )
    print(
        f"| HTTP v2 infer, binary tensors | wrk | {http_rate['rps']:,.0f} | {http_rate['mean_ms']:.2f} | {http_rate['errors']:.0f} |"
    )
    print(f"\n(b) batches of 1024 rows, {args.big_requests} requests in a row\n")
    print("| path | rows/s | of in-process |")
    print("| --- | --: | --: |")
    print(f"| served (tritonclient.grpc) | {served_rows:,.0f} | {served_rows / local_rows:.0%} |")
    print(f"| ONNX Runtime in-process | {local_rows:,.0f} | 100% |")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
