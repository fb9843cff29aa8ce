"""A local XRootD server for tests and benchmarks.

Starts Debian's ``xrootd`` on a free 127.0.0.1 port exporting one folder, so
that ``root://`` reading can be exercised against a real server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> bool:
    """Wait until something listens on 127.0.0.1:``port`` (False on timeout or exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class XRootDServer:
    """A running ``xrootd`` exporting ``root`` on 127.0.0.1:``port``."""

    root: Path
    port: int
    command: list[str]
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
        """Stop the server (also used to test a server that goes away mid-read)."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start the server again on the same port and folder.

        While the server was down another socket may have taken its port for a
        moment (a client's retries can even connect a socket to itself on it),
        so a new server that exits at once is started again until 20 s passed.
        """
        self.stop()
        deadline = time.monotonic() + 20
        while True:
            self.process = _spawn(self.command)
            if wait_for_port(self.port, max(0.1, deadline - time.monotonic()), self.process):
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"xrootd did not come back on port {self.port}; see {self.log}")
            time.sleep(0.2)


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )


def start_xrootd(root: Path, *, port: int | None = None) -> XRootDServer:
    """Start ``xrootd`` on 127.0.0.1 exporting ``root`` (created if needed).

    Raises :class:`FileNotFoundError` when the binary is missing and
    :class:`RuntimeError` when the server does not come up.
    """
    binary = shutil.which("xrootd")
    if binary is None:
        raise FileNotFoundError("the xrootd server binary is not installed (Debian xrootd-server)")
    root.mkdir(parents=True, exist_ok=True)
    # xrootd refuses to run as root: it drops to "nobody", who must reach the files.
    for folder in [root, *root.parents]:
        folder.chmod(folder.stat().st_mode | 0o005)
    port = port or free_port()
    state = root.parent / f"xrootd-{port}"
    state.mkdir(exist_ok=True)
    state.chmod(0o777)  # the server writes its log and admin files here
    log = state / "xrootd.log"
    command = [binary, "-p", str(port), "-l", str(log), "-n", f"t{port}", str(root)]
    if os.geteuid() == 0:
        command[1:1] = ["-R", "nobody"]
    process = _spawn(command)
    if not wait_for_port(port, 20, process):
        process.kill()
        raise RuntimeError(f"xrootd did not start on port {port}; see {log}")
    return XRootDServer(root=root, port=port, command=command, process=process, log=log)
