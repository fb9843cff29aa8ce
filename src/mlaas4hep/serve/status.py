"""``GET /status``: how the server process and its models are doing."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from mlaas4hep import __version__
from mlaas4hep.serve.state import ServerState


def server_status(state: ServerState) -> dict[str, Any]:
    """Uptime, CPU, memory, load, request counters and per-model statistics
    (TFaaS's fields first; counters are this worker process's)."""
    virtual = psutil.virtual_memory()
    swap = psutil.swap_memory()
    metrics = state.metrics
    models: dict[str, Any] = {}
    for served in state.models.loaded():
        entry = models.setdefault(served.name, {"loaded_versions": []})
        entry["loaded_versions"].append(served.version.version)
        serving = state.models.serving(served.name)
        entry["serving_version"] = serving.version.version if serving else None
        entry.setdefault("batching", {})[str(served.version.version)] = (
            served.batcher.stats.as_dict()
        )
    for name, latency in metrics.latency.items():
        models.setdefault(name, {}).update(latency.as_dict())
    for name in state.models.failed_models():
        errors = state.models.failures(name)
        models.setdefault(name, {})["errors"] = {str(v): e for v, e in errors.items()}
    return {
        "Uptime": time.time() - metrics.started,
        "CPU": psutil.cpu_percent(percpu=True),
        "Memory": {
            "Virtual": _memory(virtual),
            "Swap": _memory(swap),
        },
        "Load": dict(zip(("load1", "load5", "load15"), os.getloadavg(), strict=True)),
        "getRequests": metrics.get_requests,
        "postRequests": metrics.post_requests,
        "requestsInFlight": metrics.in_flight,  # this one included
        "version": __version__,
        "pid": os.getpid(),
        "workers": state.settings.workers,
        "models": models,
    }


def _memory(memory: Any) -> dict[str, float]:
    return {
        "total": memory.total,
        "free": memory.free,
        "used": memory.used,
        "usedPercent": memory.percent,
    }
