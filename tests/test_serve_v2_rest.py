"""The Open Inference Protocol v2 over REST, driven by Triton's own HTTP client
(binary and JSON tensors, sync and async) against a real server on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from onnx import TensorProto, helper
from serving import (
    half_graph,
    onnx_predict,
    running_server,
    write_graph,
    write_onnx_mlp,
    write_two_in_two_out,
)
from tritonclient.utils import InferenceServerException

RNG = np.random.default_rng(17)


def strings_graph() -> onnx.GraphProto:
    """Strings in, the same strings out."""
    return helper.make_graph(
        [helper.make_node("Identity", ["TEXT"], ["ECHO"])],
        "strings",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["batch", 2])],
    )


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v2") / "models"
    write_onnx_mlp(root / "mlp" / "1", inputs=4, classes=3, labels=["a", "b", "c"])
    write_two_in_two_out(root / "both" / "1")
    write_graph(root / "half" / "1", half_graph())
    write_graph(root / "strings" / "1", strings_graph())
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[str]:
    with running_server(repository) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=server.removeprefix("http://"), concurrency=4)
    yield triton
    triton.close()


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "mlaas4hep"
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready("mlp")
    assert not client.is_model_ready("absent")
    model = client.get_model_metadata("both")
    assert model["versions"] == ["1"]
    assert model["platform"] == "onnxruntime_onnx"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in model["inputs"]} == {
        "a": ("FP32", [-1, 3]),
        "b": ("FP32", [-1, 3]),
    }
    config = client.get_model_config("mlp")
    assert config["name"] == "mlp"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["input"][0]["name"] == "x"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_several_inputs_and_outputs(
    client: httpclient.InferenceServerClient, binary: bool
) -> None:
    a = RNG.normal(size=(5, 3)).astype(np.float32)
    b = RNG.normal(size=(5, 3)).astype(np.float32)
    inputs = [
        httpclient.InferInput("a", [5, 3], "FP32"),
        httpclient.InferInput("b", [5, 3], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("product", "sum")]
    result = client.infer("both", inputs, outputs=outputs, request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("sum"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("product"), a * b, rtol=1e-6)
    response = result.get_response()
    assert response["id"] == "r-1"
    assert response["model_version"] == "1"
    only = client.infer(
        "both", inputs, outputs=[httpclient.InferRequestedOutput("sum", binary_data=binary)]
    )
    assert only.as_numpy("product") is None
    np.testing.assert_allclose(only.as_numpy("sum"), a + b, rtol=1e-6)


def test_infer_equals_onnx_runtime_and_all_outputs_by_default(
    client: httpclient.InferenceServerClient, repository: Path
) -> None:
    x = RNG.normal(size=(7, 4)).astype(np.float32)
    request = httpclient.InferInput("x", list(x.shape), "FP32")
    request.set_data_from_numpy(x)
    result = client.infer("mlp", [request])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"),
        onnx_predict(repository / "mlp" / "1" / "model.onnx", x),
        rtol=1e-5,
    )


def test_fp16_and_bytes(client: httpclient.InferenceServerClient) -> None:
    x = RNG.normal(size=(3, 4)).astype(np.float16)
    for binary in (True, False):
        request = httpclient.InferInput("X", [3, 4], "FP16")
        request.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(
            "half", [request], outputs=[httpclient.InferRequestedOutput("Y", binary_data=binary)]
        )
        assert result.as_numpy("Y").dtype == np.float16
        np.testing.assert_array_equal(result.as_numpy("Y"), x * np.float16(2))
    text = np.array([["higgs", "top"], ["ünïcode", ""]], dtype=object)
    for binary in (True, False):
        request = httpclient.InferInput("TEXT", [2, 2], "BYTES")
        request.set_data_from_numpy(text, binary_data=binary)
        result = client.infer(
            "strings",
            [request],
            outputs=[httpclient.InferRequestedOutput("ECHO", binary_data=binary)],
        )
        echoed = result.as_numpy("ECHO")
        assert [
            [v.decode() if isinstance(v, bytes) else v for v in row] for row in echoed
        ] == text.tolist()


def test_async_client_and_dynamic_batching(server: str, repository: Path) -> None:
    xs = [RNG.normal(size=(1, 4)).astype(np.float32) for _ in range(64)]

    async def everyone() -> list[np.ndarray]:
        triton = aiohttpclient.InferenceServerClient(
            url=server.removeprefix("http://"), conn_limit=64
        )
        try:

            async def one(x: np.ndarray) -> np.ndarray:
                request = aiohttpclient.InferInput("x", [1, 4], "FP32")
                request.set_data_from_numpy(x)
                result = await triton.infer("mlp", [request])
                answer: np.ndarray = result.as_numpy("probabilities")
                return answer

            return await asyncio.gather(*(one(x) for x in xs))
        finally:
            await triton.close()

    before = httpx.get(f"{server}/v2/models/mlp/stats").json()["model_stats"][0]
    answers = asyncio.run(everyone())
    expected = onnx_predict(repository / "mlp" / "1" / "model.onnx", np.concatenate(xs))
    np.testing.assert_allclose(np.concatenate(answers), expected, rtol=1e-5)
    after = httpx.get(f"{server}/v2/models/mlp/stats").json()["model_stats"][0]
    requests = (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    )
    calls = after["execution_count"] - before["execution_count"]
    assert requests == 64
    assert calls < requests  # concurrent requests shared model calls
    assert (
        sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]
    )
    assert 'mlaas4hep_batch_size_count{model="mlp"}' in httpx.get(f"{server}/metrics").text


def test_repository_index_load_and_unload(
    client: httpclient.InferenceServerClient, tmp_path: Path
) -> None:
    names = {m["name"] for m in client.get_model_repository_index()}
    assert {"mlp", "both", "half", "strings"} <= names
    client.unload_model("half")
    assert not client.is_model_ready("half")
    request = httpclient.InferInput("X", [1, 4], "FP16")
    request.set_data_from_numpy(np.ones((1, 4), np.float16))
    with pytest.raises(InferenceServerException, match="unloaded"):
        client.infer("half", [request])
    client.load_model("half")
    assert client.is_model_ready("half")

    fresh = write_onnx_mlp(tmp_path / "fresh", inputs=2, classes=2, seed=3)
    client.load_model("uploaded", files={"file:1/model.onnx": (fresh / "model.onnx").read_bytes()})
    x = RNG.normal(size=(2, 2)).astype(np.float32)
    request = httpclient.InferInput("x", [2, 2], "FP32")
    request.set_data_from_numpy(x)
    np.testing.assert_allclose(
        client.infer("uploaded", [request]).as_numpy("probabilities"),
        onnx_predict(fresh / "model.onnx", x),
        rtol=1e-5,
    )
    ready = client.get_model_repository_index()
    assert {"name": "uploaded", "version": "1", "state": "READY", "reason": ""} in ready

    config = json.dumps(
        {
            "name": "uploaded",
            "max_batch_size": 4,
            "dynamic_batching": {"max_queue_delay_microseconds": 100},
        }
    )
    client.load_model("uploaded", config=config)
    assert client.get_model_config("uploaded")["max_batch_size"] == 4


def raw_infer(
    server: str,
    model: str,
    document: dict[str, object],
    binary: bytes = b"",
    path_version: str | None = None,
) -> httpx.Response:
    head = json.dumps(document).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))} if binary else {}
    version = f"/versions/{path_version}" if path_version else ""
    return httpx.post(
        f"{server}/v2/models/{model}{version}/infer", content=head + binary, headers=headers
    )


GOOD = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
BAD = [
    ("wrong datatype", "mlp", {"inputs": [{**GOOD, "datatype": "FP64"}]}, b"", None, 400, "FP64"),
    ("wrong shape", "mlp", {"inputs": [{**GOOD, "shape": [2, 2]}]}, b"", None, 400, "shape"),
    ("data count", "mlp", {"inputs": [{**GOOD, "shape": [2, 4]}]}, b"", None, 400, "8 elements"),
    ("unknown input", "mlp", {"inputs": [GOOD, {**GOOD, "name": "y"}]}, b"", None, 400, "'y'"),
    ("missing input", "both", {"inputs": [{**GOOD, "name": "a", "shape": [1, 3], "data": [1, 2, 3]}]}, b"", None, 400, "'b'"),
    ("unknown datatype", "mlp", {"inputs": [{**GOOD, "datatype": "FP8"}]}, b"", None, 400, "FP8"),
    ("unknown output", "mlp", {"inputs": [GOOD], "outputs": [{"name": "nope"}]}, b"", None, 400, "nope"),
    ("binary too short", "mlp", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}, b"\0" * 12, None, 400, "binary_data_size"),
    ("binary left over", "mlp", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}, b"\0" * 20, None, 400, "after the JSON header"),
    ("binary size wrong for shape", "mlp", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}, b"\0" * 12, None, 400, "needs 16 bytes"),
    ("no such version", "mlp", {"inputs": [GOOD]}, b"", "7", 404, "7"),
    ("no such model", "absent", {"inputs": [GOOD]}, b"", None, 404, "absent"),
    ("no inputs", "mlp", {"outputs": []}, b"", None, 400, "inputs"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "model", "document", "binary", "version", "status", "word"),
    BAD,
    ids=[b[0] for b in BAD],
)
def test_bad_requests(
    server: str,
    case: str,
    model: str,
    document: dict[str, object],
    binary: bytes,
    version: str | None,
    status: int,
    word: str,
) -> None:
    del case
    answer = raw_infer(server, model, document, binary, version)
    assert answer.status_code == status, answer.text
    assert word in answer.json()["error"]
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200  # still up


def test_header_length_beyond_the_body(server: str) -> None:
    answer = httpx.post(
        f"{server}/v2/models/mlp/infer",
        content=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": "500"},
    )
    assert answer.status_code == 400
    assert "Inference-Header-Content-Length" in answer.json()["error"]


def test_load_refuses_bad_files(server: str) -> None:
    garbage = base64.b64encode(b"not onnx").decode()
    answer = httpx.post(
        f"{server}/v2/repository/models/junk/load",
        json={"parameters": {"file:1/model.onnx": garbage}},
    )
    assert 400 <= answer.status_code < 500
    assert "model.onnx" in answer.json()["error"]
    escape = base64.b64encode(b"x").decode()
    answer = httpx.post(
        f"{server}/v2/repository/models/junk/load", json={"parameters": {"file:1/../../x": escape}}
    )
    assert answer.status_code == 400
    assert "junk" not in {m["name"] for m in httpx.post(f"{server}/v2/repository/index").json()}


ONNX_CONFIG = """
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

TORCH_CONFIG = """
name: "scaler"
backend: "pytorch"
max_batch_size: 16
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def test_a_triton_repository_written_by_hand_is_served_unchanged(tmp_path: Path) -> None:
    """config.pbtxt + 1/model.onnx and config.pbtxt + 1/model.pt, as Triton reads them."""

    class Scale(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 3 * x + 1

    root = tmp_path / "triton"
    onnx_file = (
        write_onnx_mlp(root / "classifier" / "1", inputs=4, classes=3, seed=9) / "model.onnx"
    )
    (root / "classifier" / "config.pbtxt").write_text(ONNX_CONFIG)
    (root / "scaler" / "1").mkdir(parents=True)
    torch.jit.script(Scale()).save(str(root / "scaler" / "1" / "model.pt"))
    (root / "scaler" / "config.pbtxt").write_text(TORCH_CONFIG)
    with running_server(root) as url:
        triton = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
        config = triton.get_model_config("scaler")
        assert config["max_batch_size"] == 16
        assert config["input"][0]["name"] == "INPUT__0"
        metadata = triton.get_model_metadata("scaler")
        assert metadata["platform"] == "pytorch_libtorch"
        assert metadata["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, -1]}]
        values = RNG.normal(size=(2, 5)).astype(np.float32)
        request = httpclient.InferInput("INPUT__0", [2, 5], "FP32")
        request.set_data_from_numpy(values)
        np.testing.assert_allclose(
            triton.infer("scaler", [request]).as_numpy("OUTPUT__0"), 3 * values + 1, rtol=1e-6
        )

        assert (
            triton.get_model_config("classifier")["dynamic_batching"][
                "max_queue_delay_microseconds"
            ]
            == 200
        )
        x = RNG.normal(size=(3, 4)).astype(np.float32)
        request = httpclient.InferInput("x", [3, 4], "FP32")
        request.set_data_from_numpy(x)
        result = triton.infer("classifier", [request]).as_numpy("probabilities")
        np.testing.assert_allclose(result, onnx_predict(onnx_file, x), rtol=1e-5)
        triton.close()
    assert sorted(p.name for p in (root / "classifier").iterdir()) == ["1", "config.pbtxt"]
