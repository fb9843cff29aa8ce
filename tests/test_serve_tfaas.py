"""The TFaaS API end to end: a real ``mlaas4hep serve`` process, real sockets,
TFaaS's curl recipes, protobuf bodies built here, answers compared with ONNX
Runtime in this process."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import onnx_predict, running_server, write_onnx_mlp

from mlaas4hep.serve.tfaas_proto import Predictions, Row

LABELS = ["qcd", "higgs", "top"]
KEYS = ["pt", "eta", "phi", "mass"]
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model files to upload: an ONNX MLP with labels and TFaaS params."""
    root = tmp_path_factory.mktemp("models")
    write_onnx_mlp(
        root / "mlp",
        inputs=4,
        classes=3,
        labels=LABELS,
        params={"model": "model.onnx", "labels": "labels.txt", "features": KEYS},
    )
    write_onnx_mlp(root / "mlp2", inputs=4, classes=3, seed=1)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = tmp_path_factory.mktemp("serve") / "models"
    with running_server(repository) as url:
        yield url


def curl(*args: str) -> tuple[int, bytes]:
    """Run curl; return the HTTP status and body."""
    done = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args],
        capture_output=True,
        check=True,
        timeout=60,
    )
    body, _, status = done.stdout.rpartition(b"\n")
    return int(status), body


def upload_with_curl(url: str, name: str, directory: Path) -> dict[str, object]:
    """TFaaS's recipe: curl -X POST .../upload -F name=... -F params=@... -F model=@... -F labels=@..."""
    args = [
        "-X",
        "POST",
        f"{url}/upload",
        "-F",
        f"name={name}",
        "-F",
        f"model=@{directory / 'model.onnx'}",
    ]
    for part, file in (("params", "params.json"), ("labels", "labels.txt")):
        if (directory / file).exists():
            args += ["-F", f"{part}=@{directory / file}"]
    status, body = curl(*args)
    assert status == 200, body
    answer: dict[str, object] = json.loads(body)
    return answer


def test_curl_recipes(server: str, models: Path, tmp_path: Path) -> None:
    answer = upload_with_curl(server, "mlp", models / "mlp")
    assert answer["model"] == "mlp"
    assert answer["version"] == 1

    # /json with TFaaS's body
    x = RNG.normal(size=(1, 4)).astype(np.float32)
    expected = onnx_predict(models / "mlp" / "model.onnx", x)[0]
    body = json.dumps({"keys": KEYS, "values": x[0].tolist(), "model": "mlp"})
    for path in ("/json", "/predict/json"):
        status, raw = curl(
            "-X", "POST", f"{server}{path}", "-H", "Content-Type: application/json", "-d", body
        )
        assert status == 200, raw
        np.testing.assert_allclose(json.loads(raw), expected, rtol=1e-5)

    # /proto with a real protobuf body
    row = Row(key=KEYS, value=x[0].tolist(), model="mlp").SerializeToString()
    (tmp_path / "row.pb").write_bytes(row)
    status, raw = curl("-X", "POST", f"{server}/proto", "--data-binary", f"@{tmp_path / 'row.pb'}")
    assert status == 200, raw
    predictions = Predictions.FromString(raw)
    assert [c.label for c in predictions.prediction] == LABELS
    np.testing.assert_allclose([c.probability for c in predictions.prediction], expected, rtol=1e-5)

    # /models, /params, /status
    status, raw = curl(f"{server}/models")
    assert status == 200
    listed = {m["name"]: m for m in json.loads(raw)}
    assert listed["mlp"]["versions"] == [1]
    assert listed["mlp"]["labels"] == "labels.txt"  # TFaaS's params field
    assert listed["mlp"]["classes"] == LABELS
    status, raw = curl(f"{server}/params/mlp")
    assert status == 200
    assert json.loads(raw)["model"] == "model.onnx"
    status, raw = curl(f"{server}/status")
    assert status == 200
    report = json.loads(raw)
    assert report["postRequests"] >= 3
    assert report["requestsInFlight"] == 1  # the /status request itself
    assert report["models"]["mlp"]["requests"] >= 3

    # /delete with TFaaS's form field
    upload_with_curl(server, "doomed", models / "mlp2")
    status, raw = curl("-X", "DELETE", f"{server}/delete", "-F", "model=doomed")
    assert status == 200, raw
    status, raw = curl(
        "-X",
        "POST",
        f"{server}/json",
        "-d",
        json.dumps({"values": [1, 2, 3, 4], "model": "doomed"}),
    )
    assert status == 404
    assert "doomed" in json.loads(raw)["error"]


def test_bundle_upload_with_curl(server: str, models: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        tar.add(models / "mlp2", arcname="bundled")
    status, raw = curl(
        "-X", "POST", f"{server}/upload",
        "-H", "Content-Encoding: gzip",
        "-H", "Content-Type: application/octet-stream",
        "--data-binary", f"@{bundle}",
    )  # fmt: skip
    assert status == 200, raw
    assert json.loads(raw)["model"] == "bundled"
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    answer = httpx.post(f"{server}/json", json={"values": x.tolist(), "model": "bundled"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    np.testing.assert_allclose(
        answer.json(), onnx_predict(models / "mlp2" / "model.onnx", x), rtol=1e-5
    )


def test_keys_are_matched_and_reordered(server: str, models: Path) -> None:
    upload_with_curl(server, "keyed", models / "mlp")
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    expected = onnx_predict(models / "mlp" / "model.onnx", x)
    order = [2, 0, 3, 1]
    shuffled = {"keys": [KEYS[i] for i in order], "values": x[:, order].tolist(), "model": "keyed"}
    answer = httpx.post(f"{server}/json", json=shuffled)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json(), expected, rtol=1e-5)
    missing = httpx.post(
        f"{server}/json", json={"keys": [*KEYS[:3], "pz"], "values": [1, 2, 3, 4], "model": "keyed"}
    )
    assert missing.status_code == 400
    assert "mass" in missing.json()["error"]
    assert "pz" in missing.json()["error"]


def test_image_endpoint(server: str, tmp_path: Path) -> None:
    """A tiny image model (mean colour → 2 classes) through /image, resized as its metadata says."""
    import torch

    class Colour(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            red = x[:, :, :, 0].mean(dim=(1, 2))
            blue = x[:, :, :, 2].mean(dim=(1, 2))
            return torch.softmax(torch.stack([red, blue], dim=1), dim=1)

    directory = tmp_path / "colour"
    directory.mkdir()
    torch.onnx.export(
        Colour(), (torch.zeros(1, 8, 8, 3),), str(directory / "model.onnx"),
        input_names=["image"], output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    (directory / "labels.txt").write_text("red\nblue\n")
    image = {"width": 8, "height": 8, "channels": 3, "layout": "NHWC", "scale": 1 / 255}
    (directory / "params.json").write_text(json.dumps({"name": "colour", "image": image}))
    upload_with_curl(server, "colour", directory)
    picture = Image.new("RGB", (40, 30), (250, 10, 20))
    png = tmp_path / "red.png"
    picture.save(png)
    status, raw = curl("-X", "POST", f"{server}/image", "-F", f"image=@{png}", "-F", "model=colour")
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["filename"] == "red.png"
    assert [label["label"] for label in answer["labels"]] == ["red", "blue"]
    red, blue = 250 / 255, 20 / 255
    expected = np.exp([red, blue]) / np.exp([red, blue]).sum()
    np.testing.assert_allclose(
        [lab["probability"] for lab in answer["labels"]], expected, rtol=1e-4
    )
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(jpeg, "JPEG")
    files = {"image": ("blue.jpg", jpeg.getvalue(), "image/jpeg")}
    blue_answer = httpx.post(f"{server}/predict/image", files=files, data={"model": "colour"})
    assert blue_answer.status_code == 200, blue_answer.text
    assert blue_answer.json()["labels"][0]["label"] == "blue"
    not_image = httpx.post(
        f"{server}/image", files={"image": ("x.png", b"not a png")}, data={"model": "colour"}
    )
    assert not_image.status_code == 400
    assert "PNG" in not_image.json()["error"]


def test_default_model_and_versions(server: str, models: Path) -> None:
    upload_with_curl(server, "versioned", models / "mlp")
    second = upload_with_curl(server, "versioned", models / "mlp2")
    assert second["version"] == 2
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    latest = httpx.post(f"{server}/json", json={"values": x.tolist(), "model": "versioned"}).json()
    np.testing.assert_allclose(latest, onnx_predict(models / "mlp2" / "model.onnx", x), rtol=1e-5)
    first = httpx.post(f"{server}/json", json={"values": x.tolist(), "model": "versioned:1"}).json()
    np.testing.assert_allclose(first, onnx_predict(models / "mlp" / "model.onnx", x), rtol=1e-5)
    assert httpx.post(f"{server}/params", json={"name": "versioned"}).status_code == 200
    default = httpx.post(f"{server}/json", json={"values": x.tolist()})
    assert default.status_code == 200, default.text
    np.testing.assert_allclose(default.json(), latest, rtol=1e-6)
    assert httpx.get(f"{server}/params").json()["name"] == "versioned"
    gone = httpx.delete(f"{server}/delete/versioned/2")
    assert gone.json()["deleted"] == [2]
    after = httpx.post(f"{server}/json", json={"values": x.tolist(), "model": "versioned"}).json()
    np.testing.assert_allclose(after, first, rtol=1e-6)


def test_bad_upload_keeps_the_old_version_serving(
    server: str, models: Path, tmp_path: Path
) -> None:
    upload_with_curl(server, "sturdy", models / "mlp")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"\x08\x07garbage that is not an onnx graph")
    status, raw = curl(
        "-X",
        "POST",
        f"{server}/upload",
        "-F",
        "name=sturdy",
        "-F",
        f"model=@{broken / 'model.onnx'}",
    )
    assert 400 <= status < 500, raw
    assert "model.onnx" in json.loads(raw)["error"]
    listed = {m["name"]: m for m in httpx.get(f"{server}/models").json()}
    assert listed["sturdy"]["versions"] == [1]
    x = RNG.normal(size=(1, 4)).astype(np.float32)
    answer = httpx.post(f"{server}/json", json={"values": x[0].tolist(), "model": "sturdy"})
    assert answer.status_code == 200
    np.testing.assert_allclose(
        answer.json(), onnx_predict(models / "mlp" / "model.onnx", x)[0], rtol=1e-5
    )


def test_concurrent_uploads_get_distinct_versions(server: str, models: Path) -> None:
    data = (models / "mlp2" / "model.onnx").read_bytes()
    answers: list[httpx.Response] = []

    def send() -> None:
        files = {"model": ("model.onnx", data)}
        answers.append(
            httpx.post(f"{server}/upload", data={"name": "crowded"}, files=files, timeout=60)
        )

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sorted(a.json()["version"] for a in answers) == [1, 2, 3, 4, 5, 6]


def test_two_hundred_concurrent_clients_get_their_own_answers(server: str, models: Path) -> None:
    upload_with_curl(server, "busy", models / "mlp")
    x = RNG.normal(size=(200, 4)).astype(np.float32)
    expected = onnx_predict(models / "mlp" / "model.onnx", x)
    before = httpx.get(f"{server}/status").json()["models"].get("busy", {})

    async def one(client: httpx.AsyncClient, i: int) -> list[float]:
        answer = await client.post(
            f"{server}/json", json={"keys": KEYS, "values": x[i].tolist(), "model": "busy"}
        )
        assert answer.status_code == 200, answer.text
        result: list[float] = answer.json()
        return result

    async def everyone() -> list[list[float]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)))

    answers = asyncio.run(everyone())
    np.testing.assert_allclose(np.array(answers), expected, rtol=1e-5)
    stats = httpx.get(f"{server}/status").json()["models"]["busy"]
    batching = next(iter(stats["batching"].values()))
    assert stats["requests"] - before.get("requests", 0) == 200
    assert batching["batches"] < batching["requests"]  # requests shared model calls
    metrics = httpx.get(f"{server}/metrics").text
    assert 'mlaas4hep_batch_size_count{model="busy"}' in metrics


HOSTILE = {
    "dotdot": ("bad/../../escape.txt", tarfile.REGTYPE),
    "absolute": ("/tmp/absolute.txt", tarfile.REGTYPE),
    "symlink": ("bad/link", tarfile.SYMTYPE),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_bundles_are_refused(server: str, kind: str) -> None:
    name, member_type = HOSTILE[kind]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type = member_type
        if member_type == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            payload = b"boo"
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    answer = httpx.post(
        f"{server}/upload",
        content=buffer.getvalue(),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 400, answer.text
    assert "error" in answer.json()
    assert not Path("/tmp/absolute.txt").exists()


BAD_REQUESTS = [
    ("unknown model", "/json", {"values": [1, 2, 3, 4], "model": "nope"}, 404, "nope"),
    ("too few values", "/json", {"values": [1, 2, 3], "model": "mlp"}, 400, "4 values"),
    ("strings", "/json", {"values": ["a", 2, 3, 4], "model": "mlp"}, 400, "numbers"),
    ("ragged rows", "/json", {"values": [[1, 2, 3, 4], [1]], "model": "mlp"}, 400, "lengths"),
    ("no values", "/json", {"model": "mlp"}, 400, "values"),
    (
        "keys do not fit",
        "/json",
        {"keys": ["a"], "values": [1, 2, 3, 4], "model": "mlp"},
        400,
        "keys",
    ),
    ("bad version", "/json", {"values": [1, 2, 3, 4], "model": "mlp:99"}, 404, "99"),
]


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "word"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_clear_4xx(
    server: str, models: Path, case: str, path: str, body: object, status: int, word: str
) -> None:
    del case
    if "mlp" not in {m["name"] for m in httpx.get(f"{server}/models").json()}:
        upload_with_curl(server, "mlp", models / "mlp")
    answer = httpx.post(f"{server}{path}", json=body)
    assert answer.status_code == status, answer.text
    assert word in answer.json()["error"]


def test_malformed_bodies_get_4xx(server: str) -> None:
    cases = [
        ("/json", b"{not json", 400),
        ("/json", b"[1, 2]", 400),
        ("/proto", b"\xff\xff\xff\xff", 400),
        ("/upload", b"garbage, not an archive", 400),
        ("/params", b"nope", 400),
    ]
    for path, body, status in cases:
        answer = httpx.post(f"{server}{path}", content=body)
        assert answer.status_code == status, (path, answer.text)
        assert answer.json()["error"]
    assert httpx.get(f"{server}/nowhere").status_code == 404
    assert httpx.get(f"{server}/json").status_code == 405
    assert httpx.get(f"{server}/nowhere").json()["error"]


def test_limits_and_tokens(tmp_path: Path, models: Path) -> None:
    settings = tmp_path / "server.yaml"
    settings.write_text("max_request_bytes: 2000\nmax_upload_bytes: 300000\nmax_batch_rows: 10\n")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("w-token write writer\nr-token read reader\n")
    with running_server(
        tmp_path / "repo", "--config", str(settings), "--auth-tokens", str(tokens)
    ) as url:
        write = {"Authorization": "Bearer w-token"}
        read = {"Authorization": "Bearer r-token"}
        files = {"model": ("model.onnx", (models / "mlp" / "model.onnx").read_bytes())}
        assert httpx.post(f"{url}/upload", data={"name": "m"}, files=files).status_code == 401
        wrong = httpx.post(
            f"{url}/upload",
            data={"name": "m"},
            files=files,
            headers={"Authorization": "Bearer guess"},
        )
        assert wrong.status_code == 401
        assert "unknown token" in wrong.json()["error"]
        forbidden = httpx.post(f"{url}/upload", data={"name": "m"}, files=files, headers=read)
        assert forbidden.status_code == 403
        assert "write" in forbidden.json()["error"]
        assert (
            httpx.post(f"{url}/upload", data={"name": "m"}, files=files, headers=write).status_code
            == 200
        )
        assert (
            httpx.post(f"{url}/json", json={"values": [1, 2, 3, 4], "model": "m"}).status_code
            == 401
        )
        assert (
            httpx.post(
                f"{url}/json", json={"values": [1, 2, 3, 4], "model": "m"}, headers=read
            ).status_code
            == 200
        )
        big = httpx.post(f"{url}/json", json={"values": [0.5] * 1000, "model": "m"}, headers=read)
        assert big.status_code == 413
        for values, status in (([1, 2, 3, 4], 200), ([0.5] * 1000, 413)):
            # chunked, without Content-Length: the server counts the bytes as they come
            body = json.dumps({"values": values, "model": "m"}).encode()
            chunked = httpx.post(
                f"{url}/json",
                content=iter([body[i : i + 500] for i in range(0, len(body), 500)]),
                headers={**read, "Content-Type": "application/json"},
            )
            assert "content-length" not in chunked.request.headers
            assert chunked.status_code == status, chunked.text
        too_many = httpx.post(
            f"{url}/json", json={"values": [[1, 2, 3, 4]] * 11, "model": "m"}, headers=read
        )
        assert too_many.status_code == 400
        assert "limit" in too_many.json()["error"]
        huge_upload = {"model": ("model.onnx", b"\0" * 400_000)}
        assert (
            httpx.post(
                f"{url}/upload", data={"name": "h"}, files=huge_upload, headers=write
            ).status_code
            == 413
        )
        assert httpx.get(f"{url}/v2/health/live").status_code == 200  # health needs no token


def test_remote_writes_are_refused_without_tokens(tmp_path: Path, models: Path) -> None:
    with running_server(tmp_path / "repo", "--host", "0.0.0.0") as url:
        files = {"model": ("model.onnx", (models / "mlp" / "model.onnx").read_bytes())}
        refused = httpx.post(f"{url}/upload", data={"name": "m"}, files=files)
        assert refused.status_code == 403
        assert "--auth-tokens" in refused.json()["error"]
        assert httpx.get(f"{url}/models").status_code == 200


def test_openapi_covers_every_endpoint(server: str, tmp_path: Path) -> None:
    from mlaas4hep.serve.app import create_app

    schema = httpx.get(f"{server}/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    app = create_app(repository=str(tmp_path / "models"))
    paths = {route.path for route in app._router.routes}
    paths |= {"/v2/health/live", "/v2/health/ready"}
    assert paths <= set(schema["paths"])


def test_tags_pick_the_serving_version_and_history_records_them(server: str, models: Path) -> None:
    upload_with_curl(server, "tagged", models / "mlp")
    upload_with_curl(server, "tagged", models / "mlp2")
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    newest = onnx_predict(models / "mlp2" / "model.onnx", x)
    oldest = onnx_predict(models / "mlp" / "model.onnx", x)
    np.testing.assert_allclose(
        httpx.post(f"{server}/json", json={"values": x.tolist(), "model": "tagged"}).json(),
        newest,
        rtol=1e-5,
    )

    pinned = httpx.put(f"{server}/models/tagged/tags/prod", json={"version": 1})
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["serving_version"] == 1
    np.testing.assert_allclose(
        httpx.post(f"{server}/json", json={"values": x.tolist(), "model": "tagged"}).json(),
        oldest,
        rtol=1e-5,
    )
    staging = httpx.put(f"{server}/models/tagged/tags/staging", json={"version": 2})
    assert staging.status_code == 200
    by_tag = httpx.post(
        f"{server}/json", json={"values": x.tolist(), "model": "tagged:staging"}
    ).json()
    np.testing.assert_allclose(by_tag, newest, rtol=1e-5)

    detail = httpx.get(f"{server}/models/tagged").json()
    assert detail["tags"] == {"prod": 1, "staging": 2}
    assert [v["version"] for v in detail["version_details"]] == [1, 2]
    assert all(len(v["checksum"]) == 64 for v in detail["version_details"])
    assert [h["action"] for h in detail["history"]][:2] == ["tag", "tag"]

    assert httpx.delete(f"{server}/models/tagged/tags/prod").json()["serving_version"] == 2
    assert httpx.delete(f"{server}/models/tagged/tags/prod").status_code == 404
    assert httpx.put(f"{server}/models/tagged/tags/Bad Tag", json={"version": 1}).status_code == 400
    assert httpx.put(f"{server}/models/tagged/tags/qa", json={"version": 9}).status_code == 404
    assert httpx.put(f"{server}/models/tagged/tags/qa", content=b"1").status_code == 400


JUNK = [b"", b"\x00" * 10, b"{}", b"[]", b"null", b'{"values": [[]]}', b'{"values": [1e400]}',
        b'{"values": {"a": 1}}', b'{"keys": [1, 2], "values": [1, 2]}', b'{"keys": [[1]], "values": [1]}',
        "ü".encode() * 3, b"\x1f\x8b\x08\x00junk", b"PK\x03\x04junk", b"--boundary\r\n\r\n"]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/json"), ("POST", "/proto"), ("POST", "/image"), ("POST", "/upload"), ("DELETE", "/delete"),
     ("POST", "/params"), ("PUT", "/models/mlp/tags/prod"), ("GET", "/params/..%2Fetc"), ("DELETE", "/delete/mlp/x")],
)  # fmt: skip
def test_junk_never_gets_a_500(server: str, models: Path, method: str, path: str) -> None:
    if "mlp" not in {m["name"] for m in httpx.get(f"{server}/models").json()}:
        upload_with_curl(server, "mlp", models / "mlp")
    for body in JUNK:
        for content_type in (
            "application/json",
            "multipart/form-data; boundary=boundary",
            "application/octet-stream",
        ):
            answer = httpx.request(
                method, f"{server}{path}", content=body, headers={"Content-Type": content_type}
            )
            assert 400 <= answer.status_code < 500, (
                body,
                content_type,
                answer.status_code,
                answer.text,
            )
            assert answer.json()["error"]
