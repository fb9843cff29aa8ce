"""Granian's RSGI interface in front of the ASGI application.

RSGI is Granian's native interface: the body arrives in one call and the
response leaves in one call, where ASGI needs three awaited messages and
their dictionaries. On the prediction paths that is a fifth of the work per
request (benchmarks/RESULTS.md). :class:`RSGIApp` answers the
:meth:`~mlaas4hep.serve.app.MlaasApp.direct_route` endpoints natively and
hands every other request to the ASGI application through a small bridge, so
both interfaces share one implementation of every endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from mlaas4hep.serve.app import MlaasApp
from mlaas4hep.serve.http import Message, Scope, check_announced_length, too_large


class RSGIApp:
    """``app`` served through RSGI (its ASGI lifespan runs at worker start and stop)."""

    def __init__(self, app: MlaasApp) -> None:
        self.app = app
        self._lifespan: AbstractAsyncContextManager[None] | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lifespan = self.app.lifespan()
        loop.run_until_complete(self._lifespan.__aenter__())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._lifespan is not None:
            loop.run_until_complete(self._lifespan.__aexit__(None, None, None))

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        method: str = scope.method
        path: str = scope.path
        route = self.app.direct_route(method, path)
        if route is None:
            await self.app(asgi_scope(scope), _Receiver(protocol), _Sender(protocol))
            return
        app = self.app
        started = time.perf_counter()
        headers = scope.headers
        request_id = headers.get("x-request-id") or app.state.request_id()
        status = 500
        app.state.metrics.in_flight += 1
        try:
            reply = await app.answer_directly(
                route,
                method,
                path,
                request_id,
                headers.get,
                lambda limit: read_body(protocol, headers.get("content-length"), limit),
            )
            status, body, content_type, extra = reply
            response_headers = [
                ("content-type", content_type.decode("latin-1")),
                ("x-request-id", request_id),
            ]
            if extra:
                response_headers += [(k.decode("latin-1"), v.decode("latin-1")) for k, v in extra]
            protocol.response_bytes(status, response_headers, body)
        finally:
            app.state.metrics.in_flight -= 1
            app.finished(method, path, status, started, request_id)


async def read_body(protocol: Any, content_length: str | None, limit: int) -> bytes:
    """The whole body; :class:`PayloadTooLarge` beyond ``limit`` bytes (refused
    unread when the request announces its length)."""
    check_announced_length(content_length, limit)
    if content_length is not None and content_length.isdigit():
        return bytes(await protocol())
    chunks, size = [], 0
    async for chunk in protocol:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def asgi_scope(scope: Any) -> Scope:
    """The ASGI HTTP scope of an RSGI request."""
    path: str = scope.path
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": scope.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in scope.headers.items()
        ],
        "client": _address(scope.client),
        "server": _address(scope.server),
    }


def _address(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else (text, 0)


class _Receiver:
    """ASGI ``receive``: the body in the chunks RSGI delivers, then the disconnect."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._chunks: AsyncIterator[bytes] | None = None
        self._done = False

    async def __call__(self) -> Message:
        if self._done:
            await self._protocol.client_disconnect()
            return {"type": "http.disconnect"}
        if self._chunks is None:
            self._chunks = aiter(self._protocol)
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": bytes(chunk), "more_body": True}


class _Sender:
    """ASGI ``send``: one RSGI response, whole or streamed."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._start: tuple[int, list[tuple[str, str]]] | None = None
        self._stream: Any = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in message.get("headers", ())
            ]
            self._start = (message["status"], headers)
        elif kind == "http.response.body":
            assert self._start is not None, "http.response.body before http.response.start"
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if self._stream is None and not more:
                self._protocol.response_bytes(*self._start, bytes(body))
                return
            if self._stream is None:
                self._stream = self._protocol.response_stream(*self._start)
            if body:
                await self._stream.send_bytes(bytes(body))


__all__ = ["RSGIApp", "asgi_scope", "read_body"]
