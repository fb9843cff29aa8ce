"""Reading over https?:// from a real HTTP server on 127.0.0.1 with byte ranges."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import awkward as ak
import pytest
from conftest import shared_file

from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.rootfile import RetryPolicy
from mlaas4hep.data.sources import resolve_sources
from mlaas4hep.errors import DataError

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single byte-range support, as ROOT readers need."""

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        wanted = _RANGE.fullmatch(self.headers.get("Range", ""))
        if not path.is_file() or wanted is None:
            super().do_GET()
            return
        data = path.read_bytes()
        start = int(wanted[1])
        stop = min(len(data), int(wanted[2]) + 1 if wanted[2] else len(data))
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(data[start:stop])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("http")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "name",
    ["uproot-HZZ-zstd.root", "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root"],
)
def test_http_values_equal_local(http_root: tuple[Path, str], name: str) -> None:
    folder, base = http_root
    local = shared_file(name)
    (folder / name).write_bytes(local.read_bytes())

    def read(url: str) -> ak.Array:
        with EventStream(resolve_sources(url), step_size=500, shuffle=False) as stream:
            return ak.concatenate([c.arrays for c in stream.iter_epoch(0)])

    remote, here = read(f"{base}/{name}"), read(str(local))
    assert len(remote) == len(here) > 0
    assert ak.array_equal(remote, here, equal_nan=True)


def test_http_missing_file_is_a_clear_error(http_root: tuple[Path, str]) -> None:
    _, base = http_root
    with pytest.raises(DataError, match=r"cannot open http://127\.0\.0\.1:\d+/absent\.root"):
        EventStream(resolve_sources(f"{base}/absent.root"), retry=RetryPolicy(attempts=1))
