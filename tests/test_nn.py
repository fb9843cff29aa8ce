"""Masked layers for padded inputs: JaggedArrayLinear, MaskedDeepSets, DeepSetsClassifier.

Every result is compared with an independent computation on the real entries
only, and the ONNX exports are checked with onnxruntime on another batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.export import Dim

from mlaas4hep.errors import ConfigError
from mlaas4hep.nn import DeepSetsClassifier, JaggedArrayLinear, MaskedDeepSets, Pooling

POOLINGS: list[Pooling] = ["sum", "mean", "max"]

# torch.export's run_decompositions deep-copies its pytree specs, which trips a
# FutureWarning inside torch itself (LeafSpec); nothing the caller can change.
TORCH_LEAFSPEC_WARNING = r"ignore:.*isinstance\(treespec, LeafSpec\).*:FutureWarning"


# ----------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run torch on one thread: these tensors are tiny, and on a busy machine
    the thread pool's overhead makes training an order of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flat_inputs(seed: int, events: int = 8, features: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with garbage in the padded entries and a 1/0 ``mask``, both ``[B, F]``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(events, features, generator=gen)
    mask = (torch.rand(events, features, generator=gen) > 0.4).float()
    return torch.where(mask == 1, x, torch.full_like(x, 1e3)), mask


def linear_reference(layer: torch.nn.Linear, x: np.ndarray, padded: np.ndarray) -> np.ndarray:
    """The linear map in numpy with the ``padded`` entries of ``x`` set to zero."""
    values = np.where(padded, 0.0, x.astype(np.float64))
    weight = layer.weight.detach().numpy().astype(np.float64)
    bias = layer.bias.detach().numpy().astype(np.float64)
    return values @ weight.T + bias


def collection(
    counts: list[int], channels: int, length: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[B, C, L]`` (NaN and huge garbage in the padding) and ``mask`` ``[B, 1, L]``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(counts), channels, length, generator=gen)
    mask = (torch.arange(length)[None, :] < torch.tensor(counts)[:, None]).float()[:, None, :]
    garbage = torch.full_like(x, 1e6)
    garbage[:, 0, :] = float("nan")
    return torch.where(mask == 1, x, garbage), mask


def deep_sets_reference(block: MaskedDeepSets, x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Pool ``phi`` of each event's real elements only, one event at a time, in numpy."""
    rows = []
    with torch.no_grad():
        for values, real in zip(x, mask[:, 0, :] == 1, strict=True):
            if not real.any():
                rows.append(np.zeros(block.out_features))
                continue
            h = block.phi(values[:, real][None]).numpy()[0].astype(np.float64)  # [H, n]
            if block.pooling == "sum":
                rows.append(h.sum(axis=1))
            elif block.pooling == "mean":
                rows.append(h.mean(axis=1))
            else:
                rows.append(h.max(axis=1))
    return np.stack(rows)


# ----------------------------------------------------------------- JaggedArrayLinear


def read_only(array: np.ndarray) -> np.ndarray:
    """A read-only copy, like the arrays of a memory-mapped file."""
    frozen = array.copy()
    frozen.flags.writeable = False
    return frozen


FORMS: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] = {
    "tuple": lambda x, m: (x, m),
    "list": lambda x, m: [x, m],
    "stacked": lambda x, m: torch.stack([x, m]),
    "numpy-stacked": lambda x, m: torch.stack([x, m]).numpy().astype(np.float64),
    "numpy-tuple": lambda x, m: (x.numpy(), m.numpy()),
    "numpy-read-only": lambda x, m: (read_only(x.numpy()), read_only(m.numpy())),
    "nan-mask": lambda x, m: torch.stack([x, torch.where(m == 1, m, torch.nan)]),
    "nan-values": lambda x, m: (torch.where(m == 1, x, torch.nan), m),
    "bool-mask": lambda x, m: (x, m.bool()),
}


@pytest.mark.parametrize("form", FORMS)
def test_jagged_linear_equals_linear_on_zeroed_padding(form: str) -> None:
    torch.manual_seed(1)
    layer = JaggedArrayLinear(6, 4)
    x, mask = flat_inputs(seed=2)
    data = FORMS[form](x, mask)
    before = [np.array(part, copy=True) for part in data]
    out = layer(data)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (8, 4)
    assert out.dtype == torch.float32
    expected = linear_reference(layer, x.numpy(), mask.numpy() == 0)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    for old, new in zip(before, data, strict=True):  # the caller's input is untouched
        np.testing.assert_array_equal(np.asarray(new), old)


def test_jagged_linear_without_bias_and_batched_leading_dims() -> None:
    torch.manual_seed(3)
    layer = JaggedArrayLinear(6, 2, bias=False)
    x, mask = flat_inputs(seed=4, events=12)
    out = layer((x.reshape(3, 4, 6), mask.reshape(3, 4, 6)))
    assert out.shape == (3, 4, 2)
    expected = np.where(mask.numpy() == 0, 0.0, x.numpy()) @ layer.weight.detach().numpy().T
    np.testing.assert_allclose(out.detach().numpy().reshape(12, 2), expected, atol=1e-5)


def test_jagged_linear_gradients_skip_padding() -> None:
    torch.manual_seed(5)
    layer = JaggedArrayLinear(6, 3)
    x, mask = flat_inputs(seed=6)
    x = torch.where(mask == 1, x, torch.nan).requires_grad_()
    layer((x, mask)).square().sum().backward()
    assert x.grad is not None
    assert layer.weight.grad is not None
    assert torch.isfinite(layer.weight.grad).all()
    assert layer.weight.grad.abs().sum() > 0
    assert (x.grad[mask == 0] == 0).all()
    assert (x.grad[mask == 1] != 0).all()


def test_user_model_file_with_stacked_input() -> None:
    def model(idim: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            JaggedArrayLinear(idim, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1)
        )

    torch.manual_seed(7)
    net = model(6)
    x, mask = flat_inputs(seed=8)
    out = net(torch.stack([x, mask]))
    assert out.shape == (8, 1)
    hidden = np.maximum(linear_reference(net[0], x.numpy(), mask.numpy() == 0), 0)
    expected = linear_reference(net[2], hidden, np.zeros_like(hidden, dtype=bool))
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-5)

    traced = torch.jit.trace(net, (torch.stack([x, mask]),))
    x2, mask2 = flat_inputs(seed=9, events=13)
    torch.testing.assert_close(traced(torch.stack([x2, mask2])), net(torch.stack([x2, mask2])))


@pytest.mark.parametrize(
    "data",
    [(torch.zeros(2, 6),) * 3, torch.zeros(3, 8, 6), torch.zeros(6)],
    ids=["three-items", "leading-dim-3", "one-dim"],
)
def test_jagged_linear_rejects_malformed_input(data: Any) -> None:
    with pytest.raises(ConfigError, match="JaggedArrayLinear expects"):
        JaggedArrayLinear(6, 2)(data)


def test_jagged_linear_verbose_logs_shapes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mlaas4hep.nn")
    x, mask = flat_inputs(seed=10)
    JaggedArrayLinear(6, 2, verbose=1)((x, mask))
    assert "values (8, 6), mask (8, 6)" in caplog.text


# ----------------------------------------------------------------- MaskedDeepSets

COUNTS = [3, 0, 7, 1, 5, 0, 2]


@pytest.mark.parametrize("pooling", POOLINGS)
def test_deep_sets_matches_pooling_of_real_elements(pooling: Pooling) -> None:
    torch.manual_seed(11)
    block = MaskedDeepSets(4, hidden=(16, 8), pooling=pooling)
    x, mask = collection(COUNTS, channels=4, length=7, seed=12)
    out = block(x, mask)
    assert out.shape == (len(COUNTS), 8)
    assert torch.isfinite(out).all()
    expected = deep_sets_reference(block, x, mask)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    empty = [i for i, n in enumerate(COUNTS) if n == 0]
    assert (out[empty] == 0).all()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_deep_sets_permutation_invariant(pooling: Pooling) -> None:
    torch.manual_seed(13)
    block = MaskedDeepSets(4, hidden=(16, 8), pooling=pooling)
    x, mask = collection(COUNTS, channels=4, length=7, seed=14)
    gen = torch.Generator().manual_seed(15)
    order = torch.stack([torch.randperm(7, generator=gen) for _ in COUNTS])  # per event
    shuffled_x = torch.gather(x, 2, order[:, None, :].expand_as(x))
    shuffled_mask = torch.gather(mask, 2, order[:, None, :])
    assert not torch.equal(shuffled_mask, mask)  # real elements moved among the slots
    torch.testing.assert_close(
        block(shuffled_x, shuffled_mask), block(x, mask), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("pooling", POOLINGS)
def test_deep_sets_padding_invariant(pooling: Pooling) -> None:
    torch.manual_seed(16)
    block = MaskedDeepSets(4, hidden=(16, 8), pooling=pooling)
    x, mask = collection(COUNTS, channels=4, length=7, seed=17)
    garbage = torch.randn(len(COUNTS), 4, 5) * 1e4
    longer_x = torch.cat([x, garbage], dim=2)
    longer_mask = torch.cat([mask, torch.zeros(len(COUNTS), 1, 5)], dim=2)
    torch.testing.assert_close(block(longer_x, longer_mask), block(x, mask))


@pytest.mark.parametrize("pooling", POOLINGS)
def test_deep_sets_empty_events_finite_with_finite_gradients(pooling: Pooling) -> None:
    torch.manual_seed(18)
    block = MaskedDeepSets(3, hidden=(8,), pooling=pooling)
    x, mask = collection([0, 0, 4], channels=3, length=5, seed=19)
    out = block(x, mask)
    assert torch.isfinite(out).all()
    assert (out[:2] == 0).all()
    out.sum().backward()
    for parameter in block.parameters():
        assert parameter.grad is not None
        assert torch.isfinite(parameter.grad).all()


def test_deep_sets_rejects_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="unknown pooling 'median'"):
        MaskedDeepSets(3, pooling="median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least one hidden layer"):
        MaskedDeepSets(3, hidden=())


# ----------------------------------------------------------------- DeepSetsClassifier


def test_classifier_shapes_and_configuration_errors() -> None:
    torch.manual_seed(20)
    net = DeepSetsClassifier(
        {"event": (2,), "jet": (3, 6), "muon": (2, 4)}, n_outputs=3, hidden=(8, 4), head=()
    )
    jets, jet_mask = collection([6, 0, 2], channels=3, length=6, seed=21)
    muons, muon_mask = collection([0, 4, 1], channels=2, length=4, seed=22)
    out = net(
        {"event": torch.randn(3, 2), "jet": jets, "muon": muons},
        {"jet": jet_mask, "muon": muon_mask},
    )
    assert out.shape == (3, 3)
    assert torch.isfinite(out).all()
    assert DeepSetsClassifier({"jet": (3, 6)})(  # no event-level features
        {"jet": jets}, {"jet": jet_mask}
    ).shape == (3, 1)

    with pytest.raises(ConfigError, match=r"event features must have shape \(F,\)"):
        DeepSetsClassifier({"event": (2, 3)})
    with pytest.raises(ConfigError, match=r"collection 'jet' must have shape \(C, L\)"):
        DeepSetsClassifier({"jet": (3,)})
    with pytest.raises(ConfigError, match="at least one collection or event feature"):
        DeepSetsClassifier({})


def synthetic_events(
    events: int, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Label: is the sum of channel 0 over the real jets positive? Event features are noise."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 9, (events,), generator=gen).tolist()
    jets, mask = collection(counts, channels=3, length=8, seed=seed + 1)
    label = (torch.where(mask[:, 0] == 1, jets[:, 0], 0.0).sum(dim=1) > 0).float()
    features = {"event": torch.randn(events, 2, generator=gen), "jet": jets}
    return features, {"jet": mask}, label[:, None]


def test_classifier_learns_masked_sum() -> None:
    torch.manual_seed(23)
    net = DeepSetsClassifier({"event": (2,), "jet": (3, 8)}, hidden=(16, 16), head=(16,))
    features, mask, label = synthetic_events(512, seed=24)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(300):
        optimizer.zero_grad()
        loss = loss_fn(net(features, mask), label)
        loss.backward()
        optimizer.step()
    test_features, test_mask, test_label = synthetic_events(1024, seed=25)
    with torch.no_grad():
        predicted = (net(test_features, test_mask) > 0).float()
    accuracy = (predicted == test_label).float().mean().item()
    assert accuracy > 0.9, accuracy


# ----------------------------------------------------------------- ONNX export


class PositionalDeepSets(torch.nn.Module):
    """DeepSetsClassifiers called with positional tensors, as an exporter needs.

    One classifier per pooling, their logits side by side, so that one export
    checks all three.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList(
            DeepSetsClassifier({"event": (2,), "jet": (3, 6)}, hidden=(8, 8), pooling=pooling)
            for pooling in POOLINGS
        )

    def forward(self, event: torch.Tensor, x_jet: torch.Tensor, mask_jet: torch.Tensor) -> Any:
        features, mask = {"event": event, "jet": x_jet}, {"jet": mask_jet}
        return torch.cat([net(features, mask) for net in self.nets], dim=1)


def export_and_run(
    model: torch.nn.Module,
    example: dict[str, torch.Tensor],
    check: dict[str, torch.Tensor],
    batch_axis: dict[str, int],
    dynamo: bool,
    path: Path,
) -> None:
    """Export ``model`` with a dynamic batch axis, run it in onnxruntime on ``check``."""
    model.eval()
    names = list(example)
    if dynamo:
        # Name the batch axis once: each further name for the same (shared)
        # symbol makes torch warn that it "will not be used".
        shapes = [{batch_axis[n]: "batch" if i == 0 else Dim.DYNAMIC} for i, n in enumerate(names)]
        torch.onnx.export(
            model,
            tuple(example.values()),
            path,
            input_names=names,
            output_names=["logits"],
            dynamic_shapes=tuple(shapes),
            dynamo=True,
            verbose=False,
        )
    else:
        axes = {n: {batch_axis[n]: "batch"} for n in names} | {"logits": {0: "batch"}}
        torch.onnx.export(
            model,
            tuple(example.values()),
            path,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            dynamo=False,
        )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.shape[batch_axis[i.name]] for i in session.get_inputs()] == ["batch"] * len(names)
    (got,) = session.run(None, {n: t.numpy() for n, t in check.items()})
    with torch.no_grad():
        expected = model(*check.values()).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


EXPORTERS = [
    pytest.param(True, marks=pytest.mark.filterwarnings(TORCH_LEAFSPEC_WARNING), id="dynamo"),
    pytest.param(False, id="torchscript"),
]


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_onnx_deep_sets_classifier(dynamo: bool, tmp_path: Path) -> None:
    torch.manual_seed(26)
    model = PositionalDeepSets()

    def inputs(counts: list[int], seed: int) -> dict[str, torch.Tensor]:
        jets, mask = collection(counts, channels=3, length=6, seed=seed)
        event = torch.randn(len(counts), 2, generator=torch.Generator().manual_seed(seed))
        return {"event": event, "x_jet": jets, "mask_jet": mask}

    export_and_run(
        model,
        example=inputs([2, 6, 0, 4], seed=27),
        check=inputs([0, 1, 6, 3, 5, 0, 2, 4, 6], seed=28),
        batch_axis={"event": 0, "x_jet": 0, "mask_jet": 0},
        dynamo=dynamo,
        path=tmp_path / "deep_sets.onnx",
    )


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_onnx_jagged_linear_sequential(dynamo: bool, tmp_path: Path) -> None:
    torch.manual_seed(29)
    model = torch.nn.Sequential(JaggedArrayLinear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    export_and_run(
        model,
        example={"data": torch.stack(flat_inputs(seed=30, events=4))},
        check={"data": torch.stack(flat_inputs(seed=31, events=11))},
        batch_axis={"data": 1},
        dynamo=dynamo,
        path=tmp_path / "jagged.onnx",
    )
