"""The Open Inference Protocol (v2) with Triton's extensions, independent of transport.

The REST API (:mod:`mlaas4hep.serve.api.v2_rest`) and gRPC
(:mod:`mlaas4hep.serve.grpc_server`) decode their requests into the types
here, call these functions, and encode what they return. Errors are
:class:`~mlaas4hep.serve.errors.ServeError`; each transport maps the status to
its own codes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep import __version__
from mlaas4hep.serve.backends.base import TensorInfo
from mlaas4hep.serve.errors import BadRequest, ModelNotFound, ServeError
from mlaas4hep.serve.models import ServedModel, open_backend
from mlaas4hep.serve.repository import validate_model_name
from mlaas4hep.serve.state import ServerState
from mlaas4hep.serve.tensors import datatype_name
from mlaas4hep.serve.triton_config import (
    ModelConfig,
    apply_override,
    complete_config,
    derive_config,
)

SERVER_EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "model_configuration",
]
"""The Triton extensions this server implements (``GET /v2`` lists them)."""


@dataclass
class InputTensor:
    """One decoded input of an inference request."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass
class OutputTensor:
    """One output of an inference response."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray
    binary: bool = False
    """Send as binary data (REST binary extension; gRPC always sends raw)."""


@dataclass
class InferRequest:
    """A decoded inference request."""

    model: str
    version: str | None
    inputs: list[InputTensor]
    outputs: dict[str, bool | None] | None = None
    """Requested output names → binary wanted (None: the default); None: every output."""
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    """The answer to an :class:`InferRequest`."""

    model: str
    version: str
    outputs: list[OutputTensor]
    id: str | None = None


def server_metadata() -> dict[str, Any]:
    """``GET /v2``: name, version, extensions."""
    return {"name": "mlaas4hep", "version": __version__, "extensions": SERVER_EXTENSIONS}


async def served_model(state: ServerState, name: str, version: str | None) -> ServedModel:
    """The loaded model for a v2 request (``version`` "" or None: the serving one)."""
    name = validate_model_name(name)
    if name in state.models.unloaded:
        raise ModelNotFound(
            f"model {name!r} is unloaded: load it with the repository API to serve it"
        )
    return await state.models.get(name, version or None)


async def model_metadata(state: ServerState, name: str, version: str | None) -> dict[str, Any]:
    """``GET /v2/models/{m}[/versions/{v}]``."""
    served = await served_model(state, name, version)
    versions = await asyncio.to_thread(state.repository.versions, served.name)
    backend = served.backend
    return {
        "name": served.name,
        "versions": [str(v.version) for v in versions],
        "platform": backend.platform,
        "inputs": [i.to_dict() for i in backend.inputs],
        "outputs": [o.to_dict() for o in backend.outputs],
    }


async def model_ready(state: ServerState, name: str, version: str | None) -> bool:
    """Whether the model (version) is loaded and serving, loading it if needed."""
    try:
        await served_model(state, name, version)
    except ServeError:
        return False
    return True


async def infer(state: ServerState, request: InferRequest) -> InferResponse:
    """Run an inference request through the model's batcher."""
    served = await served_model(state, request.model, request.version)
    backend = served.backend
    declared = {i.name: i for i in backend.inputs}
    arrays: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        info = declared.get(tensor.name)
        if info is None:
            raise BadRequest(
                f"unknown input {tensor.name!r} for model {served.name!r}; "
                f"its inputs are {list(declared)}"
            )
        if tensor.name in arrays:
            raise BadRequest(f"input {tensor.name!r} is given twice")
        if tensor.datatype != info.datatype:
            raise BadRequest(
                f"input {tensor.name!r} has datatype {tensor.datatype}, "
                f"model {served.name!r} expects {info.datatype}"
            )
        _check_dims(tensor, info)
        arrays[tensor.name] = tensor.array
    missing = [n for n in declared if n not in arrays]
    if missing:
        raise BadRequest(f"model {served.name!r} needs inputs {missing}, not given")
    outputs_info = {o.name: o for o in backend.outputs}
    wanted = list(outputs_info) if request.outputs is None else list(request.outputs)
    unknown = [n for n in wanted if n not in outputs_info]
    if unknown:
        raise BadRequest(
            f"unknown output(s) {unknown} for model {served.name!r}; "
            f"its outputs are {list(outputs_info)}"
        )
    results = await state.infer(served, arrays)
    binary_default = bool(request.parameters.get("binary_data_output", False))
    outputs = []
    for name in wanted:
        array = np.asarray(results[name])
        datatype = outputs_info[name].datatype if array.dtype.kind != "O" else "BYTES"
        if datatype == "BYTES" or datatype not in _FIXED:
            datatype = datatype_name(array)
        choice = request.outputs.get(name) if request.outputs is not None else None
        outputs.append(
            OutputTensor(
                name, datatype, array.shape, array, binary_default if choice is None else choice
            )
        )
    return InferResponse(served.name, str(served.version.version), outputs, request.id)


_FIXED = {"BOOL", "FP16", "FP32", "FP64", "BF16", "INT8", "INT16", "INT32", "INT64",
          "UINT8", "UINT16", "UINT32", "UINT64"}  # fmt: skip


def _check_dims(tensor: InputTensor, info: TensorInfo) -> None:
    if info.shape == [-1] and len(tensor.shape) >= 1:  # a model that does not say its rank
        return
    fits = len(tensor.shape) == len(info.shape) and all(
        want in (-1, got) for want, got in zip(info.shape, tensor.shape, strict=True)
    )
    if not fits:
        raise BadRequest(
            f"input {tensor.name!r} has shape {list(tensor.shape)}, the model expects "
            f"{info.shape} (-1: any size)"
        )


# -- model configuration ---------------------------------------------------------


async def model_config(state: ServerState, name: str, version: str | None) -> ModelConfig:
    """The Triton configuration of a model: its config.pbtxt (with any override
    given at load), else one derived from the loaded model."""
    served = await served_model(state, name, version)
    return await asyncio.to_thread(config_of, state, served)


def config_of(state: ServerState, served: ServedModel) -> ModelConfig:
    """See :func:`model_config` (blocking)."""
    config = state.models.model_config(served.name)
    backend = served.backend
    if config is not None:
        return complete_config(config, backend.platform, backend.inputs, backend.outputs)
    return derive_config(
        served.name,
        backend.platform,
        list(backend.inputs),
        list(backend.outputs),
        batching=state.models.batching,
        policy=state.models.policy,
    )


# -- statistics ------------------------------------------------------------------


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": round(seconds * 1e9)}


def model_statistics(state: ServerState, name: str | None, version: str | None) -> dict[str, Any]:
    """``GET /v2/models[/{m}[/versions/{v}]]/stats`` in Triton's form."""
    entries = []
    for served in state.models.loaded():
        if name and served.name != name:
            continue
        if version and str(served.version.version) != version:
            continue
        stats = served.batcher.stats
        successes = stats.requests - stats.failures
        entries.append(
            {
                "name": served.name,
                "version": str(served.version.version),
                "last_inference": round(stats.last_inference * 1e3),
                "inference_count": stats.rows,
                "execution_count": stats.batches,
                "inference_stats": {
                    "success": _duration(successes, stats.success_seconds),
                    "fail": _duration(stats.failures, stats.failure_seconds),
                    "queue": _duration(stats.requests, stats.queue_seconds),
                    "compute_input": _duration(stats.batches, 0.0),
                    "compute_infer": _duration(stats.batches, stats.compute_seconds),
                    "compute_output": _duration(stats.batches, 0.0),
                    "cache_hit": _duration(0, 0.0),
                    "cache_miss": _duration(0, 0.0),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": _duration(count, 0.0),
                        "compute_infer": _duration(count, stats.batch_seconds.get(size, 0.0)),
                        "compute_output": _duration(count, 0.0),
                    }
                    for size, count in sorted(stats.batch_sizes.items())
                ],
                "memory_usage": [],
            }
        )
    if name and not entries:
        if name not in state.repository.models():
            raise ModelNotFound(f"no model {name!r}")
        entries.append(_empty_stats(name, version or ""))
    return {"model_stats": entries}


def _empty_stats(name: str, version: str) -> dict[str, Any]:
    zero = _duration(0, 0.0)
    kinds = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    return {
        "name": name,
        "version": version,
        "last_inference": 0,
        "inference_count": 0,
        "execution_count": 0,
        "inference_stats": dict.fromkeys((*kinds, "cache_hit", "cache_miss"), zero),
        "batch_stats": [],
        "memory_usage": [],
    }


# -- repository ------------------------------------------------------------------


async def repository_index(state: ServerState, ready_only: bool = False) -> list[dict[str, str]]:
    """``POST /v2/repository/index``: every model version with its state."""
    index = []
    for name in await asyncio.to_thread(state.repository.models):
        serving = state.models.serving(name)
        failures = state.models.failures(name)
        for version in await asyncio.to_thread(state.repository.versions, name):
            number = version.version
            if serving is not None and serving.version.version == number:
                entry = {"state": "READY", "reason": ""}
            elif number in failures:
                entry = {"state": "UNAVAILABLE", "reason": failures[number]}
            else:
                entry = {"state": "UNAVAILABLE", "reason": "unloaded"}
            if ready_only and entry["state"] != "READY":
                continue
            index.append({"name": name, "version": str(number), **entry})
    return index


async def load_model(
    state: ServerState, name: str, parameters: Mapping[str, Any], actor: str | None
) -> None:
    """``POST /v2/repository/models/{m}/load``.

    ``parameters["config"]`` (a JSON model configuration) replaces the model's
    config.pbtxt while it is loaded; ``file:<version>/<path>`` parameters
    (base64) are model files: each version given becomes a new version of the
    model (checked by loading it first), as an upload would.
    """
    name = validate_model_name(name)
    config = parameters.get("config")
    if config is not None:
        if not isinstance(config, str):
            raise BadRequest("parameter 'config' must be a JSON string")
        apply_override(None, config, name)  # refuse a bad configuration before anything changes
    files = _files(parameters)
    if files:
        await _publish_files(state, name, files, actor)
    state.models.unloaded.discard(name)
    if config is not None:
        state.models.config_overrides[name] = config
    await state.models.unload(name)
    await state.models.published(name)


def _files(parameters: Mapping[str, Any]) -> dict[str, dict[str, bytes]]:
    """``file:<version>/<path>`` parameters, decoded, by version."""
    versions: dict[str, dict[str, bytes]] = {}
    for key, value in parameters.items():
        if not key.startswith("file:"):
            continue
        version, _, path = key[5:].partition("/")
        if not version or not path:
            raise BadRequest(f"parameter {key!r}: expected file:<version>/<file name>")
        if not isinstance(value, str | bytes):
            raise BadRequest(f"parameter {key!r} must hold base64 file contents")
        try:
            data = value if isinstance(value, bytes) else base64.b64decode(value, validate=True)
        except binascii.Error:
            raise BadRequest(f"parameter {key!r} is not valid base64") from None
        versions.setdefault(version, {})[path] = data
    return versions


async def _publish_files(
    state: ServerState, name: str, files: dict[str, dict[str, bytes]], actor: str | None
) -> None:
    for version in sorted(files):
        with tempfile.TemporaryDirectory(prefix="mlaas4hep-load-") as scratch:
            staged = Path(scratch) / "model"
            staged.mkdir()
            for relative, data in files[version].items():
                target = (staged / relative).resolve()
                if not target.is_relative_to(staged.resolve()) or relative.startswith("/"):
                    raise BadRequest(f"file {version}/{relative} would leave the model directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            backend = await asyncio.to_thread(open_backend, staged)
            backend.close()
            await asyncio.to_thread(
                state.repository.publish, name, staged, source="v2-load", actor=actor
            )


async def unload_model(state: ServerState, name: str) -> None:
    """``POST /v2/repository/models/{m}/unload``: stop serving until loaded again."""
    name = validate_model_name(name)
    if name not in await asyncio.to_thread(state.repository.models):
        raise ModelNotFound(f"no model {name!r}")
    state.models.unloaded.add(name)
    await state.models.unload(name)


def requested_outputs(items: Sequence[tuple[str, bool | None]]) -> dict[str, bool | None] | None:
    """Requested outputs in request order (None when the request names none)."""
    if not items:
        return None
    wanted: dict[str, bool | None] = {}
    for name, binary in items:
        if name in wanted:
            raise BadRequest(f"output {name!r} is requested twice")
        wanted[name] = binary
    return wanted
