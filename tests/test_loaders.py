"""The PyTorch loader: exactly-once epochs across workers and shards, tensors equal the transform."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import uproot
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.sources import Source, resolve_sources
from mlaas4hep.datasets import generate_dataset
from mlaas4hep.errors import ConfigError
from mlaas4hep.train.loaders import EventBatches, TorchEvents, batches
from mlaas4hep.transform.scan import ScanOptions, scan
from mlaas4hep.transform.spec import FeatureSpec
from mlaas4hep.transform.vector import VectorTransform

BRANCHES = "Jet_pt,Jet_eta,Muon_pt,MET_pt,nJet"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Source], FeatureSpec]:
    folder = tmp_path_factory.mktemp("loaders")
    generate_dataset(folder, n_events=1200, n_files=2, seed=5)
    sources = resolve_sources(str(folder / "files.txt"), labels=str(folder / "labels.txt"))
    spec, _ = scan(sources, BranchSelection(include=BRANCHES), options=ScanOptions(length=6))
    return sources, spec


def keys_of(batch_list: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """(label, event) of every event delivered, as one integer per event."""
    label = torch.cat([b["label"] for b in batch_list]).numpy().astype(np.int64)
    event = torch.cat([b["event"] for b in batch_list]).numpy().astype(np.int64)
    return event * 2 + label


def test_batches_regroup_chunks() -> None:
    parts = [{"a": np.arange(s, s + n)} for s, n in [(0, 5), (5, 1), (6, 7)]]
    out = list(batches(iter(parts), 4))
    assert [len(b["a"]) for b in out] == [4, 4, 4, 1]
    assert np.array_equal(np.concatenate([b["a"] for b in out]), np.arange(13))


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=30), max_size=8),
    size=st.integers(min_value=1, max_value=12),
)
def test_batches_keep_order_and_size(sizes: list[int], size: int) -> None:
    edges = np.cumsum([0, *sizes])
    parts = [{"a": np.arange(a, b), "b": -np.arange(a, b)} for a, b in itertools.pairwise(edges)]
    out = list(batches(iter(parts), size))
    assert all(len(b["a"]) == size for b in out[:-1])
    assert np.array_equal(np.concatenate([b["a"] for b in out] or [[]]), np.arange(edges[-1]))
    assert all(np.array_equal(b["b"], -b["a"]) for b in out)


def test_batches_inside_a_part_are_views() -> None:
    part = {"a": np.arange(100)}
    first, second, *_ = batches(iter([part]), 10)
    assert np.shares_memory(first["a"], part["a"])
    assert np.shares_memory(second["a"], part["a"])


def test_batches_from_workers_arrive_as_the_same_tensors(
    data: tuple[list[Source], FeatureSpec],
) -> None:
    sources, spec = data
    dataset = TorchEvents(sources, spec, batch_size=100, seed=3, stream_options={"step_size": 300})
    here = list(DataLoader(dataset, batch_size=None, num_workers=0))
    sent = list(DataLoader(dataset, batch_size=None, num_workers=2))
    assert all(type(batch) is dict for batch in sent)
    for name, tensor in here[0].items():
        got = sent[0][name]
        assert isinstance(got, torch.Tensor), name
        assert (got.dtype, got.shape[1:]) == (tensor.dtype, tensor.shape[1:]), name
    # the same events and rows, in the order of their (label, event) keys
    rows = {name: torch.cat([b[name] for b in here]) for name in here[0]}
    rows_sent = {name: torch.cat([b[name] for b in sent]) for name in sent[0]}
    order, order_sent = np.argsort(keys_of(here)), np.argsort(keys_of(sent))
    for name in rows:
        assert torch.equal(rows[name][order].nan_to_num(), rows_sent[name][order_sent].nan_to_num())
    sent[0]["x"] += 1  # writable, as tensors made here are
    # a DataLoader that batches again (its default batch_size=1) stacks them, as in-process
    stacked = next(iter(DataLoader(dataset, num_workers=2)))
    assert stacked["x"].shape == (1, *here[0]["x"].shape)
    assert next(iter(DataLoader(dataset, num_workers=0)))["x"].shape == stacked["x"].shape


@pytest.mark.parametrize("workers", [0, 2])
def test_every_event_once_per_epoch_and_tensors_match(
    data: tuple[list[Source], FeatureSpec], workers: int
) -> None:
    sources, spec = data
    dataset = TorchEvents(sources, spec, batch_size=100, seed=3, stream_options={"step_size": 300})
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    epochs = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        delivered = list(loader)
        keys = keys_of(delivered)
        assert len(keys) == len(np.unique(keys)) == 2 * 1200  # signal + background
        epochs.append(keys)
        first = delivered[0]
        assert first["x"].dtype == torch.float32
        assert first["x"].shape[1] == len(spec.columns())
        assert first["mask"].shape == first["x"].shape
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled per epoch

    # every row equals the spec's transform of that event, read independently
    x = torch.cat([b["x"] for b in delivered]).numpy()
    by_key = dict(zip(keys_of(delivered).tolist(), range(len(x)), strict=True))
    transform = VectorTransform(spec)
    for source in sources:
        arrays = uproot.open(source.url)["Events"].arrays([*spec.source_branches, "event"])
        expected = transform.flat(arrays[spec.source_branches]).x
        rows = [by_key[int(e) * 2 + int(source.label or 0)] for e in arrays["event"]]
        np.testing.assert_allclose(x[rows], expected, rtol=1e-6, equal_nan=True)


def test_shards_split_an_epoch_without_overlap(data: tuple[list[Source], FeatureSpec]) -> None:
    sources, spec = data
    selection = BranchSelection(include=spec.source_branches)
    stream = EventStream(sources, selection, step_size=250, seed=1)
    whole = np.sort(np.concatenate([c.entry * 10 + c.source for c in stream.iter_epoch(0)]))
    parts = [
        np.concatenate([c.entry * 10 + c.source for c in stream.iter_epoch(0, shard=(i, 4))])
        for i in range(4)
    ]
    assert sum(len(p) for p in parts) == len(whole)
    assert np.array_equal(np.sort(np.concatenate(parts)), whole)
    assert all(len(p) for p in parts)
    with pytest.raises(ConfigError, match="shard index"):
        stream.plan(0, shard=(4, 4))


def test_bad_batch_size(data: tuple[list[Source], FeatureSpec]) -> None:
    sources, spec = data
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        TorchEvents(sources, spec, batch_size=0)


def test_numpy_batches_are_the_torch_batches(data: tuple[list[Source], FeatureSpec]) -> None:
    sources, spec = data
    options = {"step_size": 300}
    numpy_batches = list(
        EventBatches(sources, spec, batch_size=100, seed=3, stream_options=options)
    )
    torch_batches = list(TorchEvents(sources, spec, batch_size=100, seed=3, stream_options=options))
    assert len(numpy_batches) == len(torch_batches) == 24
    for a, b in zip(numpy_batches, torch_batches, strict=True):
        assert isinstance(a["x"], np.ndarray)
        np.testing.assert_array_equal(a["x"], b["x"].numpy())


def test_padding_value_fills_only_padded_entries(data: tuple[list[Source], FeatureSpec]) -> None:
    sources, spec = data
    raw = next(iter(EventBatches(sources, spec, batch_size=200)))
    filled = next(iter(EventBatches(sources, spec, batch_size=200, padding_value=-5.0)))
    real = raw["mask"] > 0
    assert (~real).any()
    np.testing.assert_array_equal(filled["x"][real], raw["x"][real])
    assert (filled["x"][~real] == -5.0).all()


def test_keras_dataset_serves_epochs_in_order(data: tuple[list[Source], FeatureSpec]) -> None:
    from mlaas4hep.train.loaders import KerasEvents

    sources, spec = data
    events = EventBatches(sources, spec, batch_size=500, seed=3, stream_options={"step_size": 300})
    dataset = KerasEvents(events, classes=2)
    assert dataset.num_batches == len(dataset) == 5  # 2400 events
    first_epoch = [dataset[i] for i in range(len(dataset))]
    x, y, weight = first_epoch[0]
    assert x.shape == (500, len(spec.columns()))
    assert weight.shape == (500,)
    assert y.shape == (500, 2)
    assert np.array_equal(y.sum(axis=1), np.ones(500))
    expected = list(
        EventBatches(sources, spec, batch_size=500, seed=3, stream_options={"step_size": 300})
    )
    for (x, y, _), batch in zip(first_epoch, expected, strict=True):
        np.testing.assert_array_equal(x, batch["x"])
        np.testing.assert_array_equal(y.argmax(axis=1), batch["label"])
    dataset.on_epoch_end()
    assert events.epoch == 1
    second = dataset[0][0]
    assert not np.array_equal(second, first_epoch[0][0])  # reshuffled
    with pytest.raises(ConfigError, match="read in order"):
        dataset[3]


def test_files_stay_open_across_epochs_and_nested_reads_work(
    data: tuple[list[Source], FeatureSpec],
) -> None:
    sources, spec = data
    with EventBatches(sources, spec, batch_size=400, stream_options={"step_size": 300}) as events:
        first = [b["event"] for b in events]
        kept = events._kept
        events.set_epoch(1)
        outer = iter(events)
        head = next(outer)
        inner = [b["event"] for b in events]  # a read inside a read gets its own stream
        rest = [head["event"], *(b["event"] for b in outer)]
        assert events._kept is kept  # the same open files for every epoch
        assert sorted(np.concatenate(first)) == sorted(np.concatenate(rest))
        assert np.array_equal(np.concatenate(inner), np.concatenate(rest))
    assert events._kept is None


def test_persistent_workers_read_each_epoch_once(data: tuple[list[Source], FeatureSpec]) -> None:
    sources, spec = data
    dataset = TorchEvents(sources, spec, batch_size=100, seed=3, stream_options={"step_size": 300})
    dataset.set_epoch(4)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True)
    passes = [keys_of(list(loader)) for _ in range(2)]
    for keys in passes:
        assert len(keys) == len(np.unique(keys)) == 2 * 1200
    # the workers' passes are epochs 4 and 5, the same as without persistent workers
    for epoch, keys in zip([4, 5], passes, strict=True):
        dataset.set_epoch(epoch)
        fresh = keys_of(list(DataLoader(dataset, batch_size=None, num_workers=2)))
        assert set(fresh[:100]) == set(keys[:100])  # the same first batch: the same epoch
    assert not np.array_equal(passes[0], passes[1])


def test_cache_serves_later_epochs_from_memory(
    data: tuple[list[Source], FeatureSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    sources, spec = data
    options = {"step_size": 300}
    reads = []
    original = EventStream.iter_epoch

    def counted(self: EventStream, epoch: int, *args: object, **kwargs: object) -> object:
        reads.append(epoch)
        return original(self, epoch, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(EventStream, "iter_epoch", counted)
    cached = EventBatches(sources, spec, batch_size=100, seed=3, stream_options=options, cache=True)
    epochs = []
    for epoch in range(3):
        cached.set_epoch(epoch)
        epochs.append(list(cached))
    assert reads == [0]  # read once, then served from memory

    def rows_by_key(batch_list: list[dict[str, np.ndarray]]) -> dict[int, np.ndarray]:
        keys = np.concatenate([b["event"] * 2 + b["label"] for b in batch_list]).astype(np.int64)
        x = np.concatenate([b["x"] for b in batch_list])
        assert len(keys) == len(np.unique(keys)) == 2400
        return dict(zip(keys.tolist(), x, strict=True))

    reference = rows_by_key(epochs[0])
    for later in epochs[1:]:  # the same events, each row whole with its identifiers
        rows = rows_by_key(later)
        assert rows.keys() == reference.keys()
        for key, row in rows.items():
            np.testing.assert_array_equal(row, reference[key])
    assert not np.array_equal(epochs[1][0]["event"], epochs[2][0]["event"])  # reshuffled
    balanced = EventBatches(
        sources, spec, stream_options={**options, "balance": "undersample"}, cache=True
    )
    reads.clear()
    for epoch in range(2):
        balanced.set_epoch(epoch)
        list(balanced)
    assert reads == [0, 1]  # balancing draws anew each epoch: nothing is cached


def test_batches_with_an_rng_visit_each_part_in_a_random_order() -> None:
    parts = [
        {"a": np.arange(0, 7), "b": -np.arange(0, 7)},
        {"a": np.arange(7, 20), "b": -np.arange(7, 20)},
    ]
    out = list(batches(iter(parts), 4, np.random.default_rng(1)))
    assert [len(b["a"]) for b in out] == [4, 4, 4, 4, 4]
    a = np.concatenate([b["a"] for b in out])
    assert sorted(a.tolist()) == list(range(20))  # every row once
    assert all(np.array_equal(b["b"], -b["a"]) for b in out)  # rows stay whole
    # one permutation per part, in part order: the same as permuting each part first
    rng = np.random.default_rng(1)
    expected = np.concatenate([p["a"][rng.permutation(len(p["a"]))] for p in parts])
    assert np.array_equal(a, expected)
