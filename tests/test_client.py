"""The clients (:mod:`mlaas4hep.client`) and ``mlaas4hep client`` against a real
``mlaas4hep serve`` process on loopback, over real sockets."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving import free_port, onnx_predict, running_server, write_onnx_mlp

from mlaas4hep.client import AsyncClient, Client, ServerError, ServerUnreachable
from mlaas4hep.errors import ConfigError, DataError

LABELS = ["a", "b", "c"]
INPUTS = 4
RNG = np.random.default_rng(7)
ROWS = RNG.normal(size=(5, INPUTS)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model files to upload: an MLP (with labels and params) and an image classifier."""
    root = tmp_path_factory.mktemp("client-files")
    write_onnx_mlp(
        root / "mlp", inputs=INPUTS, classes=3, labels=LABELS, params={"description": "test"}
    )
    _write_image_model(root / "pictures")
    return root


def _write_image_model(directory: Path) -> None:
    """An ONNX classifier of 8×8 RGB images (NHWC, pixels 0–255) into 3 labels."""
    import torch

    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 3, 3), torch.nn.Softmax(dim=1)
    ).eval()
    with torch.no_grad():
        model[1].weight.mul_(0.01)  # keep the softmax away from 0 and 1 for pixels 0–255
    directory.mkdir()
    torch.onnx.export(
        model,
        (torch.zeros(1, 8, 8, 3),),
        str(directory / "model.onnx"),
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
        dynamo=False,
    )
    (directory / "labels.txt").write_text("cat\ndog\ncar\n")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mlaas4hep model package (logistic regression on features f0..f3)."""
    import awkward as ak
    from sklearn.linear_model import LogisticRegression

    from mlaas4hep.train.export import export_sklearn
    from mlaas4hep.train.package import write_package
    from mlaas4hep.transform.scan import spec_from_events

    root = tmp_path_factory.mktemp("client-package")
    x = RNG.normal(size=(200, INPUTS)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 2] > 0).astype(int)
    exported = export_sklearn(LogisticRegression().fit(x, y), {"x": x}, root / "export")
    spec = spec_from_events(ak.zip({f"f{i}": x[:, i] for i in range(INPUTS)}))
    return write_package(
        root / "model", exported, spec=spec, labels=["bkg", "sig"], name="pkg", params={}
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One open server (no tokens) for the module."""
    root = tmp_path_factory.mktemp("client-server")
    with running_server(root / "repository") as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Client]:
    with Client(server) as opened:
        yield opened


@pytest.fixture(scope="module")
def mlp(client: Client, files: Path) -> dict[str, Any]:
    """The MLP uploaded as model "mlp" with a multipart form; the server's answer."""
    return client.upload("mlp", files / "mlp" / "model.onnx", files / "mlp" / "params.json", LABELS)


def reference(rows: np.ndarray, files: Path) -> np.ndarray:
    return onnx_predict(files / "mlp" / "model.onnx", rows)


# -- uploads ------------------------------------------------------------------


def test_upload_multipart(mlp: dict[str, Any], client: Client) -> None:
    assert mlp["model"] == "mlp"
    assert mlp["version"] == 1
    assert mlp["serving_version"] == 1
    assert isinstance(mlp["checksum"], str)
    assert mlp["checksum"]
    params = client.params("mlp")
    assert params["name"] == "mlp"
    assert params["description"] == "test"


def test_upload_base64_with_params_dict(client: Client, files: Path) -> None:
    answer = client.upload(
        "mlp64",
        files / "mlp" / "model.onnx",
        params={"description": "base64"},
        labels=files / "mlp" / "labels.txt",
        base64=True,
    )
    assert (answer["model"], answer["version"]) == ("mlp64", 1)
    assert client.params("mlp64")["description"] == "base64"
    np.testing.assert_allclose(
        client.predict(ROWS, model="mlp64"), reference(ROWS, files), rtol=1e-5
    )
    assert [label for label, _ in client.predict_proto(ROWS[0], model="mlp64")] == LABELS


def test_upload_bundle_tar_gz(client: Client, files: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        tar.add(files / "mlp", arcname="bundled")
    answer = client.upload_bundle(bundle)
    assert (answer["model"], answer["version"]) == ("bundled", 1)
    np.testing.assert_allclose(
        client.predict(ROWS, model="bundled"), reference(ROWS, files), rtol=1e-5
    )


def test_upload_bundle_directory(client: Client, files: Path, tmp_path: Path) -> None:
    directory = shutil.copytree(files / "mlp", tmp_path / "from-dir")
    answer = client.upload_bundle(directory)
    assert (answer["model"], answer["version"]) == ("from-dir", 1)
    np.testing.assert_allclose(
        client.predict(ROWS[1:2], model="from-dir:1"), reference(ROWS, files)[1:2], rtol=1e-5
    )


def test_upload_package_keys_reordered(client: Client, package: Path) -> None:
    answer = client.upload_package(package)
    assert (answer["model"], answer["version"]) == ("pkg", 1)
    assert client.upload_package(package, name="pkg-renamed")["model"] == "pkg-renamed"
    expected = onnx_predict(package / "model.onnx", ROWS)
    keys = [f"f{i}" for i in range(INPUTS)]
    np.testing.assert_allclose(client.predict(ROWS, keys, "pkg"), expected, rtol=1e-5)
    order = [2, 0, 3, 1]
    shuffled = client.predict(ROWS[:, order], [keys[i] for i in order], "pkg")
    np.testing.assert_allclose(shuffled, expected, rtol=1e-5)
    proto = client.predict_proto(ROWS[0, order].tolist(), [keys[i] for i in order], "pkg")
    assert [label for label, _ in proto] == ["bkg", "sig"]
    np.testing.assert_allclose([p for _, p in proto], expected[0], rtol=1e-5)


# -- predictions --------------------------------------------------------------


def test_predict_rows(client: Client, mlp: dict[str, Any], files: Path) -> None:
    expected = reference(ROWS, files)
    many = client.predict(ROWS.tolist(), keys=["w", "x", "y", "z"], model="mlp")
    assert many.shape == (5, 3)
    np.testing.assert_allclose(many, expected, rtol=1e-5)
    one = client.predict(ROWS[:1], model=f"mlp:{mlp['version']}")
    assert one.shape == (1, 3)
    np.testing.assert_allclose(one, expected[:1], rtol=1e-5)


@pytest.mark.usefixtures("mlp")
def test_predict_one_row(
    server: str, client: Client, package: Path, files: Path, tmp_path: Path
) -> None:
    """TFaaS's own request form: one row of values, answered with one output row."""
    one = client.predict(ROWS[0], model="mlp")
    assert one.shape == (3,)
    np.testing.assert_allclose(one, reference(ROWS, files)[0], rtol=1e-5)

    client.upload_package(package, name="pkg-one-row")
    keys, order = [f"f{i}" for i in range(INPUTS)], [2, 0, 3, 1]
    shuffled = client.predict(ROWS[0, order], [keys[i] for i in order], "pkg-one-row")
    np.testing.assert_allclose(shuffled, onnx_predict(package / "model.onnx", ROWS)[0], rtol=1e-5)

    request = tmp_path / "input.json"
    request.write_text(json.dumps({"values": ROWS[0].tolist(), "name": "mlp"}))
    done = cli("--url", server, "--predict", str(request))
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(json.loads(done.stdout), reference(ROWS, files)[0], rtol=1e-5)


@pytest.mark.usefixtures("mlp")
def test_predict_proto(client: Client, files: Path) -> None:
    answer = client.predict_proto(ROWS[0].tolist(), model="mlp")
    assert [label for label, _ in answer] == LABELS
    np.testing.assert_allclose(
        [probability for _, probability in answer], reference(ROWS, files)[0], rtol=1e-5
    )


def test_predict_image(client: Client, files: Path, tmp_path: Path) -> None:
    from PIL import Image

    assert client.upload_bundle(files / "pictures")["model"] == "pictures"
    pixels = RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    path = tmp_path / "picture.png"
    Image.fromarray(pixels, "RGB").save(path)
    expected = onnx_predict(files / "pictures" / "model.onnx", pixels[np.newaxis])[0]
    ranked = sorted(zip(["cat", "dog", "car"], expected, strict=True), key=lambda p: -p[1])

    answer = client.predict_image(path, "pictures")
    assert answer["filename"] == "picture.png"
    assert [entry["label"] for entry in answer["labels"]] == [label for label, _ in ranked]
    np.testing.assert_allclose(
        [entry["probability"] for entry in answer["labels"]],
        [probability for _, probability in ranked],
        rtol=1e-5,
    )
    from_bytes = client.predict_image(path.read_bytes(), "pictures")
    assert from_bytes["labels"] == answer["labels"]


# -- listings, params, status ---------------------------------------------------


def test_models_params_default_status_metrics(client: Client, mlp: dict[str, Any]) -> None:
    listing = {entry["name"]: entry for entry in client.models()}
    assert listing["mlp"]["versions"] == [mlp["version"]]
    assert listing["mlp"]["labels"] == "labels.txt"

    default = client.set_default("mlp")
    assert default["name"] == "mlp"
    assert client.params() == client.params("mlp")
    np.testing.assert_allclose(client.predict(ROWS), client.predict(ROWS, model="mlp"))

    status = client.status()
    assert isinstance(status, dict)
    assert status
    metrics = client.metrics()
    assert "# TYPE" in metrics
    assert "/json" in metrics


def test_delete(client: Client, files: Path) -> None:
    model = files / "mlp" / "model.onnx"
    assert client.upload("doomed", model)["version"] == 1
    assert client.upload("doomed", model)["version"] == 2
    assert client.delete("doomed", 1) == {"model": "doomed", "deleted": [1]}
    assert client.predict(ROWS[:1], model="doomed").shape == (1, 3)
    assert client.delete("doomed") == {"model": "doomed", "deleted": [2]}
    assert "doomed" not in {entry["name"] for entry in client.models()}
    with pytest.raises(ServerError) as error:
        client.predict(ROWS[0], model="doomed")
    assert error.value.status == 404


# -- errors -------------------------------------------------------------------


def test_server_errors(client: Client, mlp: dict[str, Any]) -> None:
    with pytest.raises(ServerError) as unknown:
        client.predict(ROWS[0], model="no-such-model")
    assert unknown.value.status == 404
    assert "no-such-model" in unknown.value.message
    assert str(unknown.value).startswith("the server answered 404: ")

    with pytest.raises(ServerError) as width:
        client.predict(ROWS[:, :3], model=mlp["model"])
    assert width.value.status == 400
    assert "got 3" in width.value.message

    with pytest.raises(ServerError) as proto:
        client.predict_proto(ROWS[0, :3], model=mlp["model"])
    assert proto.value.status == 400

    with pytest.raises(ServerError) as refused:
        client.upload("broken", Path(__file__))  # not a model
    assert refused.value.status in (400, 422)
    assert "broken" not in {entry["name"] for entry in client.models()}


def test_bad_arguments_fail_before_sending(client: Client, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="finite"):
        client.predict([1.0, float("nan"), 0.0, 0.0], model="mlp")
    with pytest.raises(ConfigError, match="different lengths"):
        client.predict([[1.0, 2.0], [3.0]])
    with pytest.raises(ConfigError, match="numbers"):
        client.predict(["a", "b"])
    with pytest.raises(ConfigError, match="3 keys"):
        client.predict([1.0, 2.0], keys=["a", "b", "c"])
    with pytest.raises(ConfigError, match="one row"):
        client.predict_proto([[1.0, 2.0]])
    with pytest.raises(DataError, match="cannot read"):
        client.upload("x", tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="directory"):
        client.upload("x", tmp_path)
    with pytest.raises(ConfigError, match=r"no metadata\.json"):
        client.upload_package(tmp_path)


def test_unreachable_server() -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", timeout=5) as nowhere,
        pytest.raises(ServerUnreachable, match=r"cannot reach http://127\.0\.0\.1:"),
    ):
        nowhere.models()


# -- the asyncio client -------------------------------------------------------


@pytest.mark.usefixtures("mlp")
def test_async_client(server: str, files: Path) -> None:
    async def calls() -> tuple[Any, ...]:
        async with AsyncClient(server) as client:
            return await asyncio.gather(
                client.predict(ROWS, model="mlp"),
                *(client.predict(ROWS[i : i + 1], model="mlp") for i in range(len(ROWS))),
                client.predict_proto(ROWS[0], model="mlp"),
                client.models(),
                client.params("mlp"),
                client.status(),
            )

    rows, *ones, proto, listing, params, status = asyncio.run(calls())
    expected = reference(ROWS, files)
    np.testing.assert_allclose(rows, expected, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate(ones), expected, rtol=1e-5)
    assert [label for label, _ in proto] == LABELS
    assert "mlp" in {entry["name"] for entry in listing}
    assert params["name"] == "mlp"
    assert isinstance(status, dict)

    async def unknown() -> None:
        async with AsyncClient(server) as client:
            await client.delete("no-such-model")

    with pytest.raises(ServerError) as error:
        asyncio.run(unknown())
    assert error.value.status == 404


# -- tokens ---------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key) PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server with TLS (a self-signed certificate) and a tokens file (w-token: write,
    r-token: read): its https URL and the certificate."""
    root = tmp_path_factory.mktemp("client-secured")
    tokens = root / "tokens.txt"
    tokens.write_text("w-token write writer\nr-token read reader\n")
    cert, key = _self_signed(root)
    options = ["--auth-tokens", str(tokens), "--tls-cert", str(cert), "--tls-key", str(key)]
    with running_server(root / "repository", *options) as url:
        yield url, cert


def test_tokens(secured: tuple[str, Path], files: Path) -> None:
    url, cert = secured
    model = files / "mlp" / "model.onnx"
    with Client(url, verify=str(cert)) as anonymous, pytest.raises(ServerError) as missing:
        anonymous.upload("guarded", model)
    assert missing.value.status == 401
    with Client(url, "r-token", verify=str(cert)) as reader, pytest.raises(ServerError) as denied:
        reader.upload("guarded", model)
    assert denied.value.status == 403
    assert "read" in denied.value.message
    with Client(url, "w-token", verify=str(cert)) as writer:
        assert writer.upload("guarded", model)["version"] == 1
    with Client(url, "r-token", verify=str(cert)) as reader:
        np.testing.assert_allclose(
            reader.predict(ROWS, model="guarded"), reference(ROWS, files), rtol=1e-5
        )
        with pytest.raises(ServerError) as delete:
            reader.delete("guarded")
        assert delete.value.status == 403
    with Client(url, "wrong", verify=False) as stranger, pytest.raises(ServerError) as unknown:
        stranger.models()
    assert unknown.value.status == 401


def test_tls_verification(secured: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, cert = secured
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with (
        Client(url, "r-token") as untrusting,
        pytest.raises(ServerUnreachable, match="CERTIFICATE"),
    ):
        untrusting.models()
    with pytest.raises(DataError, match="CA certificates"):
        Client(url, verify=str(cert.parent / "missing.pem"))


# -- the command ------------------------------------------------------------------


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``mlaas4hep client ARGS`` in a subprocess, with ``env`` added to the environment."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLAAS4HEP_TOKEN"}, **env}
    return subprocess.run(
        [sys.executable, "-m", "mlaas4hep", "client", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_upload_predict_models_delete(server: str, files: Path, tmp_path: Path) -> None:
    upload = tmp_path / "upload.json"
    shutil.copy(files / "mlp" / "labels.txt", tmp_path / "labels.txt")
    upload.write_text(
        json.dumps(
            {
                "model": str(files / "mlp" / "model.onnx"),  # absolute
                "labels": "labels.txt",  # relative to upload.json
                "name": "from-cli",
                "params": {"description": "cli"},
            }
        )
    )
    done = cli("--url", server, "--upload", str(upload))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "from-cli"

    request = tmp_path / "input.json"
    request.write_text(
        json.dumps({"keys": ["a", "b", "c", "d"], "values": ROWS[:2].tolist(), "name": "from-cli"})
    )
    done = cli("--url", server, "--predict", str(request))
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(json.loads(done.stdout), reference(ROWS[:2], files), rtol=1e-5)

    request.write_text(json.dumps({"values": ROWS.tolist(), "model": "no-such-model"}))
    done = cli("--url", server, "--predict", str(request), "--model", "from-cli:1")
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(json.loads(done.stdout), reference(ROWS, files), rtol=1e-5)

    done = cli("--url", server, "--models")
    assert done.returncode == 0, done.stderr
    assert "from-cli" in {entry["name"] for entry in json.loads(done.stdout)}

    done = cli("--url", server, "--params", "from-cli")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["description"] == "cli"

    done = cli("--url", server, "--delete", "from-cli")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"model": "from-cli", "deleted": [1]}


def test_cli_bundle_and_image(server: str, files: Path, package: Path, tmp_path: Path) -> None:
    from PIL import Image

    done = cli("--url", server, "--bundle", str(package))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "pkg"
    done = cli("--url", server, "--bundle", str(files / "pictures"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "pictures"
    picture = tmp_path / "grey.png"
    Image.new("RGB", (20, 10), (128, 128, 128)).save(picture)
    done = cli("--url", server, "--image", str(picture), "--model", "pictures")
    assert done.returncode == 0, done.stderr
    assert {entry["label"] for entry in json.loads(done.stdout)["labels"]} == {"cat", "dog", "car"}


def test_cli_token_and_tls(secured: tuple[str, Path]) -> None:
    url, cert = secured
    trusted = {"SSL_CERT_FILE": str(cert)}  # the CA bundle httpx reads when verifying
    done = cli("--url", url, "--models", MLAAS4HEP_TOKEN="r-token", **trusted)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)
    assert cli("--url", url, "--models", "--token", "r-token", **trusted).returncode == 0
    refused = cli("--url", url, "--delete", "guarded", "--token", "r-token", **trusted)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: the server answered 403: ")
    untrusted = cli("--url", url, "--models", "--token", "r-token")
    assert untrusted.returncode == 2
    assert "CERTIFICATE" in untrusted.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--models", "--params", "x"], "give exactly one of"),
        ([], "give exactly one of"),
        (["--predict", "{missing}"], "cannot read"),
        (["--predict", "{bad_json}"], "is not valid JSON"),
        (["--upload", "{bad_upload}"], "names no model"),
        (["--image", "{bad_json}"], "--image needs --model"),
        (["--delete", "x:zero"], "NAME:VERSION"),
        (["--params", "no-such-model"], "the server answered 404"),
        (["--url", "{nowhere}", "--models"], "cannot reach"),
    ],
)
def test_cli_errors(server: str, tmp_path: Path, arguments: list[str], message: str) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "upload.json").write_text(json.dumps({"model": "model.onnx"}))
    names = {
        "missing": str(tmp_path / "missing.json"),
        "bad_json": str(tmp_path / "bad.json"),
        "bad_upload": str(tmp_path / "upload.json"),
        "nowhere": f"http://127.0.0.1:{free_port()}",
    }
    args = [argument.format(**names) for argument in arguments]
    done = cli(*(args if "--url" in args else ["--url", server, *args]))
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]


def test_package_tarball_is_what_the_server_unpacks(package: Path) -> None:
    """The in-memory archive holds the package under its name, without links or owners."""
    from mlaas4hep.client.library import _tar_gz

    with tarfile.open(fileobj=io.BytesIO(_tar_gz(package, "pkg")), mode="r:gz") as tar:
        members = tar.getmembers()
    assert {m.name.split("/")[0] for m in members} == {"pkg"}
    assert "pkg/metadata.json" in {m.name for m in members}
    assert all((m.isfile() or m.isdir()) and m.uid == 0 and not m.uname for m in members)
