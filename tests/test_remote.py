"""Reading over root:// from a real XRootD server on 127.0.0.1 equals reading locally."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import XRootDServer, shared_file, start_xrootd
from helpers import check_consistent, write_indexed

from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.rootfile import RetryPolicy
from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.errors import DataError

pytestmark = pytest.mark.xrootd

SHARED = [
    "nanoAOD_2015_CMS_Open_Data_ttbar.root",
    "nano_dy.root",
    "uproot-HZZ.root",
    "uproot-HZZ-lz4.root",
    "uproot-HZZ-zstd.root",
    "uproot-HZZ-lzma.root",
    "uproot-HZZ-uncompressed.root",
    "uproot-Zmumu.root",
    "uproot-small-dy-withoffsets.root",
    "Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root",
    "cmsopendata2015_ttbar_19980_NANOAOD_RNTupleImporter_rntuple_v1-0-0-1.root",
]

FAST_RETRY = RetryPolicy(attempts=2, backoff=0.1, timeout=5)


def read_all(url: str, **options: object) -> ak.Array:
    stream = EventStream(
        resolve_sources(url),
        shuffle=False,
        interleave=False,
        step_size=400,
        **options,  # type: ignore[arg-type]
    )
    with stream:
        return ak.concatenate([c.arrays for c in stream.iter_epoch(0)])


@pytest.mark.parametrize("name", SHARED)
def test_remote_values_equal_local(xrootd_server: XRootDServer, name: str) -> None:
    local = shared_file(name)
    remote = read_all(xrootd_server.publish(local))
    here = read_all(str(local))
    assert len(remote) == len(here) > 0
    assert remote.fields == here.fields
    assert ak.array_equal(remote, here, equal_nan=True)
    # and both equal uproot's own reading of the local file
    tree = uproot.open(local)
    (tree_name,) = {k for k in tree.keys(cycle=False) if k in {"Events", "events", "tree"}}
    fields = here.fields[:50]
    direct = tree[tree_name].arrays(fields)[fields]
    assert ak.array_equal(here[fields], direct, equal_nan=True)


def test_generated_files_remote_mixed_equal_local(
    xrootd_server: XRootDServer, tmp_path: Path
) -> None:
    paths = [write_indexed(tmp_path / f"g{i}.root", 3000 + 500 * i, 10_000 * i) for i in range(3)]
    urls = [xrootd_server.publish(p) for p in paths]

    def epoch(inputs: list[str]) -> list[ak.Array]:
        with EventStream(resolve_sources(inputs, labels=[0, 1, 2]), step_size=700, seed=9) as s:
            return [c.arrays for c in s.iter_epoch(0)]

    remote, local = epoch(urls), epoch([str(p) for p in paths])
    assert len(remote) == len(local)
    for r, loc in zip(remote, local, strict=True):
        assert ak.array_equal(r, loc)
        check_consistent(r)


def test_remote_missing_file_and_tree(xrootd_server: XRootDServer) -> None:
    url = xrootd_server.url(xrootd_server.root / "absent.root")
    with pytest.raises(DataError, match=r"cannot open root://.*absent.root: .*no such file"):
        EventStream([Source(url)], retry=FAST_RETRY)
    present = xrootd_server.publish(shared_file("uproot-Zmumu.root"))
    with pytest.raises(DataError, match=r"tree 'Events' not found in root://.*Zmumu.root"):
        EventStream([Source(present)], tree="Events", retry=FAST_RETRY)


def test_unreachable_server_retries_then_fails() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"root://127.0.0.1:{port}//data/file.root"
    started = time.monotonic()
    with pytest.raises(DataError, match=r"cannot open root://127.0.0.1.*after 2 attempts"):
        EventStream([Source(url)], retry=RetryPolicy(attempts=2, backoff=0.2, timeout=2))
    assert time.monotonic() - started >= 0.2  # it waited for the backoff before retrying


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[XRootDServer]:
    server = start_xrootd(tmp_path / "export")
    yield server
    server.stop()


def _slow_stream(url: str, **options: object) -> EventStream:
    return EventStream(
        [Source(url)],
        step_size=200,
        shuffle=False,
        prefetch=0,
        threads=1,
        **options,  # type: ignore[arg-type]
    )


def test_server_stopped_mid_read_is_a_clear_error(own_server: XRootDServer, tmp_path: Path) -> None:
    url = own_server.publish(write_indexed(tmp_path / "big.root", 5000))
    stream = _slow_stream(url, retry=FAST_RETRY)
    chunks = stream.iter_epoch(0)
    check_consistent(next(chunks).arrays)  # entries 0-200, from the cluster 0-500
    own_server.stop()
    with pytest.raises(
        DataError, match=r"cannot read entries 500-1000 of root://.*big.root after 2"
    ):
        list(chunks)


def test_server_stopped_mid_read_is_skipped_when_asked(
    own_server: XRootDServer, tmp_path: Path
) -> None:
    url = own_server.publish(write_indexed(tmp_path / "big.root", 5000))
    stream = _slow_stream(url, retry=FAST_RETRY, skip_bad_files=True)
    chunks = stream.iter_epoch(0)
    next(chunks)
    own_server.stop()
    rest = list(chunks)  # what the first cluster still held, then nothing
    assert all((c.entry < 500).all() for c in rest)
    assert url in stream.skipped
    assert "cannot read entries" in stream.skipped[url]


def test_server_back_within_the_retries_completes_the_read(
    own_server: XRootDServer, tmp_path: Path
) -> None:
    url = own_server.publish(write_indexed(tmp_path / "big.root", 2000))
    stream = _slow_stream(url, retry=RetryPolicy(attempts=6, backoff=0.3, timeout=3))
    chunks = stream.iter_epoch(0)
    first = next(chunks)
    own_server.stop()

    def restart() -> None:
        time.sleep(0.5)
        own_server.restart()

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        rest = list(chunks)
    finally:
        thread.join()
    events = np.concatenate([np.asarray(c.arrays["event"]) for c in [first, *rest]])
    assert np.array_equal(events, np.arange(2000))


def test_restart_waits_out_a_port_taken_for_a_moment(
    own_server: XRootDServer, tmp_path: Path
) -> None:
    """A socket on the port while the server is down: the restart retries until it is free."""
    url = own_server.publish(write_indexed(tmp_path / "small.root", 100))
    own_server.stop()
    holder = socket.socket()  # bound, not listening: the new server cannot bind
    holder.bind(("127.0.0.1", own_server.port))
    releaser = threading.Timer(1.0, holder.close)
    releaser.start()
    try:
        own_server.restart()
    finally:
        releaser.join()
    with uproot.open(url) as file:
        assert np.array_equal(file["Events"]["event"].array(library="np"), np.arange(100))
