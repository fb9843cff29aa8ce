"""The OpenAPI 3.1 description of every endpoint (``GET /openapi.json``).

Written by hand: the prediction paths parse raw bodies for speed, so there is
no model for a framework to derive the schema from. A test checks that every
route of the application appears here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from mlaas4hep import __version__

_ERROR = {"$ref": "#/components/responses/Error"}
_JSON = "application/json"


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": {_JSON: {"schema": schema}}}


def _ok(
    description: str, schema: dict[str, Any] | None = None, media: str = _JSON
) -> dict[str, Any]:
    content = {media: {"schema": schema or {"type": "object"}}}
    return {"description": description, "content": content}


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    tag: str,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    scope: str | None = "read",
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "responses": {**responses, "4XX": _ERROR},
    }
    if body is not None:
        operation["requestBody"] = body
    if parameters:
        operation["parameters"] = parameters
    if scope is not None:
        operation["security"] = (
            [{"token": [scope]}, {}] if scope == "read" else [{"token": [scope]}]
        )
    return operation


def _path_parameter(name: str, description: str, schema_type: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": schema_type},
    }


_MODEL = _path_parameter("model", "Model name")
_VERSION = _path_parameter("version", "Model version", "integer")
_TAG = _path_parameter("tag", "Tag name (lower case letters, digits, _ and -)")

_ROW = {
    "type": "object",
    "required": ["values"],
    "properties": {
        "keys": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Feature names, in the order of the values",
        },
        "values": {
            "description": "One row of numbers, or a list of rows",
            "oneOf": [
                {"type": "array", "items": {"type": "number"}},
                {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            ],
        },
        "model": {
            "type": "string",
            "description": "Model name, optionally name:version or name:tag",
        },
    },
}
_PREDICTION = {
    "oneOf": [
        {"type": "array", "items": {"type": "number"}},
        {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
    ]
}
_PROTO_BODY = {
    "required": True,
    "description": "A serialised tfaaspb.Row (proto/tfaas.proto)",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
_IMAGE_FORM = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "model": {"type": "string"},
                },
            }
        }
    },
}
_UPLOAD_BODY = {
    "required": True,
    "description": "A multipart form (name, params, model, labels) or a tar/zip archive whose top directory is the model name",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["name", "model"],
                "properties": {
                    "name": {"type": "string"},
                    "params": {"type": "string", "format": "binary"},
                    "model": {"type": "string", "format": "binary"},
                    "labels": {"type": "string", "format": "binary"},
                },
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


_V2_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {
            "type": "string",
            "enum": [
                "BOOL",
                "UINT8",
                "UINT16",
                "UINT32",
                "UINT64",
                "INT8",
                "INT16",
                "INT32",
                "INT64",
                "FP16",
                "FP32",
                "FP64",
                "BF16",
                "BYTES",
            ],
        },
        "parameters": {
            "type": "object",
            "description": "binary_data_size (binary tensor data extension)",
        },
        "data": {"type": "array", "description": "Row-major values, flat or nested"},
    },
}
_V2_INFER = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "description": "binary_data_output: answer every output as binary",
        },
        "inputs": {"type": "array", "items": _V2_TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}


def _v2_paths() -> dict[str, Any]:
    """The Open Inference Protocol v2 (KServe v2) with Triton's extensions."""
    tag = "Open Inference Protocol v2"
    infer = _operation(
        "Inference (JSON, or JSON followed by binary tensors: Inference-Header-Content-Length)",
        {"200": _ok("Outputs (binary ones after the JSON header)")},
        tag=tag,
        body={
            "required": True,
            "content": {
                "application/json": {"schema": _V2_INFER},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    )
    paths: dict[str, Any] = {
        "/v2": {
            "get": _operation(
                "Server metadata and extensions",
                {"200": _ok("{name, version, extensions}")},
                tag=tag,
            )
        },
        "/v2/models/stats": {
            "get": _operation(
                "Statistics of every loaded model", {"200": _ok("{model_stats}")}, tag=tag
            )
        },
        "/v2/repository/index": {
            "post": _operation(
                "Every model version and its state",
                {"200": _ok("[{name, version, state, reason}]", {"type": "array"})},
                tag=tag,
            )
        },
        "/v2/repository/models/{model}/load": {
            "post": _operation(
                "Load a model; parameters config (JSON) and file:<version>/<name> (base64) upload it",
                {"200": _ok("{}")},
                tag=tag,
                parameters=[_MODEL],
                scope="write",
            )
        },
        "/v2/repository/models/{model}/unload": {
            "post": _operation(
                "Unload a model", {"200": _ok("{}")}, tag=tag, parameters=[_MODEL], scope="write"
            )
        },
    }
    for base, parameters in (
        ("/v2/models/{model}", [_MODEL]),
        ("/v2/models/{model}/versions/{version}", [_MODEL, _VERSION]),
    ):
        paths[base] = {
            "get": _operation(
                "Model metadata: versions, platform, inputs, outputs",
                {"200": _ok("Model metadata")},
                tag=tag,
                parameters=parameters,
            )
        }
        paths[f"{base}/ready"] = {
            "get": _operation(
                "Whether the model is ready (400 when not)",
                {"200": _ok("{name, ready}")},
                tag=tag,
                parameters=parameters,
            )
        }
        paths[f"{base}/config"] = {
            "get": _operation(
                "The model configuration, as Triton gives it",
                {"200": _ok("ModelConfig")},
                tag=tag,
                parameters=parameters,
            )
        }
        paths[f"{base}/stats"] = {
            "get": _operation(
                "Inference statistics, as Triton gives them",
                {"200": _ok("{model_stats}")},
                tag=tag,
                parameters=parameters,
            )
        }
        paths[f"{base}/infer"] = {"post": {**infer, "parameters": parameters}}
    return paths


_EVENTS_BODY = {
    "required": True,
    "description": (
        "Raw events: a JSON list of records (one object per event), a JSON object of "
        "columns, or a multipart form with a ROOT or Parquet 'file' (and optional 'tree')"
    ),
    "content": {
        _JSON: {
            "schema": {
                "oneOf": [
                    {"type": "array", "items": {"type": "object"}},
                    {"type": "object", "additionalProperties": {"type": "array"}},
                ]
            }
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "tree": {"type": "string"},
                    "model": {"type": "string"},
                },
            }
        },
    },
}
_EVENTS_ANSWER = _ok(
    "{model, version, labels, events, selected, clipped, predictions (one row per event, "
    "null for events the selection drops), and the identifier branches (run, event, ...)}"
)


_EVENTS_METADATA = _ok(
    "{model, version, labels, branches (that events must have), identifiers, tree, "
    "selection (whether the preprocessing drops events), max_events (per request)}"
)


def _events_operation(parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return _operation(
        "Predict from raw events with a model package's feature spec and preprocessing",
        {"200": _EVENTS_ANSWER},
        tag="Events",
        body=_EVENTS_BODY,
        parameters=parameters,
    )


def _events_metadata_operation(parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return _operation(
        "What raw events the model takes", {"200": _EVENTS_METADATA}, tag="Events",
        parameters=parameters,
    )  # fmt: skip


@cache
def openapi_schema() -> dict[str, Any]:
    """The OpenAPI document of the server."""
    predict_json = _operation(
        "Predict from a TFaaS row (or rows) of named values",
        {"200": _ok("The first output of the model: one row, or a list of rows", _PREDICTION)},
        tag="TFaaS",
        body=_json_body(_ROW, "TFaaS row"),
    )
    predict_proto = _operation(
        "Predict from a protobuf tfaaspb.Row; answers tfaaspb.Predictions",
        {
            "200": _ok(
                "Serialised tfaaspb.Predictions",
                {"type": "string", "format": "binary"},
                "application/octet-stream",
            )
        },
        tag="TFaaS",
        body=_PROTO_BODY,
    )
    predict_image = _operation(
        "Classify a PNG or JPEG image: the five most probable labels",
        {"200": _ok("{filename, labels: [{label, probability}]}")},
        tag="TFaaS",
        body=_IMAGE_FORM,
    )
    delete = _operation(
        "Delete a model, or one version",
        {"200": _ok("The deleted versions")},
        tag="TFaaS",
        scope="write",
    )
    paths: dict[str, Any] = {
        "/json": {"post": predict_json},
        "/predict/json": {"post": predict_json},
        "/proto": {"post": predict_proto},
        "/predict/proto": {"post": predict_proto},
        "/image": {"post": predict_image},
        "/predict/image": {"post": predict_image},
        "/upload": {
            "post": _operation(
                "Upload a new version of a model (loaded before it is published)",
                {"200": _ok("{model, version, checksum, serving_version}")},
                tag="TFaaS",
                body=_UPLOAD_BODY,
                scope="write",
            )
        },
        "/delete": {
            "delete": {
                **delete,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"model": {"type": "string"}},
                            }
                        }
                    },
                },
            }
        },
        "/delete/{model}": {"delete": {**delete, "parameters": [_MODEL]}},
        "/delete/{model}/{version}": {"delete": {**delete, "parameters": [_MODEL, _VERSION]}},
        "/models": {
            "get": _operation(
                "Every model: params, versions, tags, state, errors",
                {"200": _ok("A list of models", {"type": "array", "items": {"type": "object"}})},
                tag="TFaaS",
            )
        },
        "/models/{model}": {
            "get": _operation(
                "One model: params, state, every version (checksum, size, source, tags), history",
                {"200": _ok("The model")},
                tag="Repository",
                parameters=[_MODEL],
            )
        },
        "/models/{model}/tags/{tag}": {
            "put": _operation(
                "Point a tag at a version (tag prod: the version serving requests that name none)",
                {"200": _ok("{model, tag, version, serving_version}")},
                tag="Repository",
                body=_json_body(
                    {
                        "type": "object",
                        "required": ["version"],
                        "properties": {"version": {"type": "integer"}},
                    },
                    "The version to tag",
                ),
                parameters=[_MODEL, _TAG],
                scope="write",
            ),
            "delete": _operation(
                "Remove a tag",
                {"200": _ok("{model, tag, version: null, serving_version}")},
                tag="Repository",
                parameters=[_MODEL, _TAG],
                scope="write",
            ),
        },
        "/params": {
            "get": _operation(
                "The default model's params", {"200": _ok("TFaaS params")}, tag="TFaaS"
            ),
            "post": _operation(
                "Set the default model (used when a request names none)",
                {"200": _ok("The default model's params")},
                tag="TFaaS",
                body=_json_body(
                    {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    },
                    "TFaaS params",
                ),
                scope="write",
            ),
        },
        "/params/{model}": {
            "get": _operation(
                "A model's params", {"200": _ok("TFaaS params")}, tag="TFaaS", parameters=[_MODEL]
            )
        },
        "/status": {
            "get": _operation(
                "Uptime, CPU, memory, load, request counters, per-model statistics",
                {"200": _ok("Server status")},
                tag="Server",
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics",
                {"200": _ok("Prometheus text format", {"type": "string"}, "text/plain")},
                tag="Server",
            )
        },
        "/v2/health/live": {
            "get": _operation(
                "Liveness", {"200": _ok("The server is up")}, tag="Server", scope=None
            )
        },
        "/v2/health/ready": {
            "get": _operation(
                "Readiness",
                {
                    "200": _ok("The server takes requests"),
                    "503": _ok("The server is shutting down"),
                },
                tag="Server",
                scope=None,
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document", {"200": _ok("OpenAPI 3.1")}, tag="Server", scope=None
            )
        },
        "/": {
            "get": _operation(
                "Server name, version and links", {"200": _ok("Index")}, tag="Server", scope=None
            )
        },
    }
    paths.update(_v2_paths())
    model_query = {
        "name": "model",
        "in": "query",
        "required": False,
        "description": "Model name, optionally name:version (or a 'model' form field)",
        "schema": {"type": "string"},
    }
    paths["/predict/events"] = {"post": _events_operation([model_query])}
    for parameters, path in (
        ([_MODEL], "/v2/models/{model}/events"),
        ([_MODEL, _VERSION], "/v2/models/{model}/versions/{version}/events"),
    ):
        paths[path] = {
            "get": _events_metadata_operation(parameters),
            "post": _events_operation(parameters),
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mlaas4hep model server",
            "version": __version__,
            "description": 'TFaaS-compatible inference API. Errors are {"error": message} with a 4xx status.',
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "A client error, with a message saying what to change",
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["error"],
                                "properties": {"error": {"type": "string"}},
                            }
                        }
                    },
                }
            },
        },
    }
