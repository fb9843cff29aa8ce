"""Prometheus metrics and the counters behind ``/status``.

Metric children are bound once per label set and cached, so recording a
request costs a dictionary lookup and two increments. With several server
workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by ``mlaas4hep serve`` and
``/metrics`` adds up every worker's files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from mlaas4hep.serve.batching import BatchObserver

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


@dataclass
class ModelLatency:
    """Request latency of one model in this process (for ``/status``)."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    worst: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "mean_latency_ms": 1e3 * self.seconds / self.requests if self.requests else 0.0,
            "max_latency_ms": 1e3 * self.worst,
        }


@dataclass
class Metrics:
    """The server's metrics, in one registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    started: float = field(default_factory=time.time)
    get_requests: int = 0
    post_requests: int = 0
    in_flight: int = 0  # HTTP requests being answered now
    latency: dict[str, ModelLatency] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = self.registry
        self._requests = Counter(
            "mlaas4hep_http_requests", "HTTP requests", ["endpoint", "code"], registry=r
        )
        self._duration = Histogram(
            "mlaas4hep_http_request_duration_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._inferences = Counter(
            "mlaas4hep_inference_requests", "Inference requests", ["model"], registry=r
        )
        self._inference_errors = Counter(
            "mlaas4hep_inference_errors", "Failed inference requests", ["model"], registry=r
        )
        self._queue = Histogram(
            "mlaas4hep_queue_duration_seconds",
            "Time requests wait for a batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._compute = Histogram(
            "mlaas4hep_compute_duration_seconds",
            "Time of one model call",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._batch_rows = Histogram(
            "mlaas4hep_batch_size",
            "Rows per model call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[str, ...], Any] = {}

    def request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Record one HTTP request."""
        if method == "GET":
            self.get_requests += 1
        else:
            self.post_requests += 1
        key = ("r", endpoint, str(status))
        pair = self._children.get(key)
        if pair is None:
            pair = (
                self._requests.labels(endpoint, str(status)),
                self._duration.labels(endpoint),
            )
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def inference(self, model: str, seconds: float, *, failed: bool = False) -> None:
        """Record one inference request (any API) to ``model``."""
        stats = self.latency.get(model)
        if stats is None:
            stats = self.latency[model] = ModelLatency()
        stats.requests += 1
        stats.seconds += seconds
        stats.worst = max(stats.worst, seconds)
        key = ("i", model)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._inferences.labels(model)
        child.inc()
        if failed:
            stats.errors += 1
            self._inference_errors.labels(model).inc()

    def observer(self, model: str, version: int) -> BatchObserver:
        """The callback a model's batcher reports each model call to."""
        del version  # one series per model: versions come and go
        queue = self._queue.labels(model)
        compute = self._compute.labels(model)
        rows_histogram = self._batch_rows.labels(model)

        def observe(requests: int, rows: int, queued: float, seconds: float) -> None:
            if requests:
                queue.observe(queued / requests)
            compute.observe(seconds)
            rows_histogram.observe(rows)

        return observe

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
