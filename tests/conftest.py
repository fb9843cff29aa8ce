"""Shared fixtures: the real ROOT files in ../shared/data and a real XRootD server.

Tests that need the shared files skip when they are missing on a developer
machine, but fail under CI (``CI=true``), where they must be present.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlaas4hep import testing
from mlaas4hep._native import load_xrootd_first
from mlaas4hep.testing import XRootDServer, free_port, wait_for_port

# Let the XRootD client give up on a dead server within seconds, not minutes,
# so the tests of servers going away stay short. Set before the client loads.
os.environ.setdefault("XRD_CONNECTIONWINDOW", "2")
os.environ.setdefault("XRD_CONNECTIONRETRY", "1")
os.environ.setdefault("XRD_STREAMERRORWINDOW", "0")
# Tests build TensorFlow models in this process; XRootD must be loaded first.
load_xrootd_first()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _require(condition: bool, reason: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real HEP ROOT files (``../shared/data``)."""
    _require(SHARED_DATA.is_dir(), f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def shared_file(name: str) -> Path:
    """One file of ``../shared/data``, skipping (or failing in CI) when absent."""
    path = SHARED_DATA / name
    _require(path.is_file(), f"shared test file not found: {path}")
    return path


def start_xrootd(root: Path) -> XRootDServer:
    """Start a real XRootD server, skipping (failing under CI) when it is not installed."""
    _require(shutil.which("xrootd") is not None, "xrootd is not installed (Debian xrootd-server)")
    try:
        return testing.start_xrootd(root)
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def xrootd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XRootDServer]:
    """A real XRootD server on 127.0.0.1 for the whole session."""
    server = start_xrootd(tmp_path_factory.mktemp("xrootd") / "export")
    yield server
    server.stop()


BUCKET = "hep-data"


@pytest.fixture(scope="session")
def dask_scheduler() -> Iterator[str]:
    """The address of a running dask scheduler with two worker processes."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


@pytest.fixture(scope="session")
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
