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
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlaas4hep import __version__
from mlaas4hep.serve import events as raw_events
from mlaas4hep.serve.api import tfaas, v2_rest
from mlaas4hep.serve.api.tfaas import Reply, json_response
from mlaas4hep.serve.auth import load_authorizer
from mlaas4hep.serve.config import ServerSettings
from mlaas4hep.serve.errors import ServeError
from mlaas4hep.serve.grpc_server import start_grpc_server
from mlaas4hep.serve.http import (
    JSON,
    Message,
    Receive,
    Scope,
    Send,
    check_announced_length,
    dumps,
    error_body,
    header,
    limited,
    read_body,
    respond,
)
from mlaas4hep.serve.metrics import METRICS_DIR_VARIABLE, PUBLISH_INTERVAL, Metrics
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


GetHeader = Callable[[str], str | None]
"""A request's header by its lower-case name."""
ReadBody = Callable[[int], Awaitable[bytes]]
"""Reads a request's whole body, refusing more than the given number of bytes."""
DirectHandler = Callable[[ServerState, bytes, GetHeader], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class DirectRoute:
    """An endpoint answered without the router: ``handler(state, body, get_header)``.
    A ``prediction`` needs the ``read`` scope and gets the request body."""

    handler: DirectHandler
    prediction: bool = True


def _body_only(
    handler: Callable[[ServerState, bytes], Awaitable[Reply]],
) -> DirectHandler:
    return lambda state, body, _header: handler(state, body)


async def _no_health_endpoint(_state: ServerState, _body: bytes, _header: GetHeader) -> Reply:
    return 404, error_body("no such health endpoint: /v2/health/live or /v2/health/ready"), JSON, []


_NO_HEALTH_ENDPOINT = DirectRoute(_no_health_endpoint, prediction=False)
_V2_HEADER_LENGTH = v2_rest.HEADER_LENGTH.decode("latin-1")


def _internal_error(request_id: str) -> bytes:
    return dumps({"error": "internal error", "request_id": request_id})


class MlaasApp:
    """The ASGI application; ``state`` is shared by every endpoint.

    ``mlaas4hep serve`` runs it through :class:`~mlaas4hep.serve.rsgi.RSGIApp`
    (Granian's own interface, cheaper per request); any ASGI server can run it
    as it is."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._direct = {
            path: DirectRoute(_body_only(handler)) for path, handler in tfaas.FAST_ROUTES.items()
        }
        self._health = {
            "/v2/health/live": DirectRoute(self._live, prediction=False),
            "/v2/health/ready": DirectRoute(self._ready, prediction=False),
        }
        self._router = Starlette(
            routes=[
                *tfaas.routes(),
                *v2_rest.routes(),
                *raw_events.routes(),
                *self._own_routes(),
            ],
            exception_handlers={ServeError: _serve_error, HTTPException: _http_error},
            lifespan=self.lifespan,
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
            direct = self.direct_route(method, path)
            if direct is not None:
                reply = await self.answer_directly(
                    direct,
                    method,
                    path,
                    request_id,
                    lambda name: header(scope, name.encode("latin-1")),
                    lambda limit: read_body(receive, limit),
                )
                status = reply[0]
                await respond(send, status, reply[1], reply[2], [*extra, *reply[3]])
                answered = True
                return
            limit = self._limit(path, header(scope, b"content-type"))
            check_announced_length(header(scope, b"content-length"), limit)
            await self._router(scope, limited(receive, limit), tracked)
        except ServeError as error:
            status = error.status
            if not answered:
                await respond(send, status, error_body(str(error)), headers=extra)
            answered = True
            self._log_refusal(method, path, error, request_id)
        except Exception:
            log.exception("%s %s failed", method, path, extra={"request_id": request_id})
            if not answered:
                await respond(send, 500, _internal_error(request_id), headers=extra)
        finally:
            state.metrics.in_flight -= 1
            self.finished(method, path, status, started, request_id)

    def direct_route(self, method: str, path: str) -> DirectRoute | None:
        """How ``method path`` is answered without the router (predictions and
        health checks); None for the other requests."""
        if method == "POST":
            route = self._direct.get(path)
            if route is not None:
                return route
            target = v2_rest.infer_target(path)
            if target is not None:
                return DirectRoute(
                    lambda state, body, get_header: v2_rest.infer_http(
                        state, target, body, get_header(_V2_HEADER_LENGTH)
                    )
                )
        elif method == "GET" and path.startswith("/v2/health/"):
            return self._health.get(path, _NO_HEALTH_ENDPOINT)
        return None

    async def answer_directly(
        self,
        route: DirectRoute,
        method: str,
        path: str,
        request_id: str,
        get_header: GetHeader,
        read: ReadBody,
    ) -> Reply:
        """The reply of a :meth:`direct_route`, errors included (as JSON).

        Predictions need the ``read`` scope and a body within ``max_request_bytes``.
        """
        state = self.state
        try:
            body = b""
            if route.prediction:
                if state.auth.enabled:
                    state.authorize(get_header("authorization"), "read")
                body = await read(state.settings.max_request_bytes)
            return await route.handler(state, body, get_header)
        except ServeError as error:
            self._log_refusal(method, path, error, request_id)
            return error.status, error_body(str(error)), JSON, []
        except Exception:
            log.exception("%s %s failed", method, path, extra={"request_id": request_id})
            return 500, _internal_error(request_id), JSON, []

    def finished(
        self, method: str, path: str, status: int, started: float, request_id: str
    ) -> None:
        """Record an answered request in the metrics (and the access log when on)."""
        elapsed = time.perf_counter() - started
        self.state.metrics.request(endpoint_label(path), method, status, elapsed)
        if self.state.settings.access_log:
            log.info(
                "%s %s %d %.2f ms",
                method,
                path,
                status,
                1e3 * elapsed,
                extra={"request_id": request_id},
            )

    @staticmethod
    def _log_refusal(method: str, path: str, error: ServeError, request_id: str) -> None:
        log.info(
            "%s %s → %d: %s", method, path, error.status, error, extra={"request_id": request_id}
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

    async def _live(self, _state: ServerState, _body: bytes, _header: GetHeader) -> Reply:
        return 200, b'{"live":true}', JSON, []

    async def _ready(self, state: ServerState, _body: bytes, _header: GetHeader) -> Reply:
        if state.draining:
            return 503, b'{"ready":false}', JSON, []
        return 200, b'{"ready":true}', JSON, []

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
    async def lifespan(self, _app: Starlette | None = None) -> AsyncIterator[None]:
        """Start-up (models, poller, gRPC server) and shutdown (drain, close)."""
        state = self.state
        settings = state.settings
        poller: asyncio.Task[None] | None = None
        if settings.model_control == "startup":
            await state.models.load_all()
        if settings.model_control in ("poll", "startup"):
            poller = asyncio.create_task(self._poll(settings.poll_interval))
        grpc = await start_grpc_server(state) if settings.grpc_port else None
        publisher = (
            asyncio.create_task(self._publish_metrics()) if state.metrics.shared_dir else None
        )
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
            if publisher is not None:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
                state.metrics.publish()

    async def _publish_metrics(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            try:
                self.state.metrics.publish()
            except OSError:
                log.exception("publishing this worker's metrics failed")

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
    shared = os.environ.get(METRICS_DIR_VARIABLE)
    metrics = Metrics(shared_dir=Path(shared) if shared else None)
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
