"""How the running server follows its repository: polling, failed loads, the
cache of loaded models, graceful shutdown, structured logs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from serving import free_port, onnx_predict, running_server, write_onnx_mlp

X = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)


def wait_for(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("the condition never came true")


def predict(url: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/json", json={"values": X.tolist(), "model": model}, timeout=30)


def test_polling_follows_versions_copied_by_hand_and_keeps_serving_through_a_broken_one(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "models"
    first = write_onnx_mlp(repository / "hand" / "1", seed=1)
    settings = tmp_path / "server.yaml"
    settings.write_text("poll_interval: 0.2\n")
    with running_server(repository, "--config", str(settings)) as url:
        np.testing.assert_allclose(
            predict(url, "hand").json(), onnx_predict(first / "model.onnx", X), rtol=1e-5
        )

        second = write_onnx_mlp(tmp_path / "staging" / "2", seed=2)
        shutil.copytree(second, repository / "hand" / "2")
        expected = onnx_predict(second / "model.onnx", X)
        wait_for(lambda: np.allclose(predict(url, "hand").json(), expected, rtol=1e-5))

        broken = tmp_path / "staging" / "3"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not a model")
        shutil.copytree(broken, repository / "hand" / "3")

        def failure_shown() -> bool:
            listed = {m["name"]: m for m in httpx.get(f"{url}/models").json()}
            return "3" in listed["hand"]["errors"]

        wait_for(failure_shown)
        listed = {m["name"]: m for m in httpx.get(f"{url}/models").json()}["hand"]
        assert listed["serving_version"] == 2
        assert listed["versions"] == [1, 2, 3]
        assert "model.onnx" in listed["errors"]["3"]
        status = httpx.get(f"{url}/status").json()
        assert "3" in status["models"]["hand"]["errors"]
        np.testing.assert_allclose(predict(url, "hand").json(), expected, rtol=1e-5)
        assert predict(url, "hand:3").status_code == 422


def test_explicit_control_does_not_follow_changes(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    first = write_onnx_mlp(repository / "pinned" / "1", seed=1)
    settings = tmp_path / "server.yaml"
    settings.write_text("model_control: explicit\npoll_interval: 0.1\n")
    with running_server(repository, "--config", str(settings)) as url:
        expected = onnx_predict(first / "model.onnx", X)
        np.testing.assert_allclose(predict(url, "pinned").json(), expected, rtol=1e-5)
        write_onnx_mlp(repository / "pinned" / "2", seed=2)
        time.sleep(1.0)
        np.testing.assert_allclose(predict(url, "pinned").json(), expected, rtol=1e-5)
        assert predict(url, "pinned:2").status_code == 200  # a version asked for is loaded


def test_startup_control_loads_every_model_and_the_cache_is_bounded(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for seed, name in enumerate(["a", "b", "c"]):
        write_onnx_mlp(repository / name / "1", seed=seed)
    settings = tmp_path / "server.yaml"
    settings.write_text("model_control: startup\ncache_size: 2\n")
    with running_server(repository, "--config", str(settings)) as url:
        for name in ["a", "b", "c", "a"]:
            answer = predict(url, name)
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(
                answer.json(), onnx_predict(repository / name / "1" / "model.onnx", X), rtol=1e-5
            )
        loaded = httpx.get(f"{url}/status").json()["models"]
        assert sum(len(m.get("loaded_versions", [])) for m in loaded.values()) == 2


def heavy_model(directory: Path) -> Path:
    """An MLP slow enough (1024 × 1024) that a large batch takes a second or so."""
    import torch

    model = torch.nn.Sequential(
        torch.nn.Linear(4, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024), torch.nn.Softmax(1)
    ).eval()
    directory.mkdir(parents=True)
    torch.onnx.export(
        model, (torch.zeros(1, 4),), str(directory / "model.onnx"), input_names=["x"],
        output_names=["p"], dynamic_axes={"x": {0: "b"}, "p": {0: "b"}}, dynamo=False,
    )  # fmt: skip
    return directory


def test_shutdown_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    heavy_model(repository / "heavy" / "1")
    port = free_port()
    log = tmp_path / "server.log"
    command = [
        sys.executable,
        "-m",
        "mlaas4hep",
        "serve",
        "--repository",
        str(repository),
        "--port",
        str(port),
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _live(url), timeout=60)
        rows = np.random.default_rng(0).normal(size=(20_000, 4)).astype(np.float32)
        assert predict(url, "heavy").status_code == 200  # loaded before the clock starts
        body = orjson.dumps({"values": rows.tolist(), "model": "heavy"})
        answers: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{url}/json", content=body, timeout=60))
        )
        sender.start()
        # SIGTERM only once the server is answering it (besides the /status request)
        wait_for(lambda: _status(url)["requestsInFlight"] >= 2, timeout=30)
        process.send_signal(signal.SIGTERM)
        sender.join()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert answers[0].status_code == 200, answers[0].text
    assert np.array(answers[0].json()).shape == (20_000, 1024)


def _status(url: str) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{url}/status", timeout=10).raise_for_status().json()
    return status


def _live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_logs_are_json_lines_with_request_ids(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running_server(tmp_path / "models", log=log) as url:
        answer = httpx.post(
            f"{url}/json",
            json={"values": [1, 2], "model": "absent"},
            headers={"X-Request-ID": "trace-42"},
        )
        assert answer.status_code == 404
        assert answer.headers["x-request-id"] == "trace-42"
        generated = httpx.post(f"{url}/json", json={"values": [1, 2], "model": "absent"})
        assert generated.headers["x-request-id"]
        time.sleep(0.3)
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    traced = [e for e in entries if e.get("request_id") == "trace-42"]
    assert traced, log.read_text()
    assert "absent" in traced[0]["message"]
    assert {"time", "level", "logger", "pid"} <= set(traced[0])


@pytest.mark.parametrize(
    "setting", ["max_batch_size: -1", "model_control: sometimes", "colour: blue"]
)
def test_bad_settings_are_clear_errors(tmp_path: Path, setting: str) -> None:
    settings = tmp_path / "server.yaml"
    settings.write_text(setting + "\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlaas4hep",
            "serve",
            "--config",
            str(settings),
            "--repository",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert setting.split(":", maxsplit=1)[0] in done.stderr


def test_serving_from_an_s3_repository(s3_bucket: object, tmp_path: Path) -> None:
    """A repository in an S3 bucket (moto's server): read, and written by uploads."""
    from conftest import BUCKET

    first = write_onnx_mlp(tmp_path / "v1", seed=1)
    s3_bucket.upload_file(str(first / "model.onnx"), BUCKET, "models/remote/1/model.onnx")  # type: ignore[attr-defined]
    with running_server(f"s3://{BUCKET}/models", log=tmp_path / "server.log") as url:
        np.testing.assert_allclose(
            predict(url, "remote").json(), onnx_predict(first / "model.onnx", X), rtol=1e-5
        )
        second = write_onnx_mlp(tmp_path / "v2", seed=2)
        files = {"model": ("model.onnx", (second / "model.onnx").read_bytes())}
        uploaded = httpx.post(f"{url}/upload", data={"name": "remote"}, files=files, timeout=60)
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json()["version"] == 2
        np.testing.assert_allclose(
            predict(url, "remote").json(), onnx_predict(second / "model.onnx", X), rtol=1e-5
        )
    keys = [
        o["Key"]
        for o in s3_bucket.list_objects_v2(Bucket=BUCKET, Prefix="models/remote/")["Contents"]
    ]  # type: ignore[attr-defined]
    assert "models/remote/2/model.onnx" in keys
