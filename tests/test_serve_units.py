"""The server's parts on their own: dynamic batching, tokens, settings, the
protobuf schema and the TFaaS row parsing."""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve import tfaas_proto
from mlaas4hep.serve.api.tfaas_rows import parse_json, parse_proto, split_model
from mlaas4hep.serve.auth import load_authorizer, read_tokens
from mlaas4hep.serve.batching import BatchingConfig, DynamicBatcher
from mlaas4hep.serve.config import load_settings
from mlaas4hep.serve.errors import BadRequest, Forbidden, Unauthorized

# -- dynamic batching ------------------------------------------------------------


class Recorder:
    """A thread-safe "model": doubles its input, records the batch sizes it saw."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.sizes: list[int] = []
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self._lock:
            self.sizes.append(len(x))
        if self.fail_on is not None and np.any(x == self.fail_on):
            raise ValueError("the model chokes on this value")
        return {"y": 2 * x, "rowsum": x.sum(axis=1)}


def run_requests(
    model: Recorder, config: BatchingConfig, requests: list[np.ndarray]
) -> list[dict[str, np.ndarray] | BaseException]:
    async def main() -> list[dict[str, np.ndarray] | BaseException]:
        with ThreadPoolExecutor(2) as pool:
            batcher = DynamicBatcher(model, config, pool)
            return await asyncio.gather(
                *(batcher.infer({"x": r}) for r in requests), return_exceptions=True
            )

    return asyncio.run(main())


def test_concurrent_requests_share_model_calls_and_get_their_own_rows() -> None:
    rng = np.random.default_rng(0)
    requests = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(100)]
    model = Recorder()
    results = run_requests(model, BatchingConfig(max_batch_size=16), requests)
    for request, result in zip(requests, results, strict=True):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], 2 * request)
        np.testing.assert_array_equal(result["rowsum"], request.sum(axis=1))
    assert sum(model.sizes) == sum(len(r) for r in requests)
    assert len(model.sizes) < len(requests)
    assert max(model.sizes) <= 16


def test_requests_of_other_shapes_are_never_joined() -> None:
    requests = [np.ones((1, 3 + i % 2), np.float32) * i for i in range(20)]
    results = run_requests(Recorder(), BatchingConfig(max_batch_size=64), requests)
    for i, result in enumerate(results):
        assert isinstance(result, dict)
        assert result["y"].shape == (1, 3 + i % 2)
        assert np.all(result["y"] == 2 * i)


def test_a_failing_request_fails_alone() -> None:
    requests = [np.full((1, 2), i, np.float32) for i in range(30)]
    results = run_requests(Recorder(fail_on=7.0), BatchingConfig(max_batch_size=32), requests)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [7]
    assert all(np.all(r["y"] == 2 * i) for i, r in enumerate(results) if i != 7)  # type: ignore[index]


def test_queue_delay_gathers_a_fuller_batch() -> None:
    async def main() -> list[int]:
        model = Recorder()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(
                model, BatchingConfig(max_batch_size=8, max_queue_delay=0.05), pool
            )
            first = asyncio.ensure_future(batcher.infer({"x": np.ones((1, 2))}))
            await asyncio.sleep(0.01)
            rest = [batcher.infer({"x": np.ones((1, 2))}) for _ in range(3)]
            await asyncio.gather(first, *rest)
            assert batcher.idle
            assert batcher.stats.requests == 4
        return model.sizes

    assert asyncio.run(main()) == [4]


def test_batching_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="max_batch_size"):
        BatchingConfig(max_batch_size=-1)
    with pytest.raises(ConfigError, match="instances"):
        BatchingConfig(instances=0)


# -- tokens ----------------------------------------------------------------------


def test_tokens_from_yaml_and_lines(tmp_path: Path) -> None:
    yaml_file = tmp_path / "tokens.yaml"
    digest = hashlib.sha256(b"hidden").hexdigest()
    yaml_file.write_text(
        f"tokens:\n  - {{name: alice, token: s3cret, scopes: [write]}}\n"
        f"  - {{name: ci, sha256: {digest}, scopes: [read]}}\n"
    )
    auth = load_authorizer(yaml_file, writes_open=False)
    assert auth.check("Bearer s3cret", "write") is not None
    identity = auth.check("Bearer hidden", "read")
    assert identity is not None
    assert identity.name == "ci"
    with pytest.raises(Forbidden, match="ci"):
        auth.check("Bearer hidden", "write")
    with pytest.raises(Unauthorized):
        auth.check("Bearer nope", "read")
    with pytest.raises(Unauthorized):
        auth.check(None, "read")
    with pytest.raises(Unauthorized):
        auth.check("Basic s3cret", "read")

    lines = tmp_path / "tokens.txt"
    lines.write_text("# comment\nabc admin root\nxyz read\n")
    tokens = read_tokens(lines)
    assert {i.name for i in tokens.values()} == {
        "root",
        f"token-{hashlib.sha256(b'xyz').hexdigest()[:8]}",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens:\n  - {token: a, scopes: [superuser]}\n", "scopes"),
        ("tokens:\n  - {scopes: [read]}\n", "neither token nor sha256"),
        ("tokens:\n  - {sha256: abc, scopes: [read]}\n", "64 hex"),
        ("# nothing\n", "no tokens"),
    ],
)
def test_bad_tokens_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_tokens(path)


def test_without_tokens_writes_depend_on_the_address() -> None:
    assert load_authorizer(None, writes_open=True).check(None, "write") is None
    with pytest.raises(Forbidden, match="auth-tokens"):
        load_authorizer(None, writes_open=False).check(None, "write")
    assert load_authorizer(None, writes_open=False).check(None, "read") is None


# -- settings --------------------------------------------------------------------


def test_settings_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("port: 9000\nmax_batch_size: 8\nversion_policy: latest:2\n")
    settings = load_settings(path, port=9100, host=None)
    assert settings.port == 9100
    assert settings.batching.max_batch_size == 8
    assert settings.policy.select([1, 2, 3]) == [2, 3]
    assert settings.loopback
    assert not settings.replace(host="0.0.0.0").loopback
    path.write_text("max_batch_sise: 8\n")
    with pytest.raises(ConfigError, match="did you mean 'max_batch_size'"):
        load_settings(path)
    with pytest.raises(ConfigError, match="tls_key"):
        load_settings(None, tls_cert="cert.pem")


# -- TFaaS rows ------------------------------------------------------------------


def test_parse_json_rows() -> None:
    one = parse_json(b'{"keys": ["a", "b"], "values": [1, 2.5], "model": "m:prod"}')
    assert one.values.shape == (1, 2)
    assert not one.batched
    assert (one.model, one.version) == ("m", "prod")
    many = parse_json(b'{"values": [[1, 2], [3, 4], [5, 6]], "name": "m"}')
    assert many.values.shape == (3, 2)
    assert many.batched
    assert many.model == "m"
    for body, message in [
        (b'{"values": ["1", 1]}', "numbers"),
        (b'{"values": [null]}', "numbers"),
        (b'{"values": "1,2"}', "values"),
        (b'{"values": [1], "keys": "a"}', "keys"),
        (b'{"values": [1], "model": 3}', "model"),
        (b'{"values": [[1], 2]}', "values"),
    ]:
        with pytest.raises(BadRequest, match=message):
            parse_json(body)
    assert split_model("m:3") == ("m", "3")
    assert split_model(None) == (None, None)


def test_parse_proto_rows() -> None:
    row = tfaas_proto.Row(key=["a"], value=[1.5], model="m").SerializeToString()
    parsed = parse_proto(row)
    assert parsed.values.tolist() == [[1.5]]
    assert parsed.keys == ["a"]
    with pytest.raises(BadRequest, match="no values"):
        parse_proto(tfaas_proto.Row(model="m").SerializeToString())


def test_the_shipped_proto_file_matches_the_messages() -> None:
    """Every field of proto/tfaas.proto (name, number, type) is in the runtime classes."""
    text = tfaas_proto.PROTO_FILE.read_text()
    assert "package tfaaspb;" in text
    messages = dict(re.findall(r"message (\w+) \{(.*?)\}", text, re.DOTALL))
    assert set(messages) == {"Row", "Class", "Predictions"}
    types = {"string": 9, "float": 2}
    for name, body in messages.items():
        descriptor = getattr(tfaas_proto, name).DESCRIPTOR
        declared = re.findall(r"(repeated )?(\w+) (\w+) = (\d+);", body)
        assert len(declared) == len(descriptor.fields)
        for repeated, kind, field, number in declared:
            actual = descriptor.fields_by_name[field]
            assert actual.number == int(number)
            assert actual.is_repeated == bool(repeated)
            if kind in types:
                assert actual.type == types[kind]
            else:
                assert actual.message_type.name == kind
