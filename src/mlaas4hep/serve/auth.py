"""Token authentication with scopes: ``read`` ⊂ ``write`` ⊂ ``admin``.

The tokens file (``--auth-tokens FILE``) is YAML or JSON::

    tokens:
      - {name: alice, token: "s3cret", scopes: [write]}
      - {name: ci, sha256: "<hex digest of the token>", scopes: [read]}

or plain text, one ``TOKEN SCOPE[,SCOPE] [NAME]`` per line (``#`` comments).
Storing ``sha256`` instead of ``token`` keeps the secret out of the file.
Clients send ``Authorization: Bearer TOKEN``.

With a tokens file every endpoint but the health checks needs a token; reads
(predictions, listings) need ``read``, changes (upload, delete, params) need
``write``. Without one, reads are open, and writes are refused when the server
listens on a non-loopback address, unless ``allow_remote_writes`` is set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve.errors import Forbidden, Unauthorized

SCOPES = ("read", "write", "admin")
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}


@dataclass(frozen=True)
class Identity:
    """Who sent a request (``name`` is recorded in the repository history)."""

    name: str
    scope: str


class Authorizer:
    """Decides whether a request may use an endpoint needing ``scope``."""

    def __init__(self, tokens: dict[str, Identity] | None, *, writes_open: bool) -> None:
        self._tokens = tokens
        self._writes_open = writes_open

    @property
    def enabled(self) -> bool:
        """True when a tokens file is in use."""
        return self._tokens is not None

    def check(self, authorization: str | None, scope: str) -> Identity | None:
        """The identity behind an ``Authorization`` header value, if it may act at
        ``scope``; raises :class:`Unauthorized` or :class:`Forbidden` otherwise."""
        if self._tokens is None:
            if scope != "read" and not self._writes_open:
                raise Forbidden(
                    "write endpoints are disabled: the server listens on a non-loopback "
                    "address without --auth-tokens (set allow_remote_writes to open them)"
                )
            return None
        token = _bearer(authorization)
        if token is None:
            raise Unauthorized("this server needs a token: send 'Authorization: Bearer TOKEN'")
        identity = self._tokens.get(_digest(token))
        if identity is None:
            raise Unauthorized("unknown token")
        if _RANK[identity.scope] < _RANK[scope]:
            raise Forbidden(f"token {identity.name!r} has scope {identity.scope!r}, not {scope!r}")
        return identity


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    kind, _, token = value.strip().partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _digest(token: str) -> str:
    # Tokens are looked up by digest: the lookup's timing says nothing about the token.
    return hashlib.sha256(token.encode()).hexdigest()


def load_authorizer(path: str | Path | None, *, writes_open: bool) -> Authorizer:
    """An :class:`Authorizer` from a tokens file, or an open one when ``path`` is None."""
    if path is None:
        return Authorizer(None, writes_open=writes_open)
    return Authorizer(read_tokens(Path(path)), writes_open=writes_open)


def read_tokens(path: Path) -> dict[str, Identity]:
    """Token digests → identities, from a tokens file (see the module docstring)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the tokens file {path}: {error.strerror}") from None
    entries = _structured(text, path)
    if entries is None:
        entries = list(_lines(text))
    tokens: dict[str, Identity] = {}
    for number, entry in enumerate(entries, start=1):
        digest, identity = _entry(entry, f"{path}: token {number}")
        tokens[digest] = identity
    if not tokens:
        raise ConfigError(f"the tokens file {path} holds no tokens")
    return tokens


def _structured(text: str, path: Path) -> list[Any] | None:
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError):
        return None
    if isinstance(data, dict) and "tokens" in data:
        if not isinstance(data["tokens"], list):
            raise ConfigError(f"{path}: 'tokens' must be a list")
        return list(data["tokens"])
    return None


def _lines(text: str) -> Iterable[dict[str, Any]]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        scopes = words[1].split(",") if len(words) > 1 else ["read"]
        yield {"token": words[0], "scopes": scopes, "name": words[2] if len(words) > 2 else None}


def _entry(entry: Any, where: str) -> tuple[str, Identity]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with token (or sha256) and scopes")
    scopes = entry.get("scopes", ["read"])
    if isinstance(scopes, str):
        scopes = [scopes]
    unknown = [s for s in scopes if s not in _RANK]
    if unknown or not scopes:
        raise ConfigError(f"{where}: scopes must be among {list(SCOPES)}, not {scopes}")
    scope = max(scopes, key=_RANK.__getitem__)
    if entry.get("token"):
        digest = _digest(str(entry["token"]))
    elif entry.get("sha256"):
        digest = str(entry["sha256"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{where}: sha256 must be 64 hex digits")
    else:
        raise ConfigError(f"{where} has neither token nor sha256")
    name = str(entry.get("name") or f"token-{digest[:8]}")
    return digest, Identity(name, scope)
