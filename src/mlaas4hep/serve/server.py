"""Run the application on Granian (a Rust HTTP server), through its RSGI interface.

``serve(settings)`` blocks until the server is stopped (SIGINT/SIGTERM): it then
stops accepting connections, lets in-flight requests finish, and unloads the
models. Each worker process builds its own application from the settings,
which travel to it in the environment (``MLAAS4HEP_SERVE_SETTINGS``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from granian.constants import Interfaces, Loops
from granian.server import Server

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve.app import create_app
from mlaas4hep.serve.config import ServerSettings
from mlaas4hep.serve.metrics import METRICS_DIR_VARIABLE
from mlaas4hep.serve.rsgi import RSGIApp

SETTINGS_VARIABLE = "MLAAS4HEP_SERVE_SETTINGS"


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, with the request id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: ServerSettings, level: int = logging.INFO) -> None:
    """Structured (JSON) or plain logs on stderr for the ``mlaas4hep`` loggers."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("mlaas4hep")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def application() -> Any:
    """The application factory each worker calls (settings from the environment)."""
    raw = os.environ.get(SETTINGS_VARIABLE)
    settings = ServerSettings(**json.loads(raw)) if raw else ServerSettings()
    configure_logging(settings, int(os.environ.get("MLAAS4HEP_LOG_LEVEL", logging.INFO)))
    tune_garbage_collection()
    return RSGIApp(create_app(settings))


def tune_garbage_collection() -> None:
    """Fewer, cheaper collections in a server process.

    Each request allocates a few dozen short-lived objects; with the default
    thresholds the collector runs every few requests and its occasional full
    passes over everything loaded stall the event loop for milliseconds (the p99
    latency of ``/json`` under load halved without them, see
    benchmarks/RESULTS.md). Objects alive at start are moved out of its sight.
    """
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()


def serve(settings: ServerSettings, *, log_level: int = logging.INFO) -> None:
    """Serve until stopped."""
    if "://" not in settings.repository:
        Path(settings.repository).mkdir(parents=True, exist_ok=True)
    for path in (settings.tls_cert, settings.tls_key, settings.auth_tokens):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{path} does not exist")
    os.environ[SETTINGS_VARIABLE] = json.dumps(dataclasses.asdict(settings))
    os.environ["MLAAS4HEP_LOG_LEVEL"] = str(log_level)
    shared_metrics = None
    if settings.workers > 1 and METRICS_DIR_VARIABLE not in os.environ:
        # Every worker publishes its metrics here; /metrics adds them up.
        shared_metrics = tempfile.mkdtemp(prefix="mlaas4hep-metrics-")
        os.environ[METRICS_DIR_VARIABLE] = shared_metrics
    configure_logging(settings, log_level)
    server = Server(
        "mlaas4hep.serve.server:application",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        websockets=False,
        workers=settings.workers,
        loop=Loops.auto,
        factory=True,
        log_enabled=True,
        log_access=False,
        ssl_cert=Path(settings.tls_cert) if settings.tls_cert else None,
        ssl_key=Path(settings.tls_key) if settings.tls_key else None,
        respawn_failed_workers=True,
    )
    try:
        server.serve()
    finally:
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)
