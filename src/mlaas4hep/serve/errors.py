"""Errors of the inference layer, each mapped to one HTTP status by the server.

Every one is an :class:`~mlaas4hep.errors.MlaasError` with a message meant for
the person who sent the request; the server answers ``{"error": message}``
with :attr:`ServeError.status`.
"""

from __future__ import annotations

from mlaas4hep.errors import MlaasError


class ServeError(MlaasError):
    """Base class; ``status`` is the HTTP status code the server answers with."""

    status = 400


class BadRequest(ServeError, ValueError):
    """The request is malformed or does not fit the model (wrong keys, shapes, types)."""


class ModelNotFound(ServeError, LookupError):
    """No model of that name, or no such version or tag of it."""

    status = 404


class InvalidName(BadRequest):
    """A model name, version or tag that is not allowed (path separators, ``..``, ...)."""


class UnsafeArchive(BadRequest):
    """An uploaded archive that tries to escape its directory or holds links or devices."""


class PayloadTooLarge(ServeError):
    """A body, archive or batch over the configured limit."""

    status = 413


class Unauthorized(ServeError):
    """No token, or a token the server does not know."""

    status = 401


class Forbidden(ServeError):
    """A known token without the scope the endpoint needs, or writes refused by policy."""

    status = 403


class ModelLoadError(ServeError):
    """A model version whose files cannot be loaded by any backend."""

    status = 422


class Unavailable(ServeError):
    """The model exists but cannot serve now (failed to load, shutting down)."""

    status = 503
