"""Triton's gRPC inference service (``inference.GRPCInferenceService``).

Existing Triton clients (``tritonclient.grpc``, CMSSW's SonicTriton, perf_analyzer)
talk to ``mlaas4hep serve --grpc-port PORT`` unchanged. The servicer decodes
each request into the protocol-neutral types of :mod:`mlaas4hep.serve.v2`,
calls the operation there and encodes its answer; the messages are the ones
generated from Triton's ``grpc_service.proto`` that ship with tritonclient.

The gRPC server (``grpc.aio``) runs on the event loop of the ASGI application
(Granian's uvloop), where the models' batchers live, so a call reaches the
batcher without a hop between threads. With several server workers each
process binds the same port (``SO_REUSEPORT``) and the kernel spreads the
connections.

Tensors come from ``raw_input_contents`` (one per input, in order) or from
the typed ``contents`` of each input (``FP16``/``BF16`` only raw); outputs are
always sent as ``raw_output_contents``, as tritonclient reads them.

Errors are gRPC status codes, from :attr:`ServeError.status
<mlaas4hep.serve.errors.ServeError.status>`: 400 ``INVALID_ARGUMENT``, 401
``UNAUTHENTICATED``, 403 ``PERMISSION_DENIED``, 404 ``NOT_FOUND``, 413
``RESOURCE_EXHAUSTED``, 422 (a model whose files do not load) ``FAILED_PRECONDITION``:
retrying does not help until the repository is fixed, 501 ``UNIMPLEMENTED``,
503 ``UNAVAILABLE``; anything else is logged with its traceback and answered
``INTERNAL`` with the request id.

Auth: the ``authorization: Bearer TOKEN`` metadata needs the ``read`` scope for
inference, metadata, configuration, statistics and model readiness (which may
load the model), ``write`` to load or unload models; ServerLive and ServerReady
are open. Shared memory, tracing and log settings are ``UNIMPLEMENTED``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from math import prod
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
from google.protobuf.json_format import ParseDict
from tritonclient.grpc import service_pb2, service_pb2_grpc

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve import tensors, v2
from mlaas4hep.serve.auth import Identity
from mlaas4hep.serve.errors import BadRequest, ServeError
from mlaas4hep.serve.state import ServerState

log = logging.getLogger("mlaas4hep.serve.grpc")

STREAM_WINDOW = 64
"""Requests of one ModelStreamInfer stream being answered at once; the stream
is not read further until one of them is answered (gRPC flow control then
holds the client back)."""

STATUS_CODES: dict[int, Any] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.FAILED_PRECONDITION,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The gRPC status code of each :attr:`ServeError.status` (others: ``INTERNAL``)."""


class Unsupported(ServeError):
    """A Triton feature this server does not implement (shared memory, classification)."""

    status = 501


def status_code(error: ServeError) -> Any:
    """The ``grpc.StatusCode`` answering ``error``."""
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


# -- tensors ----------------------------------------------------------------------

_CONTENTS: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}
"""The ``InferTensorContents`` field of each datatype, with the dtype of its elements."""


def from_contents(name: str, datatype: str, shape: tuple[int, ...], contents: Any) -> np.ndarray:
    """The array of an input sent as typed ``InferTensorContents``."""
    if datatype not in _CONTENTS:
        if datatype in tensors.DTYPES:
            raise BadRequest(
                f"input {name!r}: {datatype} data can only be sent in raw_input_contents"
            )
        raise BadRequest(
            f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(tensors.DTYPES)}"
        )
    field, element = _CONTENTS[datatype]
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise BadRequest(
            f"input {name!r} is {datatype}: its data goes in contents.{field}, not {others}"
        )
    values = getattr(contents, field)
    count = prod(shape)
    if len(values) != count:
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {count} elements, "
            f"contents.{field} has {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    array = np.array(values, dtype=element)
    target = tensors.DTYPES[datatype]
    if target != element:  # INT8, INT16, UINT8, UINT16 travel as 32-bit integers
        limits = np.iinfo(target)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise BadRequest(f"input {name!r} has values outside the range of {datatype}")
        array = array.astype(target)
    return array.reshape(shape)


def _parameters(parameters: Any) -> dict[str, Any]:
    """An ``InferParameter`` map as plain values."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def decode_request(request: Any) -> v2.InferRequest:
    """The :class:`~mlaas4hep.serve.v2.InferRequest` of a ``ModelInferRequest``."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"the request has {len(request.inputs)} input(s) and {len(raw)} "
            "raw_input_contents: send one per input, in order (or none, with typed contents)"
        )
    inputs = []
    for number, tensor in enumerate(request.inputs):
        name, datatype = tensor.name, tensor.datatype
        if "shared_memory_region" in tensor.parameters:
            raise Unsupported(f"input {name!r}: shared memory is not supported by this server")
        shape = tensors.check_shape(name, list(tensor.shape))
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(
                    f"input {name!r} has typed contents, but the request uses raw_input_contents"
                )
            array = tensors.from_bytes(name, datatype, shape, raw[number])
        else:
            array = from_contents(name, datatype, shape, tensor.contents)
        inputs.append(v2.InputTensor(name, datatype, shape, array))
    for output in request.outputs:
        for feature in ("shared_memory_region", "classification"):
            if feature in output.parameters:
                raise Unsupported(
                    f"output {output.name!r}: {feature.replace('_', ' ')} is not supported "
                    "by this server"
                )
    return v2.InferRequest(
        model=request.model_name,
        version=request.model_version or None,
        inputs=inputs,
        outputs=v2.requested_outputs([(output.name, None) for output in request.outputs]),
        id=request.id or None,
        parameters=_parameters(request.parameters),
    )


def encode_response(response: v2.InferResponse) -> Any:
    """The ``ModelInferResponse`` of an :class:`~mlaas4hep.serve.v2.InferResponse`."""
    return service_pb2.ModelInferResponse(
        model_name=response.model,
        model_version=response.version,
        id=response.id or "",
        outputs=[
            service_pb2.ModelInferResponse.InferOutputTensor(
                name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
            )
            for tensor in response.outputs
        ],
        raw_output_contents=[
            tensors.to_bytes(tensor.array, tensor.datatype) for tensor in response.outputs
        ],
    )


# -- the service ------------------------------------------------------------------

Handler = Callable[["TritonService", Any, Any], Coroutine[Any, Any, Any]]


def _metadata(context: Any, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return None


def _rpc(scope: str | None) -> Callable[[Handler], Handler]:
    """Wrap an RPC: check the caller's token for ``scope`` (None: open to all) and
    answer errors with their gRPC status code."""

    def wrap(method: Handler) -> Handler:
        @functools.wraps(method)
        async def handle(self: TritonService, request: Any, context: Any) -> Any:
            try:
                if scope is not None:
                    self.authorize(context, scope)
                return await method(self, request, context)
            except ServeError as error:
                log.info("gRPC %s: %s", method.__name__, error)
                await context.abort(status_code(error), str(error))
            except Exception:  # noqa: BLE001 - logged by internal_error
                message = self.internal_error(context, method.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, message)

        return handle

    return wrap


def _unsupported(feature: str) -> Handler:
    async def handle(_self: TritonService, _request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{feature} is not supported by this server"
        )

    return handle


class TritonService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """``inference.GRPCInferenceService`` over the server's :class:`ServerState`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def authorize(self, context: Any, scope: str) -> Identity | None:
        """The caller's identity, if its ``authorization`` metadata allows ``scope``."""
        token = _metadata(context, "authorization") if self.state.auth.enabled else None
        return self.state.authorize(token, scope)

    def internal_error(self, context: Any, rpc: str) -> str:
        """Log the exception being handled with a request id (the caller's
        ``x-request-id`` metadata, or a new one); the message for the caller."""
        request_id = _metadata(context, "x-request-id") or self.state.request_id()
        log.exception("gRPC %s failed", rpc, extra={"request_id": request_id})
        return f"internal error (request id {request_id})"

    # -- health and metadata -------------------------------------------------------

    async def ServerLive(self, _request: Any, _context: Any) -> Any:
        """Always live while the process answers."""
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, _request: Any, _context: Any) -> Any:
        """Ready until shutdown begins."""
        return service_pb2.ServerReadyResponse(ready=not self.state.draining)

    @_rpc("read")
    async def ModelReady(self, request: Any, _context: Any) -> Any:
        """Whether the model (version) is loaded, loading it if needed."""
        ready = await v2.model_ready(self.state, request.name, request.version or None)
        return service_pb2.ModelReadyResponse(ready=ready)

    @_rpc("read")
    async def ServerMetadata(self, _request: Any, _context: Any) -> Any:
        """Name, version and extensions of the server."""
        return ParseDict(v2.server_metadata(), service_pb2.ServerMetadataResponse())

    @_rpc("read")
    async def ModelMetadata(self, request: Any, _context: Any) -> Any:
        """Versions, platform, inputs and outputs of a model."""
        metadata = await v2.model_metadata(self.state, request.name, request.version or None)
        return ParseDict(metadata, service_pb2.ModelMetadataResponse())

    @_rpc("read")
    async def ModelConfig(self, request: Any, _context: Any) -> Any:
        """The model's Triton configuration."""
        config = await v2.model_config(self.state, request.name, request.version or None)
        return service_pb2.ModelConfigResponse(config=config.raw)

    @_rpc("read")
    async def ModelStatistics(self, request: Any, _context: Any) -> Any:
        """Inference statistics of every loaded model, or of one model (version)."""
        statistics = v2.model_statistics(self.state, request.name or None, request.version or None)
        return ParseDict(statistics, service_pb2.ModelStatisticsResponse())

    # -- inference -----------------------------------------------------------------

    @_rpc("read")
    async def ModelInfer(self, request: Any, _context: Any) -> Any:
        """One inference request."""
        return encode_response(await v2.infer(self.state, decode_request(request)))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        """Inference requests on a bidirectional stream, answered as they finish
        (match them by ``id``); a failed request is answered with its
        ``error_message`` and the stream goes on."""
        try:
            self.authorize(context, "read")
        except ServeError as error:
            await context.abort(status_code(error), str(error))
        answers: asyncio.Queue[Any] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_WINDOW)
        running: set[asyncio.Task[None]] = set()

        async def answer(request: Any) -> None:
            try:
                result = await v2.infer(self.state, decode_request(request))
                response = service_pb2.ModelStreamInferResponse(
                    infer_response=encode_response(result)
                )
            except ServeError as error:
                log.info("gRPC ModelStreamInfer: %s", error)
                response = _stream_error(request, str(error))
            except Exception:  # noqa: BLE001 - logged by internal_error
                message = self.internal_error(context, "ModelStreamInfer")
                response = _stream_error(request, message)
            finally:
                slots.release()
            answers.put_nowait(response)

        async def read() -> None:
            try:
                async for request in requests:
                    await slots.acquire()
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*running)
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
            await reader  # raises what ended the reading, if anything did
        except Exception:  # noqa: BLE001 - logged by internal_error
            message = self.internal_error(context, "ModelStreamInfer")
            await context.abort(grpc.StatusCode.INTERNAL, message)
        finally:
            for task in (reader, *running):
                task.cancel()

    # -- repository ----------------------------------------------------------------

    @_rpc("read")
    async def RepositoryIndex(self, request: Any, _context: Any) -> Any:
        """Every model version with its state (``ready``: only the ready ones)."""
        index = await v2.repository_index(self.state, ready_only=request.ready)
        return ParseDict({"models": index}, service_pb2.RepositoryIndexResponse())

    @_rpc(None)  # authorizes itself: the identity is recorded in the repository history
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        """Load a model, with a configuration override (``config``) and new
        version files (``file:<version>/<name>``) when given."""
        identity = self.authorize(context, "write")
        parameters = _repository_parameters(request.parameters.items())
        actor = identity.name if identity is not None else None
        await v2.load_model(self.state, request.model_name, parameters, actor)
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc("write")
    async def RepositoryModelUnload(self, request: Any, _context: Any) -> Any:
        """Stop serving a model until it is loaded again."""
        await v2.unload_model(self.state, request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    # -- not implemented -----------------------------------------------------------

    SystemSharedMemoryStatus = _unsupported("system shared memory")
    SystemSharedMemoryRegister = _unsupported("system shared memory")
    SystemSharedMemoryUnregister = _unsupported("system shared memory")
    CudaSharedMemoryStatus = _unsupported("CUDA shared memory")
    CudaSharedMemoryRegister = _unsupported("CUDA shared memory")
    CudaSharedMemoryUnregister = _unsupported("CUDA shared memory")
    TraceSetting = _unsupported("tracing")
    LogSettings = _unsupported("changing the log settings")


def _stream_error(request: Any, message: str) -> Any:
    return service_pb2.ModelStreamInferResponse(
        error_message=message,
        infer_response=service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _repository_parameters(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``ModelRepositoryParameter`` values by name (``file:`` ones stay bytes)."""
    parameters = {}
    for key, parameter in items:
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise BadRequest(f"parameter {key!r} has no value")
        parameters[key] = getattr(parameter, choice)
    return parameters


# -- the server -------------------------------------------------------------------


async def start_grpc_server(state: ServerState) -> Any:
    """Start serving :class:`TritonService` on ``settings.host:settings.grpc_port``
    (TLS when ``tls_cert``/``tls_key`` are set); returns the ``grpc.aio.Server``,
    whose ``await server.stop(grace)`` lets calls in flight finish."""
    settings = state.settings
    limit = settings.grpc_max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(TritonService(state), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    try:
        if settings.tls_cert and settings.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())]
            )
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    except RuntimeError as error:
        raise ConfigError(f"cannot serve gRPC on {address}: {error}") from None
    await server.start()
    log.info("serving Triton's gRPC API on %s", address)
    return server
