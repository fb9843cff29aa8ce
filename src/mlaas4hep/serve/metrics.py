"""Prometheus metrics and the counters behind ``/status``.

Requests are counted in plain Python, a dictionary increment and a bucket
search each; the counts become Prometheus metric families only when
``/metrics`` is scraped. (Recording through prometheus_client's metric objects
cost several times as much per request, and more again with its multi-process
files, on the path every prediction takes.)

With several server workers, ``mlaas4hep serve`` names a directory the workers
share (:data:`METRICS_DIR_VARIABLE`). Every worker writes its counts there
every :data:`PUBLISH_INTERVAL` seconds and when it stops, and ``/metrics``
adds up every worker's file: the other workers' counts are at most that old.
The files of stopped workers stay, so the totals never go back.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from mlaas4hep.serve.batching import BatchObserver

METRICS_DIR_VARIABLE = "MLAAS4HEP_METRICS_DIR"
"""Environment variable naming the directory where workers publish their counts."""
PUBLISH_INTERVAL = 1.0
"""Seconds between two publications of one worker's counts."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

Labels = tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """One metric: a counter, or a histogram when it has ``buckets``."""

    name: str
    help: str
    labels: Labels
    buckets: tuple[float, ...] | None = None


HTTP_REQUESTS = Family("mlaas4hep_http_requests", "HTTP requests", ("endpoint", "code"))
HTTP_DURATION = Family(
    "mlaas4hep_http_request_duration_seconds",
    "HTTP request latency",
    ("endpoint",),
    LATENCY_BUCKETS,
)
INFERENCES = Family("mlaas4hep_inference_requests", "Inference requests", ("model",))
INFERENCE_ERRORS = Family("mlaas4hep_inference_errors", "Failed inference requests", ("model",))
QUEUE = Family(
    "mlaas4hep_queue_duration_seconds",
    "Time requests wait for a batch",
    ("model",),
    LATENCY_BUCKETS,
)
COMPUTE = Family(
    "mlaas4hep_compute_duration_seconds", "Time of one model call", ("model",), LATENCY_BUCKETS
)
BATCH_ROWS = Family("mlaas4hep_batch_size", "Rows per model call", ("model",), BATCH_BUCKETS)
FAMILIES = (HTTP_REQUESTS, HTTP_DURATION, INFERENCES, INFERENCE_ERRORS, QUEUE, COMPUTE, BATCH_ROWS)


class Histogram:
    """Observations counted per bucket (the last one is +Inf), and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is ≥ it."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


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
    """The counts of this server process; ``shared_dir`` is where the workers
    of a multi-worker server publish theirs (None: a single process)."""

    shared_dir: Path | None = None
    started: float = field(default_factory=time.time)
    get_requests: int = 0
    post_requests: int = 0
    in_flight: int = 0  # HTTP requests being answered now
    latency: dict[str, ModelLatency] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._counters: dict[Family, dict[Labels, float]] = {
            f: {} for f in FAMILIES if f.buckets is None
        }
        self._histograms: dict[Family, dict[Labels, Histogram]] = {
            f: {} for f in FAMILIES if f.buckets is not None
        }
        self._http_requests = self._counters[HTTP_REQUESTS]
        self._http_durations = self._histograms[HTTP_DURATION]
        self._inferences = self._counters[INFERENCES]

    def request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Record one HTTP request."""
        if method == "GET":
            self.get_requests += 1
        else:
            self.post_requests += 1
        key = (endpoint, str(status))
        self._http_requests[key] = self._http_requests.get(key, 0) + 1
        histogram = self._http_durations.get((endpoint,))
        if histogram is None:
            histogram = self._histogram(HTTP_DURATION, (endpoint,))
        histogram.observe(seconds)

    def inference(self, model: str, seconds: float, *, failed: bool = False) -> None:
        """Record one inference request (any API) to ``model``."""
        stats = self.latency.get(model)
        if stats is None:
            stats = self.latency[model] = ModelLatency()
        stats.requests += 1
        stats.seconds += seconds
        stats.worst = max(stats.worst, seconds)
        key = (model,)
        self._inferences[key] = self._inferences.get(key, 0) + 1
        if failed:
            stats.errors += 1
            errors = self._counters[INFERENCE_ERRORS]
            errors[key] = errors.get(key, 0) + 1

    def observer(self, model: str, version: int) -> BatchObserver:
        """The callback a model's batcher reports each model call to."""
        del version  # one series per model: versions come and go
        queue = self._histogram(QUEUE, (model,))
        compute = self._histogram(COMPUTE, (model,))
        rows_histogram = self._histogram(BATCH_ROWS, (model,))

        def observe(requests: int, rows: int, queued: float, seconds: float) -> None:
            if requests:
                queue.observe(queued / requests)
            compute.observe(seconds)
            rows_histogram.observe(rows)

        return observe

    def _histogram(self, family: Family, labels: Labels) -> Histogram:
        series = self._histograms[family]
        histogram = series.get(labels)
        if histogram is None:
            assert family.buckets is not None
            histogram = series[labels] = Histogram(family.buckets)
        return histogram

    def snapshot(self) -> dict[str, Any]:
        """This process's counts, JSON-friendly: ``{family: [[labels, value]]}``
        for counters, ``{family: [[labels, bucket counts, sum]]}`` for histograms."""
        data: dict[str, Any] = {
            f.name: [[list(labels), value] for labels, value in series.items()]
            for f, series in self._counters.items()
        }
        for f, histograms in self._histograms.items():
            data[f.name] = [[list(k), list(h.counts), h.total] for k, h in histograms.items()]
        return data

    def publish(self) -> None:
        """Write :meth:`snapshot` to this process's file in ``shared_dir`` (atomically)."""
        if self.shared_dir is None:
            return
        path = self.shared_dir / f"{os.getpid()}.json"
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.snapshot()))
        scratch.replace(path)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (every worker's counts) and its content type."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector([self.snapshot(), *self._other_workers()]))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _other_workers(self) -> Iterator[dict[str, Any]]:
        if self.shared_dir is None:
            return
        mine = f"{os.getpid()}.json"
        for path in sorted(self.shared_dir.glob("*.json")):
            if path.name == mine:
                continue
            with contextlib.suppress(OSError, ValueError):  # a worker's file just replaced
                yield json.loads(path.read_text())


class _SnapshotCollector(Collector):
    """Metric families adding up several :meth:`Metrics.snapshot` results."""

    def __init__(self, snapshots: list[dict[str, Any]]) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        for family in FAMILIES:
            if family.buckets is None:
                yield self._counter(family)
            else:
                yield self._histogram(family, family.buckets)

    def _series(self, family: Family) -> Iterator[list[Any]]:
        for snapshot in self._snapshots:
            yield from snapshot.get(family.name, ())

    def _counter(self, family: Family) -> Metric:
        totals: dict[Labels, float] = {}
        for labels, value in self._series(family):
            key = tuple(labels)
            totals[key] = totals.get(key, 0) + value
        metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
        for labels, value in sorted(totals.items()):
            metric.add_metric(labels, value)
        return metric

    def _histogram(self, family: Family, bounds: tuple[float, ...]) -> Metric:
        totals: dict[Labels, tuple[list[int], float]] = {}
        for labels, counts, total in self._series(family):
            key = tuple(labels)
            if key in totals:
                summed, previous = totals[key]
                totals[key] = (
                    [a + b for a, b in zip(summed, counts, strict=True)],
                    previous + total,
                )
            else:
                totals[key] = (list(counts), total)
        metric = HistogramMetricFamily(family.name, family.help, labels=family.labels)
        edges = [*(_bound(b) for b in bounds), "+Inf"]
        for labels, (counts, total) in sorted(totals.items()):
            cumulative, running = [], 0
            for edge, count in zip(edges, counts, strict=True):
                running += count
                cumulative.append((edge, running))
            metric.add_metric(labels, cumulative, total)
        return metric


def _bound(value: float) -> str:
    """A bucket bound as prometheus_client writes it (``1.0``, ``0.005``)."""
    return repr(float(value))
