"""Small ASGI helpers shared by the fast prediction paths and the other endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from mlaas4hep.serve.errors import PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


def dumps(value: Any) -> bytes:
    """JSON bytes; numpy arrays and scalars are written natively."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def header(scope: Scope, name: bytes) -> str | None:
    """The value of header ``name`` (lower case), if the request has it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; :class:`PayloadTooLarge` beyond ``limit`` bytes."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large(limit)
        return bytes(body)
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def check_announced_length(content_length: str | None, limit: int) -> None:
    """:class:`PayloadTooLarge` when a request's ``Content-Length`` is over ``limit``
    (the body is then refused unread)."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise PayloadTooLarge(
            f"the request body ({int(content_length):,} bytes) is larger than the "
            f"limit of {limit:,} bytes"
        )


def too_large(limit: int) -> PayloadTooLarge:
    """The error for a body found over ``limit`` bytes while it is read."""
    return PayloadTooLarge(f"the request body is larger than the limit of {limit:,} bytes")


def limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`PayloadTooLarge` once the body exceeds ``limit``."""
    size = 0

    async def wrapped() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise too_large(limit)
        return message

    return wrapped


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_body(message: str) -> bytes:
    """The JSON error document every endpoint answers with: ``{"error": ...}``."""
    return dumps({"error": message})
