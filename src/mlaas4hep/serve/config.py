"""Server settings: embedded defaults, a YAML/JSON file, then command-line flags.

Every setting has a safe default, so ``mlaas4hep serve`` alone serves
``./models`` on ``127.0.0.1:8083`` (TFaaS's port). A settings file may hold any
of the fields of :class:`ServerSettings`; an unknown key is an error naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve.batching import BatchingConfig
from mlaas4hep.serve.repository import VersionPolicy

MODEL_CONTROL = ("poll", "startup", "explicit")


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``mlaas4hep serve`` can be told (the keys of ``server.yaml``)."""

    repository: str = "./models"
    host: str = "127.0.0.1"
    port: int = 8083
    workers: int = 1
    grpc_port: int | None = None
    """Port of the gRPC server (Triton's GRPCInferenceService); None: no gRPC."""
    grpc_max_message_bytes: int = 512 * 2**20
    """Largest gRPC message received or sent (gRPC's own default is 4 MiB)."""
    auth_tokens: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    model_control: str = "poll"
    """``poll``: load on first use and follow repository changes every
    ``poll_interval`` s; ``startup``: also load every model at start;
    ``explicit``: load on first use, never follow changes by polling."""
    poll_interval: float = 2.0
    version_policy: str = "latest:1"
    cache_size: int = 16
    """Most model versions loaded at once (least recently used are unloaded)."""
    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0
    instances: int = 1
    threads: int | None = None
    """Intra-op threads per model call (None: the framework's default)."""
    device: str = "cpu"
    max_request_bytes: int = 64 * 2**20
    max_upload_bytes: int = 2 * 2**30
    max_batch_rows: int = 65_536
    """Most rows one prediction request may carry."""
    allow_remote_writes: bool = False
    """Allow upload/delete/params without tokens on a non-loopback address."""
    access_log: bool = False
    log_format: str = "json"

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL:
            raise ConfigError(
                f"model_control must be one of {list(MODEL_CONTROL)}, not {self.model_control!r}"
            )
        for name in ("port", "grpc_port"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 65536:
                raise ConfigError(f"{name} must be between 1 and 65535, not {value}")
        if self.workers < 1:
            raise ConfigError(f"workers must be ≥ 1, not {self.workers}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both tls_cert and tls_key")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"log_format must be 'json' or 'text', not {self.log_format!r}")
        for name in ("max_request_bytes", "max_upload_bytes", "max_batch_rows", "cache_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, not {getattr(self, name)}")
        VersionPolicy.parse(self.version_policy)
        self.batching  # noqa: B018 - validates the batching fields

    @property
    def batching(self) -> BatchingConfig:
        """The dynamic batching settings of every model."""
        return BatchingConfig(
            max_batch_size=self.max_batch_size,
            max_queue_delay=self.max_queue_delay_ms / 1e3,
            instances=self.instances,
        )

    @property
    def policy(self) -> VersionPolicy:
        """The parsed version policy."""
        return VersionPolicy.parse(self.version_policy)

    @property
    def loopback(self) -> bool:
        """True when the server only listens on the loopback interface."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with ``changes`` (``None`` values are ignored: flags not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_settings(path: str | Path | None = None, **overrides: Any) -> ServerSettings:
    """Defaults, updated by the settings file at ``path``, then by ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read(Path(path))
    try:
        settings = ServerSettings(**values)
    except TypeError as error:
        raise ConfigError(f"{path}: {error}") from None
    return settings.replace(**overrides)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the server settings {path}: {error.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path} is not valid YAML/JSON: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(ServerSettings)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown setting {key!r}{hint}")
    return data
