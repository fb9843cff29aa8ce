"""Triton's gRPC API end to end: a real ``mlaas4hep serve --grpc-port`` process on
loopback, Triton's own clients (sync, asyncio, streaming) and the generated stub
for what tritonclient never sends (typed contents, malformed raw contents);
answers compared with ONNX Runtime and PyTorch in this process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import shutil
import socket
import subprocess
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
import onnx
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from onnx import TensorProto, helper
from serving import (
    half_graph,
    onnx_predict,
    running_server,
    write_graph,
    write_onnx_mlp,
    write_two_in_two_out,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve import errors
from mlaas4hep.serve.config import ServerSettings
from mlaas4hep.serve.grpc_server import TritonService, from_contents, start_grpc_server, status_code
from mlaas4hep.testing import free_port, wait_for_port

RNG = np.random.default_rng(29)


# -- models -------------------------------------------------------------------------


def typed_graph() -> onnx.GraphProto:
    """TEXT (strings) echoed as ECHO; COUNT (INT64) + 1 as NEXT."""
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    return helper.make_graph(
        [
            helper.make_node("Identity", ["TEXT"], ["ECHO"]),
            helper.make_node("Add", ["COUNT", "one"], ["NEXT"]),
        ],
        "typed",
        [
            helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch", 2]),
            helper.make_tensor_value_info("COUNT", TensorProto.INT64, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["batch", 2]),
            helper.make_tensor_value_info("NEXT", TensorProto.INT64, ["batch", 2]),
        ],
        initializer=[one],
    )


class PointCloud(torch.nn.Module):
    """ParticleNet-like signature: points [B, 2, P], features [B, 5, P], mask [B, 1, P]."""

    def forward(
        self, points: torch.Tensor, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        count = mask.sum(-1).clamp(min=1.0)
        pooled = (features * mask).sum(-1) / count
        return torch.softmax(pooled, dim=1), (points * mask).abs().sum(-1)


POINTCLOUD_CONFIG = """
name: "pointcloud"
platform: "pytorch_libtorch"
max_batch_size: 0
input [
  { name: "pf_points__0" data_type: TYPE_FP32 dims: [ -1, 2, -1 ] },
  { name: "pf_features__1" data_type: TYPE_FP32 dims: [ -1, 5, -1 ] },
  { name: "pf_mask__2" data_type: TYPE_FP32 dims: [ -1, 1, -1 ] }
]
output [
  { name: "softmax__0" data_type: TYPE_FP32 dims: [ -1, 5 ] },
  { name: "spread__1" data_type: TYPE_FP32 dims: [ -1, 2 ] }
]
"""


def write_pointcloud(model_dir: Path) -> Path:
    (model_dir / "1").mkdir(parents=True)
    torch.jit.script(PointCloud()).save(str(model_dir / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    (model_dir / "config.pbtxt").write_text(POINTCLOUD_CONFIG)
    return model_dir


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc") / "models"
    write_onnx_mlp(root / "mlp" / "1", inputs=4, classes=3)
    write_onnx_mlp(root / "stats" / "1", inputs=4, classes=3, seed=1)
    write_onnx_mlp(root / "reload" / "1", inputs=4, classes=3, seed=2)
    write_two_in_two_out(root / "both" / "1")
    write_graph(root / "half" / "1", half_graph())
    write_graph(root / "typed" / "1", typed_graph())
    write_pointcloud(root / "pointcloud")
    return root


@pytest.fixture(scope="module")
def address(repository: Path) -> Iterator[str]:
    """host:port of the gRPC server."""
    port = free_port()
    with running_server(repository, "--grpc-port", str(port)):
        assert wait_for_port(port, 30)
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(address)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def stub(address: str) -> Iterator[Any]:
    """The generated stub, for requests tritonclient cannot send."""
    with grpc.insecure_channel(address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def tensor(name: str, array: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    request = grpcclient.InferInput(name, list(array.shape), datatype)
    request.set_data_from_numpy(array)
    return request


def mlp_input(rows: int = 1) -> tuple[np.ndarray, grpcclient.InferInput]:
    x = RNG.normal(size=(rows, 4)).astype(np.float32)
    return x, tensor("x", x)


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


# -- health, metadata, configuration ------------------------------------------------


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    server = client.get_server_metadata()
    assert server.name == "mlaas4hep"
    assert "model_repository" in server.extensions
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("absent")
    assert not client.is_model_ready("mlp", "7")

    both = client.get_model_metadata("both")
    assert (both.name, list(both.versions), both.platform) == ("both", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in both.inputs] == [
        ("a", "FP32", [-1, 3]),
        ("b", "FP32", [-1, 3]),
    ]
    assert {t.name for t in both.outputs} == {"sum", "product"}
    typed = client.get_model_metadata("typed", as_json=True)
    assert {t["name"]: t["datatype"] for t in typed["inputs"]} == {
        "TEXT": "BYTES",
        "COUNT": "INT64",
    }

    config = client.get_model_config("mlp").config
    assert (config.name, config.platform) == ("mlp", "onnxruntime_onnx")
    assert [i.name for i in config.input] == ["x"]


def test_pointcloud_from_config_pbtxt(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("pointcloud")
    assert metadata.platform == "pytorch_libtorch"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("pf_points__0", "FP32", [-1, 2, -1]),
        ("pf_features__1", "FP32", [-1, 5, -1]),
        ("pf_mask__2", "FP32", [-1, 1, -1]),
    ]
    config = client.get_model_config("pointcloud").config
    assert config.max_batch_size == 0
    assert [list(i.dims) for i in config.input] == [[-1, 2, -1], [-1, 5, -1], [-1, 1, -1]]
    module = PointCloud()
    for events, points in ((3, 7), (2, 11)):  # the point count varies between requests
        arrays = [
            RNG.normal(size=(events, 2, points)).astype(np.float32),
            RNG.normal(size=(events, 5, points)).astype(np.float32),
            (RNG.random(size=(events, 1, points)) > 0.3).astype(np.float32),
        ]
        names = ["pf_points__0", "pf_features__1", "pf_mask__2"]
        result = client.infer(
            "pointcloud", [tensor(n, a) for n, a in zip(names, arrays, strict=True)]
        )
        with torch.inference_mode():
            softmax, spread = module(*(torch.from_numpy(a) for a in arrays))
        np.testing.assert_allclose(result.as_numpy("softmax__0"), softmax.numpy(), rtol=1e-5)
        np.testing.assert_allclose(result.as_numpy("spread__1"), spread.numpy(), rtol=1e-5)


# -- inference -----------------------------------------------------------------------


def test_infer_equals_onnx_runtime(
    client: grpcclient.InferenceServerClient, repository: Path
) -> None:
    x, request = mlp_input(7)
    result = client.infer("mlp", [request], request_id="r-7")
    np.testing.assert_allclose(
        result.as_numpy("probabilities"),
        onnx_predict(repository / "mlp" / "1" / "model.onnx", x),
        rtol=1e-5,
    )
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r-7", "mlp", "1")


def test_two_inputs_two_outputs_and_output_subset(client: grpcclient.InferenceServerClient) -> None:
    a = RNG.normal(size=(5, 3)).astype(np.float32)
    b = RNG.normal(size=(5, 3)).astype(np.float32)
    inputs = [tensor("a", a), tensor("b", b)]
    both = client.infer("both", inputs)
    np.testing.assert_allclose(both.as_numpy("sum"), a + b, rtol=1e-6)
    np.testing.assert_allclose(both.as_numpy("product"), a * b, rtol=1e-6)
    only = client.infer("both", inputs, outputs=[grpcclient.InferRequestedOutput("product")])
    assert [o.name for o in only.get_response().outputs] == ["product"]
    assert only.as_numpy("sum") is None
    np.testing.assert_allclose(only.as_numpy("product"), a * b, rtol=1e-6)


def test_fp16_and_int64(client: grpcclient.InferenceServerClient) -> None:
    x = RNG.normal(size=(3, 4)).astype(np.float16)
    half = client.infer("half", [tensor("X", x, "FP16")]).as_numpy("Y")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, x * np.float16(2))
    text = np.array([["higgs", "top"], ["ünïcode", ""]], dtype=object)
    count = np.array([[1, -2], [2**40, 0]], dtype=np.int64)
    result = client.infer("typed", [tensor("TEXT", text, "BYTES"), tensor("COUNT", count, "INT64")])
    assert result.as_numpy("NEXT").dtype == np.int64
    np.testing.assert_array_equal(result.as_numpy("NEXT"), count + 1)


def typed_request(text: list[bytes], counts: list[int]) -> Any:
    """A request of the ``typed`` model with typed contents (tritonclient sends raw only)."""
    request = service_pb2.ModelInferRequest(model_name="typed")
    shape = [1, len(text)]
    request.inputs.add(name="TEXT", datatype="BYTES", shape=shape).contents.bytes_contents.extend(
        text
    )
    request.inputs.add(name="COUNT", datatype="INT64", shape=shape).contents.int64_contents.extend(
        counts
    )
    return request


def raw_outputs(response: Any) -> dict[str, bytes]:
    return {
        o.name: raw for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def test_typed_contents(stub: Any, repository: Path) -> None:
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="mlp", id="typed")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(
        x.ravel().tolist()
    )
    response = stub.ModelInfer(request)
    assert response.id == "typed"
    probabilities = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 3)
    np.testing.assert_allclose(
        probabilities, onnx_predict(repository / "mlp" / "1" / "model.onnx", x), rtol=1e-5
    )
    outputs = raw_outputs(stub.ModelInfer(typed_request([b"pt", b"eta"], [41, -1])))
    np.testing.assert_array_equal(np.frombuffer(outputs["NEXT"], np.int64), [42, 0])


def test_bytes(client: grpcclient.InferenceServerClient, stub: Any) -> None:
    text = np.array([["higgs", "top"], ["ünïcode", ""]], dtype=object)
    count = np.zeros((2, 2), np.int64)
    result = client.infer("typed", [tensor("TEXT", text, "BYTES"), tensor("COUNT", count, "INT64")])
    assert [[v.decode() for v in row] for row in result.as_numpy("ECHO")] == text.tolist()
    outputs = raw_outputs(stub.ModelInfer(typed_request([b"pt", b"eta"], [0, 0])))
    assert outputs["ECHO"] == b"\x02\0\0\0pt\x03\0\0\0eta"  # length-prefixed, as tritonclient reads


def test_async_client_and_stream(address: str, repository: Path) -> None:
    xs = [RNG.normal(size=(1, 4)).astype(np.float32) for _ in range(16)]

    async def run() -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        triton = aiogrpcclient.InferenceServerClient(address)
        try:
            assert await triton.is_server_ready()

            async def one(x: np.ndarray) -> np.ndarray:
                result = await triton.infer("mlp", [tensor("x", x)])
                answer: np.ndarray = result.as_numpy("probabilities")
                return answer

            answers = await asyncio.gather(*(one(x) for x in xs))

            async def requests() -> AsyncIterator[dict[str, Any]]:
                for i, x in enumerate(xs[:4]):
                    yield {"model_name": "mlp", "inputs": [tensor("x", x)], "request_id": str(i)}

            streamed = {}
            async for result, error in triton.stream_infer(requests()):
                assert error is None
                streamed[result.get_response().id] = result.as_numpy("probabilities")
                if len(streamed) == 4:
                    break
            return answers, streamed
        finally:
            await triton.close()

    answers, streamed = asyncio.run(run())
    expected = onnx_predict(repository / "mlp" / "1" / "model.onnx", np.concatenate(xs))
    np.testing.assert_allclose(np.concatenate(answers), expected, rtol=1e-5)
    for key, value in streamed.items():
        np.testing.assert_allclose(value[0], expected[int(key)], rtol=1e-5)


def test_stream_goes_on_after_an_error(address: str, repository: Path) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    triton = grpcclient.InferenceServerClient(address)
    triton.start_stream(callback=lambda result, error: answers.put((result, error)))
    xs = {}
    try:
        for i in range(6):
            if i == 3:
                bad = np.ones((1, 5), np.float32)
                triton.async_stream_infer("mlp", [tensor("x", bad)], request_id="bad")
                continue
            xs[str(i)], request = mlp_input()
            triton.async_stream_infer("mlp", [request], request_id=str(i))
        received = [answers.get(timeout=20) for _ in range(6)]
    finally:
        triton.stop_stream()
        triton.close()
    failures = [error for result, error in received if error is not None]
    assert len(failures) == 1
    assert "shape [1, 5]" in failures[0].message()
    results = {r.get_response().id: r.as_numpy("probabilities") for r, e in received if e is None}
    assert sorted(results) == sorted(xs)
    model = repository / "mlp" / "1" / "model.onnx"
    for key, x in xs.items():
        np.testing.assert_allclose(results[key], onnx_predict(model, x), rtol=1e-5)


# -- repository and statistics ---------------------------------------------------------


def test_unload_load_and_new_version(
    client: grpcclient.InferenceServerClient, tmp_path: Path
) -> None:
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert {"mlp", "both", "pointcloud", "reload"} <= {name for name, _ in index}
    x, request = mlp_input(2)
    client.infer("reload", [request])
    client.unload_model("reload")
    assert not client.is_model_ready("reload")
    with pytest.raises(InferenceServerException, match="unloaded") as unloaded:
        client.infer("reload", [request])
    assert unloaded.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
    client.load_model("reload")
    assert client.is_model_ready("reload")

    fresh = write_onnx_mlp(tmp_path / "fresh", inputs=4, classes=3, seed=9)
    client.load_model("reload", files={"file:1/model.onnx": (fresh / "model.onnx").read_bytes()})
    result = client.infer("reload", [request])
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), onnx_predict(fresh / "model.onnx", x), rtol=1e-5
    )
    assert list(client.get_model_metadata("reload").versions) == ["1", "2"]
    ready = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "reload", "version": "2", "state": "READY"} in ready

    assert client.get_model_config("reload").config.max_batch_size > 0
    client.load_model("reload", config=json.dumps({"max_batch_size": 0}))
    config = client.get_model_config("reload").config
    assert (config.name, config.max_batch_size) == ("reload", 0)
    assert client.is_model_ready("reload")


def test_statistics(client: grpcclient.InferenceServerClient) -> None:
    for rows in (1, 2, 3, 4):
        client.infer("stats", [mlp_input(rows)[1]])
    (stats,) = client.get_inference_statistics("stats").model_stats
    assert (stats.name, stats.version) == ("stats", "1")
    assert stats.inference_stats.success.count == 4
    assert stats.inference_stats.fail.count == 0
    assert stats.inference_count == 10
    assert 1 <= stats.execution_count <= stats.inference_count
    assert stats.last_inference > 0
    everyone = client.get_inference_statistics(as_json=True)["model_stats"]
    assert "stats" in {entry["name"] for entry in everyone}
    with pytest.raises(InferenceServerException, match="absent") as caught:
        client.get_inference_statistics("absent")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_load_refuses_bad_files(client: grpcclient.InferenceServerClient) -> None:
    cases = [
        ({"file:1/model.onnx": b"not onnx"}, "FAILED_PRECONDITION", "model.onnx"),
        ({"file:1/../../escape": b"x"}, "INVALID_ARGUMENT", "leave the model directory"),
    ]
    for files, code, words in cases:
        with pytest.raises(InferenceServerException, match=words) as caught:
            client.load_model("junk", files=files)
        assert caught.value.status() == f"StatusCode.{code}"
    assert "junk" not in {m.name for m in client.get_model_repository_index().models}


# -- errors ---------------------------------------------------------------------------

X = np.ones((1, 4), np.float32)
BAD = [
    ("wrong datatype", "mlp", [("x", X.astype(np.float64), "FP64")], "", "INVALID_ARGUMENT", "FP64"),
    ("wrong shape", "mlp", [("x", np.ones((2, 2), np.float32), "FP32")], "", "INVALID_ARGUMENT", "shape [2, 2]"),
    ("unknown input", "mlp", [("x", X, "FP32"), ("y", X, "FP32")], "", "INVALID_ARGUMENT", "'y'"),
    ("missing input", "both", [("a", np.ones((1, 3), np.float32), "FP32")], "", "INVALID_ARGUMENT", "'b'"),
    ("unknown model", "absent", [("x", X, "FP32")], "", "NOT_FOUND", "absent"),
    ("no such version", "mlp", [("x", X, "FP32")], "7", "NOT_FOUND", "7"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "model", "inputs", "version", "code", "words"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_requests(
    client: grpcclient.InferenceServerClient,
    case: str,
    model: str,
    inputs: list[tuple[str, np.ndarray, str]],
    version: str,
    code: str,
    words: str,
) -> None:
    del case
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [tensor(*i) for i in inputs], model_version=version)
    assert caught.value.status() == f"StatusCode.{code}"
    assert words in caught.value.message()
    assert client.is_server_ready()
    client.infer("mlp", [mlp_input()[1]])  # still answers


def test_malformed_raw_contents(stub: Any) -> None:
    def request(*raw: bytes, datatype: str = "FP32") -> Any:
        message = service_pb2.ModelInferRequest(model_name="mlp", raw_input_contents=list(raw))
        message.inputs.add(name="x", datatype=datatype, shape=[1, 4])
        return message

    cases = [
        (request(X.tobytes()[:12]), "needs 16 bytes"),
        (request(X.tobytes(), X.tobytes()), "one per input"),
        (request(X.tobytes(), datatype="FP8"), "unknown datatype"),
    ]
    half = service_pb2.ModelInferRequest(model_name="half")
    half.inputs.add(name="X", datatype="FP16", shape=[1, 1]).contents.fp32_contents.append(1.0)
    cases.append((half, "raw_input_contents"))
    for message, words in cases:
        error = rpc_error(lambda m=message: stub.ModelInfer(m))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in error.details()
    assert stub.ServerLive(service_pb2.ServerLiveRequest()).live


def test_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="shared memory") as caught:
        client.get_system_shared_memory_status()
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    top = grpcclient.InferRequestedOutput("probabilities", class_count=2)
    with pytest.raises(InferenceServerException, match="classification") as caught:
        client.infer("mlp", [mlp_input()[1]], outputs=[top])
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"


def test_typed_contents_checks() -> None:
    contents = service_pb2.InferTensorContents(int_contents=[-128, 127])
    np.testing.assert_array_equal(from_contents("i", "INT8", (2,), contents), [-128, 127])
    assert from_contents("i", "INT8", (2,), contents).dtype == np.int8
    bad = [
        ("INT8", service_pb2.InferTensorContents(int_contents=[128]), "range of INT8"),
        ("FP32", service_pb2.InferTensorContents(fp64_contents=[1.0]), "fp32_contents"),
        ("BOOL", service_pb2.InferTensorContents(bool_contents=[True, False]), "needs 1"),
    ]
    for datatype, wrong, words in bad:
        with pytest.raises(errors.BadRequest, match=words):
            from_contents("i", datatype, (1,), wrong)


def test_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        state = types.SimpleNamespace(settings=ServerSettings(grpc_port=port))
        with pytest.raises(ConfigError, match=f"cannot serve gRPC on 127.0.0.1:{port}"):
            asyncio.run(start_grpc_server(state))  # type: ignore[arg-type]


def test_status_codes_and_readiness() -> None:
    expected = {
        errors.BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
        errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
        errors.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
        errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
        errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
        errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    }
    for kind, code in expected.items():
        assert status_code(kind("x")) == code
    service = TritonService(types.SimpleNamespace(draining=True))  # type: ignore[arg-type]
    assert not asyncio.run(service.ServerReady(None, None)).ready


class Aborted(Exception):
    """What the fake context's abort raises, as grpc.aio's raises AbortError."""


class FakeContext:
    """The part of grpc.aio.ServicerContext the service uses."""

    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "req-42"),)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise Aborted


def test_unexpected_errors_are_internal(caplog: pytest.LogCaptureFixture) -> None:
    # A state without models: the metadata lookup fails with AttributeError.
    state = types.SimpleNamespace(auth=types.SimpleNamespace(enabled=False))
    state.authorize = lambda _token, _scope: None
    service = TritonService(state)  # type: ignore[arg-type]
    context = FakeContext()
    request = service_pb2.ModelMetadataRequest(name="mlp")
    with pytest.raises(Aborted):
        asyncio.run(service.ModelMetadata(request, context))
    assert context.status == (grpc.StatusCode.INTERNAL, "internal error (request id req-42)")
    (record,) = [r for r in caplog.records if r.name == "mlaas4hep.serve.grpc"]
    assert record.exc_info is not None
    assert record.request_id == "req-42"  # type: ignore[attr-defined]


# -- TLS and tokens ---------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) PEM files."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_and_tokens(tmp_path: Path) -> None:
    write_onnx_mlp(tmp_path / "models" / "mlp" / "1")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("w-token write writer\nr-token read reader\n")
    cert, key = self_signed(tmp_path)
    port = free_port()
    options = ["--auth-tokens", str(tokens), "--tls-cert", str(cert), "--tls-key", str(key)]
    with running_server(tmp_path / "models", "--grpc-port", str(port), *options):
        assert wait_for_port(port, 30)
        triton = grpcclient.InferenceServerClient(
            f"127.0.0.1:{port}", ssl=True, root_certificates=str(cert)
        )
        try:
            assert triton.is_server_live()
            assert triton.is_server_ready()
            _, request = mlp_input()
            cases = [
                (None, "StatusCode.UNAUTHENTICATED"),
                ({"authorization": "Bearer nope"}, "StatusCode.UNAUTHENTICATED"),
            ]
            for headers, status in cases:
                with pytest.raises(InferenceServerException) as caught:
                    triton.infer("mlp", [request], headers=headers)
                assert caught.value.status() == status
            reader = {"authorization": "Bearer r-token"}
            triton.infer("mlp", [request], headers=reader)
            with pytest.raises(InferenceServerException) as caught:
                triton.unload_model("mlp", headers=reader)
            assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
            triton.unload_model("mlp", headers={"authorization": "Bearer w-token"})

            answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
            triton.start_stream(callback=lambda result, error: answers.put((result, error)))
            try:
                # The server ends the stream at once: the request may not get out.
                with contextlib.suppress(InferenceServerException):
                    triton.async_stream_infer("mlp", [request])
                _, error = answers.get(timeout=10)
                assert error.status() == "StatusCode.UNAUTHENTICATED"
            finally:
                triton.stop_stream()
        finally:
            triton.close()
