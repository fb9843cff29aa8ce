"""The PyTorch loader: exactly-once epochs across workers and shards, tensors equal the transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import uproot
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
