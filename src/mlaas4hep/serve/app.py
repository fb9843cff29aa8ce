"""The ASGI application of ``mlaas4hep serve``.

One :class:`MlaasApp` per server process. Prediction requests (``POST /json``,
``/proto`` and aliases) and health checks are answered directly, without a
router or middleware stack in between: at tens of thousands of requests per
second those layers would cost more than the model. Everything else goes to a
Starlette application. Both paths share request ids, auth, body limits, JSON
errors and metrics, which live here.

Errors: a :class:`~mlaas4hep.serve.errors.ServeError` becomes its status code
with ``{"error": message}``; anything else is logged with its traceback and
answered ``500 {"error": "internal error", "request_id": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlaas4hep import __version__
from mlaas4hep.serve import events as raw_events
from mlaas4hep.serve.api import tfaas, v2_rest
from mlaas4hep.serve.api.tfaas import json_response
from mlaas4hep.serve.auth import load_authorizer
from mlaas4hep.serve.config import ServerSettings
from mlaas4hep.serve.errors import PayloadTooLarge, ServeError
from mlaas4hep.serve.grpc_server import start_grpc_server
from mlaas4hep.serve.http import (
    Message,
    Receive,
    Scope,
    Send,
    dumps,
    error_body,
    header,
    limited,
    read_body,
    respond,
)
from mlaas4hep.serve.metrics import Metrics
from mlaas4hep.serve.models import ModelManager
from mlaas4hep.serve.openapi import openapi_schema
from mlaas4hep.serve.repository import ModelRepository
from mlaas4hep.serve.state import ServerState

log = logging.getLogger("mlaas4hep.serve")

GRACE_SECONDS = 30.0
"""How long gRPC calls in flight may take to finish at shutdown."""

UPLOAD_PATHS = frozenset({"/upload", "/predict/events"})
"""Paths whose bodies may be as large as ``max_upload_bytes``."""

_ENDPOINTS = {
    "/json",
    "/predict/json",
    "/proto",
    "/predict/proto",
    "/image",
    "/predict/image",
    "/upload",
    "/predict/events",
    "/delete",
    "/models",
    "/params",
    "/status",
    "/metrics",
    "/openapi.json",
    "/v2/health/live",
    "/v2/health/ready",
    "/",
}
_TEMPLATES = (
    ("/delete/", "/delete/{model}"),
    ("/params/", "/params/{model}"),
    ("/models/", "/models/{model}"),
)


def endpoint_label(path: str) -> str:
    """The metrics label of a request path (a bounded set of values)."""
    if path in _ENDPOINTS:
        return path
    if raw_events.is_events_path(path):
        if "/versions/" in path:
            return "/v2/models/{model}/versions/{version}/events"
        return "/v2/models/{model}/events"
    for prefix, label in _TEMPLATES:
        if path.startswith(prefix):
            return label
    return "other"


class MlaasApp:
    """The ASGI application; ``state`` is shared by every endpoint."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._fast = tfaas.FAST_ROUTES
        self._router = Starlette(
            routes=[
                *tfaas.routes(),
                *v2_rest.routes(),
                *raw_events.routes(),
                *self._own_routes(),
            ],
            exception_handlers={ServeError: _serve_error, HTTPException: _http_error},
            lifespan=self._lifespan,
        )
        self._router.state.mlaas = state

    def _own_routes(self) -> list[Route]:
        return [
            Route("/", self._index, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/openapi.json", self._openapi, methods=["GET"]),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._router(scope, receive, send)
            return
        state = self.state
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        request_id = header(scope, b"x-request-id") or state.request_id()
        extra = [(b"x-request-id", request_id.encode("latin-1"))]
        answered = False
        status = 500

        async def tracked(message: Message) -> None:
            nonlocal answered, status
            if message["type"] == "http.response.start":
                answered = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        state.metrics.in_flight += 1
        try:
            fast = self._fast.get(path) if method == "POST" else None
            target = v2_rest.infer_target(path) if method == "POST" and fast is None else None
            if fast is not None or target is not None:
                if state.auth.enabled:
                    state.authorize(header(scope, b"authorization"), "read")
                body = await read_body(receive, state.settings.max_request_bytes)
                if fast is not None:
                    reply = await fast(state, body)
                else:
                    length = header(scope, v2_rest.HEADER_LENGTH)
                    reply = await v2_rest.infer_http(state, target, body, length)  # type: ignore[arg-type]
                status = reply[0]
                await respond(send, status, reply[1], reply[2], [*extra, *reply[3]])
                answered = True
            elif path.startswith("/v2/health/") and method == "GET":
                await self._health(path, tracked)
            else:
                limit = self._limit(path, header(scope, b"content-type"))
                length = header(scope, b"content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise PayloadTooLarge(
                        f"the request body ({int(length):,} bytes) is larger than the "
                        f"limit of {limit:,} bytes"
                    )
                await self._router(scope, limited(receive, limit), tracked)
        except ServeError as error:
            status = error.status
            if not answered:
                await respond(send, status, error_body(str(error)), headers=extra)
            answered = True
            log.info(
                "%s %s → %d: %s", method, path, status, error, extra={"request_id": request_id}
            )
        except Exception:
            log.exception("%s %s failed", method, path, extra={"request_id": request_id})
            if not answered:
                body = dumps({"error": "internal error", "request_id": request_id})
                await respond(send, 500, body, headers=extra)
        finally:
            state.metrics.in_flight -= 1
            elapsed = time.perf_counter() - started
            state.metrics.request(endpoint_label(path), method, status, elapsed)
            if state.settings.access_log:
                log.info(
                    "%s %s %d %.2f ms",
                    method,
                    path,
                    status,
                    1e3 * elapsed,
                    extra={"request_id": request_id},
                )

    def _limit(self, path: str, content_type: str | None) -> int:
        settings = self.state.settings
        uploads = (
            path in UPLOAD_PATHS
            or (path.startswith("/v2/repository/models/") and path.endswith("/load"))
            # raw events: a file upload may be large, JSON is decoded in memory whole
            or (raw_events.is_events_path(path) and (content_type or "").startswith("multipart/"))
        )
        return settings.max_upload_bytes if uploads else settings.max_request_bytes

    async def _health(self, path: str, send: Send) -> None:
        if path == "/v2/health/live":
            await respond(send, 200, b'{"live":true}')
        elif path == "/v2/health/ready":
            ready = not self.state.draining
            await respond(
                send, 200 if ready else 503, b'{"ready":%s}' % (b"true" if ready else b"false")
            )
        else:
            await respond(send, 404, error_body(f"no endpoint {path}"))

    async def _index(self, _request: Request) -> Response:
        return json_response(
            {
                "name": "mlaas4hep",
                "version": __version__,
                "openapi": "/openapi.json",
                "models": "/models",
                "status": "/status",
            }
        )

    async def _metrics(self, request: Request) -> Response:
        self.state.authorize(request.headers.get("authorization"), "read")
        body, content_type = self.state.metrics.exposition()
        return Response(body, media_type=content_type)

    async def _openapi(self, _request: Request) -> Response:
        return json_response(openapi_schema())

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        state = self.state
        settings = state.settings
        poller: asyncio.Task[None] | None = None
        if settings.model_control == "startup":
            await state.models.load_all()
        if settings.model_control in ("poll", "startup"):
            poller = asyncio.create_task(self._poll(settings.poll_interval))
        grpc = await start_grpc_server(state) if settings.grpc_port else None
        log.info("serving %s", settings.repository)
        try:
            yield
        finally:
            state.draining = True
            if grpc is not None:
                await grpc.stop(GRACE_SECONDS)
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await state.models.close()

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.state.models.refresh()
            except Exception:
                log.exception("refreshing the models failed")


async def _serve_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, ServeError)
    return Response(error_body(str(error)), status_code=error.status, media_type="application/json")


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    detail = error.detail
    if error.status_code == 404:
        detail = f"no endpoint {request.method} {request.url.path}"
    elif error.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return Response(
        error_body(str(detail)),
        status_code=error.status_code,
        media_type="application/json",
        headers=dict(error.headers or {}),
    )


def create_app(settings: ServerSettings | None = None, **overrides: Any) -> MlaasApp:
    """The application for ``settings`` (defaults when None) updated by ``overrides``."""
    settings = (settings or ServerSettings()).replace(**overrides)
    repository = ModelRepository(settings.repository)
    metrics = Metrics()
    manager = ModelManager(
        repository,
        policy=settings.policy,
        batching=settings.batching,
        cache_size=settings.cache_size,
        threads=settings.threads,
        device=settings.device,
        observer_for=metrics.observer,
    )
    auth = load_authorizer(
        settings.auth_tokens, writes_open=settings.loopback or settings.allow_remote_writes
    )
    return MlaasApp(ServerState(settings, repository, manager, auth, metrics))
