"""Helpers for the server tests: a real ``mlaas4hep serve`` process on loopback,
and small real models to put in its repository."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper

from mlaas4hep.testing import free_port

__all__ = [
    "free_port",
    "half_graph",
    "onnx_predict",
    "running_server",
    "write_graph",
    "write_onnx_mlp",
    "write_two_in_two_out",
]


@contextlib.contextmanager
def running_server(
    repository: Path | str, *args: str, log: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start ``mlaas4hep serve`` on a free loopback port; yield its base URL.

    The server is stopped with SIGTERM (a graceful shutdown) at the end; its
    log goes to ``log`` (default: ``server-PORT.log`` beside a local repository).
    """
    port = free_port()
    if log is None:
        folder = repository.parent if isinstance(repository, Path) else Path(tempfile.mkdtemp())
        log = folder / f"server-{port}.log"
    command = [
        sys.executable,
        "-m",
        "mlaas4hep",
        "serve",
        "--repository",
        str(repository),
        "--port",
        str(port),
        *args,
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    scheme = "https" if "--tls-cert" in args else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        _wait_until_live(url, process, log)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_live(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/health/live", timeout=1, verify=False).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server did not come up:\n{log.read_text()}")


def write_onnx_mlp(
    directory: Path,
    *,
    inputs: int = 4,
    hidden: int = 16,
    classes: int = 3,
    seed: int = 0,
    labels: list[str] | None = None,
    params: dict[str, object] | None = None,
) -> Path:
    """An ONNX softmax MLP (input ``x`` ``[-1, inputs]``, output ``probabilities``)
    in ``directory``, with ``labels.txt`` and ``params.json`` when given."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, classes),
        torch.nn.Softmax(dim=1),
    ).eval()
    directory.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, inputs),),
        str(directory / "model.onnx"),
        input_names=["x"],
        output_names=["probabilities"],
        dynamic_axes={"x": {0: "batch"}, "probabilities": {0: "batch"}},
        dynamo=False,
    )
    if labels is not None:
        (directory / "labels.txt").write_text("\n".join(labels) + "\n")
    if params is not None:
        (directory / "params.json").write_text(json.dumps(params))
    return directory


def onnx_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """What ONNX Runtime in this process predicts (the reference for server answers)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.asarray(x, dtype=np.float32)})[0])


def write_two_in_two_out(directory: Path) -> Path:
    """ONNX (torch.onnx): inputs a, b [-1, 3]; outputs sum = a + b, product = a * b."""
    import torch

    class Both(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, a * b

    directory.mkdir(parents=True)
    torch.onnx.export(
        Both(), (torch.zeros(1, 3), torch.zeros(1, 3)), str(directory / "model.onnx"),
        input_names=["a", "b"], output_names=["sum", "product"],
        dynamic_axes={n: {0: "batch"} for n in ("a", "b", "sum", "product")}, dynamo=False,
    )  # fmt: skip
    return directory


def write_graph(directory: Path, graph: onnx.GraphProto) -> Path:
    directory.mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(directory / "model.onnx"))
    return directory


def half_graph() -> onnx.GraphProto:
    """Y = 2 X in FP16."""
    two = helper.make_tensor("two", TensorProto.FLOAT16, [], [2.0])
    return helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["Y"])],
        "half",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, ["batch", 4])],
        initializer=[two],
    )
