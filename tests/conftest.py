"""Shared fixtures: the real ROOT files in ../shared/data and a real XRootD server.

Tests that need the shared files skip when they are missing on a developer
machine, but fail under CI (``CI=true``), where they must be present.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Let the XRootD client give up on a dead server within seconds, not minutes,
# so the tests of servers going away stay short. Set before the client loads.
os.environ.setdefault("XRD_CONNECTIONWINDOW", "2")
os.environ.setdefault("XRD_CONNECTIONRETRY", "1")
os.environ.setdefault("XRD_STREAMERRORWINDOW", "0")

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class XRootDServer:
    """A running ``xrootd`` exporting ``root`` on 127.0.0.1:``port``."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, path: Path) -> str:
        """The ``root://`` URL of a file below the exported folder."""
        return f"root://127.0.0.1:{self.port}/{path.resolve()}"

    def publish(self, source: Path, name: str | None = None) -> str:
        """Copy ``source`` into the exported folder and return its URL."""
        target = self.root / (name or source.name)
        shutil.copyfile(source, target)
        target.chmod(0o644)
        return self.url(target)

    def stop(self) -> None:
        """Stop the server (used to test a server that goes away mid-read)."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_xrootd(root: Path) -> XRootDServer:
    """Start ``xrootd`` on a free loopback port, exporting ``root``."""
    binary = shutil.which("xrootd")
    _require(binary is not None, "the xrootd server binary is not installed (Debian xrootd-server)")
    assert binary is not None
    root.mkdir(parents=True, exist_ok=True)
    # xrootd refuses to run as root: it drops to "nobody", who must read the files.
    for folder in [root, *root.parents]:
        folder.chmod(folder.stat().st_mode | 0o005)
    port = _free_port()
    state = root.parent / f"xrootd-{port}"
    state.mkdir()
    state.chmod(0o777)  # the server, running as "nobody", writes its log and admin files here
    log = state / "xrootd.log"
    command = [binary, "-p", str(port), "-l", str(log), "-n", f"t{port}", str(root)]
    if os.geteuid() == 0:
        command[1:1] = ["-R", "nobody"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"xrootd exited at start; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return XRootDServer(root=root, port=port, process=process, log=log)
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"xrootd did not listen on port {port} within 20 s; see {log}")


@pytest.fixture(scope="session")
def xrootd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XRootDServer]:
    """A real XRootD server on 127.0.0.1 for the whole session."""
    server = start_xrootd(tmp_path_factory.mktemp("xrootd") / "export")
    yield server
    server.stop()
