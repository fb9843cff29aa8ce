"""Reading s3:// URLs from a real S3 API server (moto's) on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import awkward as ak
import pytest
from conftest import shared_file

from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.rootfile import RetryPolicy
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.errors import DataError
from mlaas4hep.testing import free_port, wait_for_port

BUCKET = "hep-data"


@pytest.fixture(scope="module")
def s3_bucket() -> Iterator[object]:
    """An S3 endpoint with one bucket; clients find it through AWS_ENDPOINT_URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_port(port, 30, server):
            pytest.fail("the S3 server (moto) did not start")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
            env.setenv("AWS_ACCESS_KEY_ID", "test")
            env.setenv("AWS_SECRET_ACCESS_KEY", "test")
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            import boto3

            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            yield client
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize(
    "name", ["uproot-HZZ-lz4.root", "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root"]
)
def test_s3_values_equal_local(s3_bucket: object, name: str) -> None:
    local = shared_file(name)
    s3_bucket.upload_file(str(local), BUCKET, name)  # type: ignore[attr-defined]

    def read(url: str) -> ak.Array:
        with EventStream(resolve_sources(url), step_size=700, shuffle=False) as stream:
            return ak.concatenate([c.arrays for c in stream.iter_epoch(0)])

    remote, here = read(f"s3://{BUCKET}/{name}"), read(str(local))
    assert len(remote) == len(here) > 0
    assert ak.array_equal(remote, here, equal_nan=True)


def test_s3_missing_object_is_a_clear_error(s3_bucket: object) -> None:
    assert s3_bucket is not None
    with pytest.raises(DataError, match=rf"cannot open s3://{BUCKET}/absent\.root"):
        EventStream(resolve_sources(f"s3://{BUCKET}/absent.root"), retry=RetryPolicy(attempts=1))
