"""``/metrics``: counts recorded in plain Python, read back through
prometheus_client's own text parser, added up across server workers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving import onnx_predict, running_server, write_onnx_mlp

from mlaas4hep.serve.metrics import LATENCY_BUCKETS, Metrics

KEYS = ["pt", "eta", "phi", "mass"]


def samples(exposition: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) → value."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_and_histograms_follow_prometheus_semantics() -> None:
    metrics = Metrics()
    latencies = [0.0003, 0.0005, 0.0007, 0.004, 0.004, 3.0, 20.0]
    for seconds in latencies:
        metrics.request("/json", "POST", 200, seconds)
    metrics.request("/json", "POST", 400, 0.001)
    metrics.inference("mlp", 0.002)
    metrics.inference("mlp", 0.003, failed=True)
    observe = metrics.observer("mlp", 1)
    observe(3, 5, 0.006, 0.01)  # 3 requests, 5 rows, 2 ms queued each on average

    got = samples(metrics.exposition()[0])
    json_200 = (("code", "200"), ("endpoint", "/json"))
    assert got[("mlaas4hep_http_requests_total", json_200)] == len(latencies)
    assert got[("mlaas4hep_http_requests_total", (("code", "400"), ("endpoint", "/json")))] == 1
    duration = "mlaas4hep_http_request_duration_seconds"
    every = [*latencies, 0.001]
    for bound in LATENCY_BUCKETS:  # cumulative: observations ≤ the bound
        expected = sum(1 for s in every if s <= bound)
        le = (("endpoint", "/json"), ("le", repr(float(bound))))
        assert got[(f"{duration}_bucket", le)] == expected, bound
    assert got[(f"{duration}_bucket", (("endpoint", "/json"), ("le", "+Inf")))] == len(every)
    assert got[(f"{duration}_count", (("endpoint", "/json"),))] == len(every)
    assert got[(f"{duration}_sum", (("endpoint", "/json"),))] == pytest.approx(sum(every))
    assert got[("mlaas4hep_inference_requests_total", (("model", "mlp"),))] == 2
    assert got[("mlaas4hep_inference_errors_total", (("model", "mlp"),))] == 1
    assert got[("mlaas4hep_batch_size_bucket", (("le", "4.0"), ("model", "mlp")))] == 0
    assert got[("mlaas4hep_batch_size_bucket", (("le", "8.0"), ("model", "mlp")))] == 1
    assert got[("mlaas4hep_queue_duration_seconds_sum", (("model", "mlp"),))] == pytest.approx(
        0.002
    )
    assert metrics.post_requests == len(every)
    assert metrics.latency["mlp"].errors == 1


def test_workers_counts_are_added_up(tmp_path: Path) -> None:
    """Two workers' files in the shared directory, and this process's live counts."""
    first, second = Metrics(shared_dir=tmp_path), Metrics(shared_dir=tmp_path)
    for _ in range(3):
        first.request("/json", "POST", 200, 0.001)
    second.request("/json", "POST", 200, 0.2)
    second.request("/proto", "POST", 200, 0.2)
    (tmp_path / "1.json").write_text(json.dumps(first.snapshot()))
    (tmp_path / "2.json").write_text(json.dumps(second.snapshot()))
    (tmp_path / "3.json").write_text("{not json")  # a file being replaced is skipped
    reader = Metrics(shared_dir=tmp_path)
    reader.request("/json", "POST", 200, 0.01)
    reader.publish()  # its own file is not counted twice

    got = samples(reader.exposition()[0])
    json_200 = (("code", "200"), ("endpoint", "/json"))
    assert got[("mlaas4hep_http_requests_total", json_200)] == 3 + 1 + 1
    assert got[("mlaas4hep_http_requests_total", (("code", "200"), ("endpoint", "/proto")))] == 1
    bucket = (("endpoint", "/json"), ("le", "0.01"))
    assert got[("mlaas4hep_http_request_duration_seconds_bucket", bucket)] == 3 + 1


@pytest.mark.parametrize("workers", [1, 2])
def test_served_requests_are_counted_across_workers(tmp_path: Path, workers: int) -> None:
    repository = tmp_path / "models"
    onnx = write_onnx_mlp(repository / "mlp" / "1", inputs=4, classes=2, params={"features": KEYS})
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    with running_server(repository, "--workers", str(workers)) as url:
        # New connections each time, so that both workers get requests.
        answered_by = set()
        for row, expected in zip(x, onnx_predict(onnx / "model.onnx", x), strict=True):
            body = {"keys": KEYS, "values": row.tolist(), "model": "mlp"}
            answer = httpx.post(f"{url}/json", json=body, headers={"connection": "close"})
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json(), expected, rtol=1e-5)
            answered_by.add(answer.headers["x-request-id"].split("-")[0])  # the worker's pid
        assert len(answered_by) == workers
        assert httpx.post(f"{url}/json", content=b"{").status_code == 400
        deadline = time.monotonic() + 10  # other workers publish every second
        while True:
            got = samples(httpx.get(f"{url}/metrics").text)
            counted = got.get(("mlaas4hep_inference_requests_total", (("model", "mlp"),)), 0)
            if counted == len(x) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert counted == len(x)
    json_200 = (("code", "200"), ("endpoint", "/json"))
    assert got[("mlaas4hep_http_requests_total", json_200)] == len(x)
    assert got[("mlaas4hep_http_requests_total", (("code", "400"), ("endpoint", "/json")))] == 1
    rows = got[("mlaas4hep_batch_size_sum", (("model", "mlp"),))]
    assert rows == len(x)
