"""The Open Inference Protocol v2 over HTTP/REST, with Triton's extensions.

Inference (``POST /v2/models/{m}[/versions/{v}]/infer``) is a fast path like
TFaaS's ``/json``: the application calls :func:`infer_http` directly. Bodies
are JSON, or JSON followed by binary tensor data (Triton's binary tensor data
extension: the ``Inference-Header-Content-Length`` header gives the length of
the JSON part, each binary input says its ``binary_data_size``).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlaas4hep.serve import tensors, v2
from mlaas4hep.serve.api.tfaas import Reply, json_response
from mlaas4hep.serve.errors import BadRequest
from mlaas4hep.serve.state import ServerState

HEADER_LENGTH = b"inference-header-content-length"
_PREFIX = "/v2/models/"


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) of an infer path, None for any other path."""
    if not path.startswith(_PREFIX) or not path.endswith("/infer"):
        return None
    parts = path[len(_PREFIX) : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


async def infer_http(
    state: ServerState, target: tuple[str, str | None], body: bytes, header_length: str | None
) -> Reply:
    """Answer one REST inference request."""
    request = parse_infer(body, header_length, *target)
    response = await v2.infer(state, request)
    return encode_response(response)


def parse_infer(
    body: bytes, header_length: str | None, model: str, version: str | None
) -> v2.InferRequest:
    """An :class:`~mlaas4hep.serve.v2.InferRequest` from a REST body."""
    head, tail = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {header_length!r}, "
                f"the body has {len(body)} bytes"
            )
        size = int(header_length)
        head, tail = body[:size], body[size:]
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the inference request is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise BadRequest("an inference request is a JSON object with a list of 'inputs'")
    inputs = []
    offset = 0
    for number, item in enumerate(document["inputs"]):
        if not isinstance(item, dict):
            raise BadRequest(f"input {number} must be an object with name, shape, datatype")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise BadRequest(f"input {number} needs a 'name' and a 'datatype'")
        shape = tensors.check_shape(name, item.get("shape"))
        binary_size = _parameters(item).get("binary_data_size")
        if binary_size is not None:
            if (
                not isinstance(binary_size, int)
                or binary_size < 0
                or offset + binary_size > len(tail)
            ):
                raise BadRequest(
                    f"input {name!r}: binary_data_size {binary_size!r} runs past the "
                    f"{len(tail)} bytes of binary data"
                )
            array = tensors.from_bytes(name, datatype, shape, tail[offset : offset + binary_size])
            offset += binary_size
        elif "data" in item:
            array = tensors.from_json(name, datatype, shape, item["data"])
        else:
            raise BadRequest(f"input {name!r} has neither 'data' nor binary_data_size")
        inputs.append(v2.InputTensor(name, datatype, shape, array))
    if offset != len(tail):
        raise BadRequest(
            f"the binary inputs' sizes add up to {offset} bytes, the body holds {len(tail)} "
            "after the JSON header"
        )
    wanted = []
    for item in document.get("outputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each requested output must be an object with a 'name'")
        binary = _parameters(item).get("binary_data")
        wanted.append((item["name"], None if binary is None else bool(binary)))
    request_id = document.get("id")
    return v2.InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        outputs=v2.requested_outputs(wanted),
        id=None if request_id is None else str(request_id),
        parameters=_parameters(document),
    )


def _parameters(item: dict[str, Any]) -> dict[str, Any]:
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    return parameters


def encode_response(response: v2.InferResponse) -> Reply:
    """The REST answer: JSON, or JSON + binary outputs with its header length."""
    outputs = []
    chunks = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if tensor.binary:
            raw = tensors.to_bytes(tensor.array, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensors.to_json(tensor.array, tensor.datatype)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if response.id is not None:
        document["id"] = response.id
    document["outputs"] = outputs
    head = orjson.dumps(document)
    if not chunks:
        return 200, head, b"application/json", []
    headers = [(HEADER_LENGTH, str(len(head)).encode())]
    return 200, head + b"".join(chunks), b"application/octet-stream", headers


# -- the other endpoints -----------------------------------------------------------


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.mlaas
    return state


def _authorize(request: Request, scope: str) -> str | None:
    identity = _state(request).authorize(request.headers.get("authorization"), scope)
    return identity.name if identity is not None else None


def _target(request: Request) -> tuple[str, str | None]:
    return request.path_params["model"], request.path_params.get("version")


async def server_metadata(request: Request) -> Response:
    """``GET /v2``."""
    _authorize(request, "read")
    return json_response(v2.server_metadata())


async def model_metadata(request: Request) -> Response:
    """``GET /v2/models/{m}[/versions/{v}]``."""
    _authorize(request, "read")
    return json_response(await v2.model_metadata(_state(request), *_target(request)))


async def model_ready(request: Request) -> Response:
    """``GET /v2/models/{m}[/versions/{v}]/ready``: 200 when ready, 400 when not."""
    _authorize(request, "read")
    name, version = _target(request)
    if await v2.model_ready(_state(request), name, version):
        return json_response({"name": name, "ready": True})
    return json_response(
        {"error": f"model {name!r} is not ready", "name": name, "ready": False}, 400
    )


async def model_config(request: Request) -> Response:
    """``GET /v2/models/{m}[/versions/{v}]/config``: the model configuration as Triton gives it."""
    _authorize(request, "read")
    config = await v2.model_config(_state(request), *_target(request))
    return json_response(config.to_json())


async def model_statistics(request: Request) -> Response:
    """``GET /v2/models[/{m}[/versions/{v}]]/stats``."""
    _authorize(request, "read")
    name = request.path_params.get("model")
    version = request.path_params.get("version")
    return json_response(v2.model_statistics(_state(request), name, version))


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document


async def repository_index(request: Request) -> Response:
    """``POST /v2/repository/index`` (``{"ready": true}``: only the ready ones)."""
    _authorize(request, "read")
    body = await _json_body(request)
    return json_response(await v2.repository_index(_state(request), bool(body.get("ready", False))))


async def repository_load(request: Request) -> Response:
    """``POST /v2/repository/models/{m}/load`` (``parameters``: ``config``, ``file:...``)."""
    actor = _authorize(request, "write")
    body = await _json_body(request)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    await v2.load_model(_state(request), request.path_params["model"], parameters, actor)
    return json_response({})


async def repository_unload(request: Request) -> Response:
    """``POST /v2/repository/models/{m}/unload``."""
    _authorize(request, "write")
    await _json_body(request)
    await v2.unload_model(_state(request), request.path_params["model"])
    return json_response({})


async def _routed_infer(request: Request) -> Response:
    """The infer paths as routes (the application answers them before routing)."""
    _authorize(request, "read")
    status, body, content_type, headers = await infer_http(
        _state(request),
        _target(request),
        await request.body(),
        request.headers.get("inference-header-content-length"),
    )
    return Response(
        body,
        status_code=status,
        media_type=content_type.decode(),
        headers={k.decode(): v.decode() for k, v in headers},
    )


def routes() -> list[Route]:
    """Every v2 endpoint but the health checks (answered by the application)."""
    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/stats", model_statistics, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(version, model_metadata, methods=["GET"]),
        Route(f"{model}/ready", model_ready, methods=["GET"]),
        Route(f"{version}/ready", model_ready, methods=["GET"]),
        Route(f"{model}/config", model_config, methods=["GET"]),
        Route(f"{version}/config", model_config, methods=["GET"]),
        Route(f"{model}/stats", model_statistics, methods=["GET"]),
        Route(f"{version}/stats", model_statistics, methods=["GET"]),
        Route(f"{model}/infer", _routed_infer, methods=["POST"]),
        Route(f"{version}/infer", _routed_infer, methods=["POST"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", repository_unload, methods=["POST"]),
    ]
