"""The TFaaS API: same paths, fields and wire formats as TFaaS, plus what it lacked.

``/json`` and ``/proto`` (and their ``/predict/...`` aliases) are the hot paths:
they are plain functions of the body that the application calls without a
router in between (see :mod:`mlaas4hep.serve.app`). The other endpoints are
Starlette routes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlaas4hep.serve.api.tfaas_rows import (
    RowLayout,
    RowRequest,
    answer_output,
    json_answer,
    parse_json,
    parse_proto,
    proto_answer,
    split_model,
)
from mlaas4hep.serve.archive import extract_archive, single_top_directory
from mlaas4hep.serve.errors import BadRequest, ModelNotFound, ServeError
from mlaas4hep.serve.http import dumps
from mlaas4hep.serve.images import image_inputs
from mlaas4hep.serve.models import ServedModel, open_backend
from mlaas4hep.serve.repository import validate_model_name
from mlaas4hep.serve.state import ServerState
from mlaas4hep.serve.status import server_status

Reply = tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]
"""(status, body, content type, extra headers) of a fast-path answer."""

PROTOBUF = b"application/octet-stream"
_FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
_TFAAS_PARAMS = ("name", "model", "labels", "options", "inputNode", "outputNode", "description")


# -- predictions: the fast paths -----------------------------------------------


async def _predict(state: ServerState, request: RowRequest) -> tuple[ServedModel, np.ndarray]:
    served = None
    if request.model and request.version is None:
        served = state.models.current(request.model)
    if served is None:  # not loaded yet, a version or tag named, or the default model
        served = await state.models.get(request.model, request.version)
    layout = served.extras.get("rows")
    if layout is None:
        layout = served.extras["rows"] = RowLayout.of(served.name, served.backend)
    if len(request.values) > state.settings.max_batch_rows:
        raise BadRequest(
            f"{len(request.values):,} rows is more than the limit of "
            f"{state.settings.max_batch_rows:,} per request"
        )
    outputs = await state.infer(served, layout.inputs(served.name, request), checked=True)
    return served, outputs[layout.output]


async def predict_json(state: ServerState, body: bytes) -> Reply:
    """``POST /json``: ``{"keys", "values", "model"}`` → the output row (or rows)."""
    request = parse_json(body)
    _, output = await _predict(state, request)
    return 200, json_answer(output, request.batched), b"application/json", []


async def predict_proto(state: ServerState, body: bytes) -> Reply:
    """``POST /proto``: ``tfaaspb.Row`` → ``tfaaspb.Predictions``."""
    request = parse_proto(body)
    served, output = await _predict(state, request)
    labels = served.extras["rows"].labels
    return 200, proto_answer(output, labels), PROTOBUF, []


FAST_ROUTES: dict[str, Callable[[ServerState, bytes], Awaitable[Reply]]] = {
    "/json": predict_json,
    "/predict/json": predict_json,
    "/proto": predict_proto,
    "/predict/proto": predict_proto,
}
"""POST paths answered without the router; they need the ``read`` scope."""


# -- the other endpoints -------------------------------------------------------


def json_response(value: Any, status: int = 200) -> Response:
    """A JSON response (numpy values allowed)."""
    return Response(dumps(value), status_code=status, media_type="application/json")


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.mlaas
    return state


def _authorize(request: Request, scope: str) -> str | None:
    identity = _state(request).authorize(request.headers.get("authorization"), scope)
    return identity.name if identity is not None else None


async def image(request: Request) -> Response:
    """``POST /image``: multipart ``image`` (PNG/JPEG) + ``model`` → top-5 labels."""
    _authorize(request, "read")
    state = _state(request)
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise BadRequest("the form has no 'image' file")
    name, version = split_model(_text(form.get("model")))
    served = await state.models.get(name, version)
    data = await upload.read()
    inputs = image_inputs(data, served.backend)
    outputs = await state.infer(served, inputs)
    probabilities = outputs[answer_output(served.backend)].reshape(-1)
    labels = served.backend.labels or [str(i) for i in range(len(probabilities))]
    top = np.argsort(-probabilities, kind="stable")[:5]
    return json_response(
        {
            "filename": upload.filename or "image",
            "labels": [
                {
                    "label": labels[i] if i < len(labels) else str(i),
                    "probability": float(probabilities[i]),
                }
                for i in top
            ],
        }
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raise BadRequest(f"form field {value.filename!r} must be text, not a file")
    return str(value)


async def upload(request: Request) -> Response:
    """``POST /upload``: a new version of a model.

    Multipart ``name``, ``params`` (params.json), ``model`` and ``labels``
    (``Content-Encoding: base64`` for a base64 ``model`` part), or a tar/zip
    archive body whose top directory is the model name (a TFaaS bundle or a
    model package). The model is loaded before it is published: a model that
    does not load is refused and the repository stays as it was.
    """
    actor = _authorize(request, "write")
    state = _state(request)
    with tempfile.TemporaryDirectory(prefix="mlaas4hep-upload-") as scratch:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            name, staged = await _stage_form(request, Path(scratch))
            source = "upload"
        else:
            body = await request.body()
            if not body:
                raise BadRequest("the upload is empty: send a multipart form or an archive body")
            root = Path(scratch) / "archive"
            root.mkdir()
            await asyncio.to_thread(
                extract_archive, body, root, max_bytes=state.settings.max_upload_bytes
            )
            name, staged = single_top_directory(root)
            source = "package" if (staged / "metadata.json").is_file() else "bundle"
        name = validate_model_name(name)
        _check_params(staged, name)
        backend = await asyncio.to_thread(open_backend, staged)
        backend.close()
        version = await asyncio.to_thread(
            state.repository.publish, name, staged, source=source, actor=actor
        )
    served = await state.models.published(name)
    return json_response(
        {
            "model": name,
            "version": version.version,
            "checksum": version.checksum,
            "serving_version": served.version.version,
        }
    )


async def _stage_form(request: Request, scratch: Path) -> tuple[str, Path]:
    form = await request.form(max_files=16, max_fields=32)
    name = _text(form.get("name"))
    if not name:
        raise BadRequest("the upload form has no 'name'")
    staged = scratch / "model"
    staged.mkdir()
    base64_model = request.headers.get("content-encoding", "").lower() == "base64"
    files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
    if not any(key == "model" for key, _ in files):
        raise BadRequest("the upload form has no 'model' file")
    for key, part in files:
        data = await part.read()
        if key == "model" and base64_model:
            try:
                data = base64.b64decode(data, validate=False)
            except ValueError:
                raise BadRequest("the 'model' part is not valid base64") from None
        target = _part_name(key, part.filename)
        (staged / target).write_bytes(data)
    return name, staged


def _part_name(field: str, filename: str | None) -> str:
    """Where an uploaded form file is stored in the version directory."""
    if field == "params":
        return "params.json"
    if field == "labels":
        return "labels.txt"
    base = Path(filename or "").name
    if not base:
        raise BadRequest(f"form file {field!r} has no file name")
    if not _FILENAME.match(base):
        raise BadRequest(f"form file name {base!r} is not allowed (letters, digits, _ . + -)")
    return base


def _check_params(staged: Path, name: str) -> None:
    path = staged / "params.json"
    if not path.exists():
        return
    try:
        params = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"params.json is not valid JSON: {error}") from None
    if not isinstance(params, dict):
        raise BadRequest("params.json must hold a JSON object")
    if params.get("name") not in (None, "", name):
        raise BadRequest(f"params.json names model {params['name']!r}, the upload {name!r}")


async def delete(request: Request) -> Response:
    """``DELETE /delete`` (form field ``model``) and ``DELETE /delete/{model}[/{version}]``."""
    actor = _authorize(request, "write")
    state = _state(request)
    name = request.path_params.get("model") or request.query_params.get("model")
    if not name:
        form = await request.form(max_files=0, max_fields=4)
        name = _text(form.get("model"))
    if not name:
        raise BadRequest("name the model to delete: form field 'model' or /delete/{model}")
    name = validate_model_name(name)
    version = _version(request.path_params.get("version") or request.query_params.get("version"))
    await state.models.unload(name, version)
    removed = await asyncio.to_thread(state.repository.delete, name, version, actor=actor)
    if state.models.default_model == name and version is None:
        state.models.default_model = None
    return json_response({"model": name, "deleted": [v.version for v in removed]})


def _version(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise BadRequest(f"a version is a positive integer, not {value!r}")
    return int(value)


async def models(request: Request) -> Response:
    """``GET /models``: every model with its params and state; one broken model
    shows its error instead of breaking the list."""
    _authorize(request, "read")
    state = _state(request)
    names = await asyncio.to_thread(state.repository.models)
    listing = [await _describe(state, name) for name in names]
    return json_response(listing)


async def _describe(state: ServerState, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name}
    try:
        versions = await asyncio.to_thread(state.repository.versions, name)
        tags = await asyncio.to_thread(state.repository.tags, name)
        params = await asyncio.to_thread(_params_of, state, name)
    except ServeError as error:
        return {**entry, "state": "UNAVAILABLE", "error": str(error)}
    served = state.models.serving(name)
    failures = state.models.failures(name)
    entry.update(params)
    entry.update(
        {
            "versions": [v.version for v in versions],
            "tags": tags,
            "serving_version": served.version.version if served else None,
            "state": "READY" if served else ("FAILED" if failures else "UNLOADED"),
            "errors": {str(v): e for v, e in failures.items()},
        }
    )
    if served is not None:
        entry.update(served.describe())
    return entry


async def model_detail(request: Request) -> Response:
    """``GET /models/{model}``: one model as ``/models`` lists it, plus every
    version (checksum, size, source, tags) and the latest history records."""
    _authorize(request, "read")
    state = _state(request)
    name = validate_model_name(request.path_params["model"])
    versions = await asyncio.to_thread(state.repository.versions, name)
    entry = await _describe(state, name)
    entry["version_details"] = [
        {
            "version": v.version,
            "checksum": v.checksum,
            "created": v.created,
            "source": v.source,
            "size": v.size,
            "tags": list(v.tags),
        }
        for v in versions
    ]
    entry["history"] = await asyncio.to_thread(state.repository.history, name, 50)
    return json_response(entry)


async def tag(request: Request) -> Response:
    """``PUT /models/{model}/tags/{tag}`` with ``{"version": N}`` points a tag at a
    version; ``DELETE`` removes it. Tag ``prod`` picks the version that serves
    requests naming none."""
    actor = _authorize(request, "write")
    state = _state(request)
    name = validate_model_name(request.path_params["model"])
    label = request.path_params["tag"]
    if request.method == "DELETE":
        await asyncio.to_thread(state.repository.untag, name, label, actor=actor)
        version = None
    else:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise BadRequest('send the version to tag as JSON: {"version": 3}')
        await asyncio.to_thread(state.repository.tag, name, version, label, actor=actor)
    served = await state.models.published(name)
    return json_response(
        {"model": name, "tag": label, "version": version, "serving_version": served.version.version}
    )


def _params_of(state: ServerState, name: str) -> dict[str, Any]:
    """TFaaS params of ``name``'s newest version: its params.json, else derived."""
    version = state.repository.resolve(name)
    directory = state.repository.local_dir(version)
    params: dict[str, Any] = {}
    path = directory / "params.json"
    if path.is_file():
        try:
            loaded = json.loads(path.read_text())
            params = loaded if isinstance(loaded, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            params = {}
    files = sorted(p.name for p in directory.iterdir() if p.is_file())
    model_files = [f for f in files if f not in ("params.json", "labels.txt", "metadata.json")]
    derived = {
        "name": name,
        "model": next(
            (f for f in model_files if f.startswith("model.")),
            model_files[0] if model_files else "",
        ),
        "labels": "labels.txt" if "labels.txt" in files else "",
        "options": None,
        "inputNode": "",
        "outputNode": "",
        "description": "",
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(version.created)),
    }
    return {
        **derived,
        **{k: v for k, v in params.items() if k in _TFAAS_PARAMS or k not in derived},
    }


async def params(request: Request) -> Response:
    """``GET /params[/{model}]``: a model's params (the default model's without a
    name); ``POST /params``: make the model named in the body the default."""
    state = _state(request)
    if request.method == "POST":
        _authorize(request, "write")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest('POST /params needs a JSON body like {"name": "model"}') from None
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest('POST /params needs a JSON body like {"name": "model"}')
        await asyncio.to_thread(state.repository.resolve, validate_model_name(name))
        state.models.default_model = name
        return json_response(await asyncio.to_thread(_params_of, state, name))
    _authorize(request, "read")
    name = request.path_params.get("model") or state.models.default_model
    if not name:
        raise ModelNotFound("no default model is set (POST /params) and none is named")
    return json_response(await asyncio.to_thread(_params_of, state, validate_model_name(name)))


async def status(request: Request) -> Response:
    """``GET /status``: uptime, CPU, memory, load, request counters, per-model stats."""
    _authorize(request, "read")
    return json_response(server_status(_state(request)))


def _routed(
    handler: Callable[[ServerState, bytes], Awaitable[Reply]],
) -> Callable[[Request], Awaitable[Response]]:
    """A fast-path handler as a Starlette endpoint (the application calls the
    handler directly; the route gives wrong methods their 405 and the schema its entry)."""

    async def endpoint(request: Request) -> Response:
        _authorize(request, "read")
        status, payload, content_type, _ = await handler(_state(request), await request.body())
        return Response(payload, status_code=status, media_type=content_type.decode())

    return endpoint


def routes() -> list[Route]:
    """The TFaaS endpoints (the fast prediction paths included, see :func:`_routed`)."""
    return [
        *(Route(path, _routed(handler), methods=["POST"]) for path, handler in FAST_ROUTES.items()),
        Route("/image", image, methods=["POST"]),
        Route("/predict/image", image, methods=["POST"]),
        Route("/upload", upload, methods=["POST"]),
        Route("/delete", delete, methods=["DELETE"]),
        Route("/delete/{model}", delete, methods=["DELETE"]),
        Route("/delete/{model}/{version}", delete, methods=["DELETE"]),
        Route("/models", models, methods=["GET"]),
        Route("/models/{model}", model_detail, methods=["GET"]),
        Route("/models/{model}/tags/{tag}", tag, methods=["PUT", "DELETE"]),
        Route("/params", params, methods=["GET", "POST"]),
        Route("/params/{model}", params, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
    ]
