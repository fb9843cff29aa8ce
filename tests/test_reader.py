"""The EventStream: exactly-once epochs, mixing, determinism, limits, prefetch, errors."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import shared_file
from helpers import check_consistent, write_indexed

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.chunk import Chunk
from mlaas4hep.data.reader import EventStream, parse_step
from mlaas4hep.data.rootfile import collector_paused, get_tree, open_root
from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.errors import ConfigError, DataError

SIZES = (1000, 3000, 6000)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> list[Source]:
    """Three sources of different sizes with disjoint event numbers and labels 0, 1, 2."""
    folder = tmp_path_factory.mktemp("indexed")
    first = np.cumsum([0, *SIZES])
    return [
        Source(str(write_indexed(folder / f"s{i}.root", n, int(first[i]))), label=float(i))
        for i, n in enumerate(SIZES)
    ]


def events_of(chunks: list[Chunk]) -> np.ndarray:
    return np.concatenate([np.asarray(c.arrays["event"]) for c in chunks]).astype(np.int64)


def test_every_event_once_per_epoch_with_consistent_values(dataset: list[Source]) -> None:
    stream = EventStream(dataset, step_size=700, seed=3)
    assert stream.total_events == sum(SIZES)
    for epoch in range(2):
        chunks = list(stream.iter_epoch(epoch))
        events = events_of(chunks)
        assert np.array_equal(np.sort(events), np.arange(sum(SIZES)))
        for chunk in chunks:
            check_consistent(chunk.arrays)
            # label, source and entry travel with each event
            source_first = np.array([0, SIZES[0], SIZES[0] + SIZES[1]])[chunk.source]
            assert np.array_equal(chunk.entry, np.asarray(chunk.arrays["event"]) - source_first)
            assert np.array_equal(chunk.label, chunk.source.astype(float))


def test_chunks_mix_sources_in_proportion(dataset: list[Source]) -> None:
    stream = EventStream(dataset, step_size=500, seed=1)
    for chunk in stream.iter_epoch(0):
        fractions = np.bincount(chunk.source, minlength=3) / len(chunk)
        assert np.allclose(fractions, np.array(SIZES) / sum(SIZES), atol=0.01)


def test_label_shares_set_the_mixture(dataset: list[Source]) -> None:
    stream = EventStream(dataset, step_size=600, shares={0: 1, 1: 1, 2: 1})
    chunks = list(stream.iter_epoch(0))
    for chunk in chunks:
        assert np.allclose(np.bincount(chunk.source, minlength=3) / len(chunk), 1 / 3, atol=0.01)
    events = events_of(chunks)
    assert len(np.unique(events)) == len(events)
    assert np.isin(np.arange(SIZES[0]), events).all()  # the smallest source is read whole


def test_order_is_deterministic_per_seed_and_changes_per_epoch(dataset: list[Source]) -> None:
    def order(seed: int, epoch: int) -> np.ndarray:
        return events_of(list(EventStream(dataset, step_size=800, seed=seed).iter_epoch(epoch)))

    assert np.array_equal(order(5, 0), order(5, 0))
    assert not np.array_equal(order(5, 0), order(5, 1))
    assert not np.array_equal(order(5, 0), order(6, 0))
    stream = EventStream(dataset, step_size=800, seed=5)
    assert np.array_equal(events_of(list(stream)), order(5, 0))  # iter() runs epoch 0, 1, ...
    assert np.array_equal(events_of(list(stream)), order(5, 1))


def test_unshuffled_sequential_stream_equals_uproot_iterate(dataset: list[Source]) -> None:
    stream = EventStream(dataset, step_size=700, shuffle=False, interleave=False)
    ours = ak.concatenate([c.arrays for c in stream.iter_epoch(0)])
    urls = [f"{s.url}:Events" for s in dataset]
    plain = ak.concatenate(list(uproot.iterate(urls, step_size=700)))
    assert ak.array_equal(ours[plain.fields], plain)


def test_shuffle_buffer_and_prefetch_keep_exactly_once(dataset: list[Source]) -> None:
    buffered = EventStream(dataset, step_size=300, shuffle_buffer=2000, prefetch=1, seed=2)
    chunks = list(buffered.iter_epoch(0))
    assert {len(c) for c in chunks[:-1]} == {300}
    assert np.array_equal(np.sort(events_of(chunks)), np.arange(sum(SIZES)))
    same = EventStream(dataset, step_size=300, shuffle_buffer=2000, prefetch=0, seed=2)
    assert np.array_equal(events_of(list(same.iter_epoch(0))), events_of(chunks))


def test_nevts_is_a_total_shared_in_proportion(dataset: list[Source]) -> None:
    stream = EventStream(dataset, step_size=250, nevts=1000)
    chunks = list(stream.iter_epoch(0))
    assert sum(len(c) for c in chunks) == 1000
    counts = np.bincount(np.concatenate([c.source for c in chunks]), minlength=3)
    assert counts.tolist() == [100, 300, 600]
    with pytest.raises(ConfigError, match="nevts must be"):
        EventStream(dataset, nevts=0)


def test_balance_undersample_per_chunk(dataset: list[Source]) -> None:
    stream = EventStream(dataset, step_size=1000, balance="undersample")
    for chunk in stream.iter_epoch(0):
        counts = np.bincount(chunk.label.astype(int), minlength=3)
        assert counts[0] == counts[1] == counts[2] > 0


def test_step_size_in_bytes_bounds_chunk_memory(dataset: list[Source]) -> None:
    assert parse_step("100 MB") == (None, 100_000_000)
    assert parse_step("2 KiB") == (None, 2048)
    assert parse_step("500") == (500, None)
    with pytest.raises(ConfigError, match="neither an entry count nor a size"):
        parse_step("ten")
    stream = EventStream(dataset, step_size="50 kB", shuffle=False)
    sizes = [c.nbytes for c in stream.iter_epoch(0)][:-1]
    assert 100 < stream.chunk_events < 5000
    assert all(40_000 <= n <= 55_000 for n in sizes), sizes


def test_memory_is_bounded_by_prefetch(dataset: list[Source]) -> None:
    reads = []

    class Counting(EventStream):
        def _read_chunk(self, segments, pool):  # type: ignore[no-untyped-def]
            reads.append(len(segments))
            return super()._read_chunk(segments, pool)

    stream = Counting(dataset, step_size=100, prefetch=2)
    epoch = stream.iter_epoch(0)
    next(epoch)
    time.sleep(0.5)  # a slow consumer: the reader must wait, not read the whole dataset
    assert len(reads) <= 1 + 2 + 1
    epoch.close()  # stopping early ends the background reader
    assert not any(t.name == "mlaas4hep-prefetch" for t in threading.enumerate())


def test_rntuple_source_matches_uproot() -> None:
    path = shared_file("Run2012BC_DoubleMuParked_Muons_1000evts_rntuple_v1-0-0-0.root")
    stream = EventStream(resolve_sources(str(path)), step_size=300, shuffle=False)
    assert stream.features == [
        "Muon_pt",
        "Muon_eta",
        "Muon_phi",
        "Muon_mass",
        "Muon_charge",
        "nMuon",
    ]
    ours = ak.concatenate([c.arrays for c in stream.iter_epoch(0)])
    plain = uproot.open(path)["Events"].arrays()
    for name in stream.features:
        assert ak.array_equal(ours[name], plain[name])


def test_nanoaod_branch_selection_and_identifiers() -> None:
    path = shared_file("nanoAOD_2015_CMS_Open_Data_ttbar.root")
    selection = BranchSelection(include="Jet_pt,Jet_eta,MET_*", exclude="MET_cov*")
    stream = EventStream(resolve_sources(str(path)), selection, step_size=64, shuffle=False)
    assert stream.identifiers == ["run", "event", "luminosityBlock"]
    assert "MET_covXX" not in stream.features
    assert stream.features[:2] == ["Jet_pt", "Jet_eta"]
    chunks = list(stream.iter_epoch(0))
    ours = ak.concatenate([c.arrays for c in chunks])
    plain = uproot.open(path)["Events"].arrays([*stream.features, *stream.identifiers])
    assert ak.array_equal(ours, plain[ours.fields], equal_nan=True)
    assert chunks[0].data.fields == stream.features
    assert chunks[0].ids is not None
    assert chunks[0].ids.fields == stream.identifiers


def test_bad_inputs_give_clear_errors(tmp_path: Path, dataset: list[Source]) -> None:
    with pytest.raises(DataError, match=r"tree 'Evts' not found in .*s0.root \(trees: Events\)"):
        EventStream(dataset, tree="Evts")
    with pytest.raises(DataError, match=r"unknown branch 'X_vall' .*close matches: X_val"):
        EventStream(dataset, BranchSelection(include="X_vall"))
    other = write_indexed(tmp_path / "other.root", 10, tree="Other")
    with pytest.raises(DataError, match=r"other\.root"):
        EventStream([*dataset, Source(str(other))], tree="Events")
    missing = Source(str(tmp_path / "gone.root"))
    with pytest.raises(DataError, match=r"file not found: .*gone\.root"):
        EventStream([*dataset, missing])


def _damaged(tmp_path: Path, source: Source, how: str) -> Source:
    data = bytearray(Path(source.url).read_bytes())
    target = tmp_path / f"{how}.root"
    if how == "truncated":
        target.write_bytes(bytes(data[: len(data) // 2]))
    else:
        # overwrite the middle of the file, where the compressed baskets are
        middle = len(data) // 3
        data[middle : middle + 4000] = bytes(4000)
        target.write_bytes(bytes(data))
    return Source(str(target))


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_damaged_file_is_an_error_naming_it(
    tmp_path: Path, dataset: list[Source], how: str
) -> None:
    bad = _damaged(tmp_path, dataset[2], how)

    def read_all() -> None:
        list(EventStream([dataset[0], bad], step_size=500).iter_epoch(0))

    with pytest.raises(DataError, match=f"{how}.root"):
        read_all()


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_skip_bad_files_reports_and_goes_on(
    tmp_path: Path, dataset: list[Source], how: str
) -> None:
    bad = _damaged(tmp_path, dataset[2], how)
    stream = EventStream([dataset[0], bad], step_size=500, skip_bad_files=True)
    chunks = list(stream.iter_epoch(0))
    assert list(stream.skipped) == [bad.url]
    assert how in stream.skipped[bad.url] or "cannot" in stream.skipped[bad.url]
    events = events_of(chunks)
    assert np.isin(np.arange(SIZES[0]), events).all()  # the good file is read whole


def test_tree_metadata_is_read_with_the_collector_paused(
    dataset: list[Source], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    original = uproot.ReadOnlyDirectory.__getitem__

    def getitem(self: uproot.ReadOnlyDirectory, where: str) -> object:
        seen.append(gc.isenabled())
        return original(self, where)

    monkeypatch.setattr(uproot.ReadOnlyDirectory, "__getitem__", getitem)
    assert gc.isenabled()
    with open_root(dataset[0].url) as directory:
        tree = get_tree(directory, None, path=dataset[0].url)
        assert tree.num_entries == SIZES[0]
    assert seen == [False]  # the tree was read with the collector off
    assert gc.isenabled()  # and it is back on


def test_collector_pauses_overlap_across_threads_and_keep_a_disabled_collector() -> None:
    inside = threading.Barrier(2)
    leave_second = threading.Event()
    states: dict[str, bool] = {}

    def second() -> None:
        with collector_paused():
            inside.wait()
            leave_second.wait()
        states["after second"] = gc.isenabled()

    thread = threading.Thread(target=second)
    with collector_paused():
        thread.start()
        inside.wait()  # both blocks are running now
    states["after first"] = gc.isenabled()  # the second is still inside
    leave_second.set()
    thread.join()
    assert states == {"after first": False, "after second": True}
    assert gc.isenabled()

    gc.disable()  # a program that turned it off keeps it off
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
