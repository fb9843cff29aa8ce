"""Neural-network layers for padded (jagged) HEP inputs.

Jagged branches reach a model as fixed-size tensors plus a mask of the same
layout that says which entries are real:

* a mask value of ``1`` marks a real entry and ``0`` a padded one;
* a ``NaN`` in the mask also marks padding (the convention of the original
  MLaaS4HEP, kept so that its model files still work).

The values of ``x`` at padded positions are never trusted: they may be zero,
garbage or ``NaN``. Every layer here replaces them by ``0`` with
:func:`torch.where` (never in place, never by boolean-index assignment) before
they can reach an output or a gradient, so the layers trace with
:func:`torch.jit.trace` and export with :func:`torch.onnx.export`.

Two layouts are supported:

* flat: ``x`` and ``mask`` are ``[B, F]``; :class:`JaggedArrayLinear` takes
  them as a pair or stacked as one ``[2, B, F]`` tensor;
* grouped: each collection (jets, muons, ...) is ``[B, C, L]`` (``C`` branches
  of the collection, ``L`` padded length) with a mask ``[B, 1, L]``;
  :class:`MaskedDeepSets` pools one collection and :class:`DeepSetsClassifier`
  combines several with the event-level flat features ``[B, F]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from mlaas4hep.errors import ConfigError

__all__ = [
    "EVENT_KEY",
    "DeepSetsClassifier",
    "JaggedArrayLinear",
    "MaskedDeepSets",
    "Pooling",
    "real_entries",
]

logger = logging.getLogger(__name__)

Pooling = Literal["sum", "mean", "max"]
EVENT_KEY = "event"
"""Key of the event-level flat features in :class:`DeepSetsClassifier` inputs."""

ArrayLike = torch.Tensor | npt.NDArray[np.generic]
JaggedInput = ArrayLike | tuple[ArrayLike, ArrayLike] | list[ArrayLike]


def real_entries(mask: torch.Tensor) -> torch.Tensor:
    """Boolean tensor, ``True`` where ``mask`` marks a real entry (non-zero and not NaN)."""
    if mask.dtype == torch.bool:
        return mask
    real = mask != 0
    if mask.is_floating_point():
        real = real & ~torch.isnan(mask)
    return real


def _as_tensor(value: ArrayLike) -> torch.Tensor:
    """A tensor unchanged; a numpy array as a float32 tensor (copied only when needed)."""
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value, dtype=np.float32)
    if not array.flags.writeable:  # torch warns about tensors over read-only memory
        array = array.copy()
    return torch.from_numpy(array)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers between consecutive ``sizes`` with a ReLU between two of them."""
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes[:-1]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class JaggedArrayLinear(nn.Linear):
    """A :class:`torch.nn.Linear` on padded values: padded entries count as zero.

    ``forward`` takes the values and their mask (see the module docstring) as
    a pair ``(x, mask)``, a list ``[x, mask]``, one stacked tensor whose
    leading dimension is 2 (``torch.stack([x, mask])``) or numpy arrays of
    these forms (converted to float32). ``x`` is ``[..., in_features]`` and
    ``mask`` broadcasts to it. The caller's tensors are not modified.

    Args:
        in_features: size of the last dimension of ``x``.
        out_features: size of the output.
        bias: whether to learn an additive bias.
        verbose: when positive, log the input shapes at every call.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, verbose: int = 0
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.verbose = verbose

    def forward(self, data: JaggedInput) -> torch.Tensor:
        """Zero the padded entries of the values, then apply the linear map."""
        if isinstance(data, tuple | list):
            if len(data) != 2:
                raise ConfigError(
                    f"JaggedArrayLinear expects (values, mask), got {len(data)} items"
                )
            x, mask = _as_tensor(data[0]), _as_tensor(data[1])
        else:
            stacked = _as_tensor(data)
            parts = stacked.unbind(0) if stacked.dim() > 1 else ()
            if len(parts) != 2:
                raise ConfigError(
                    "JaggedArrayLinear expects a stacked [2, ..., in_features] tensor "
                    f"(values, mask), got shape {tuple(stacked.shape)}"
                )
            x, mask = parts
        if self.verbose:
            logger.info("JaggedArrayLinear: values %s, mask %s", tuple(x.shape), tuple(mask.shape))
        values = torch.where(real_entries(mask), x, torch.zeros_like(x))
        return super().forward(values)


class MaskedDeepSets(nn.Module):
    """Permutation-invariant embedding of one padded collection (Deep Sets).

    A per-element MLP ``phi`` (a stack of kernel-1 convolutions, each followed
    by a ReLU) maps every element's ``C`` channels to ``hidden[-1]`` features,
    then the real elements are pooled: ``sum``, ``mean`` (divided by the count
    of real elements, at least 1) or ``max`` (0 for an event with no real
    element). Padded elements never reach the output, whatever their values.

    Args:
        channels: ``C``, the number of branches of the collection.
        hidden: the output sizes of the layers of ``phi``.
        pooling: ``"sum"``, ``"mean"`` or ``"max"``.
    """

    def __init__(
        self, channels: int, hidden: Sequence[int] = (64, 64), pooling: Pooling = "sum"
    ) -> None:
        super().__init__()
        if pooling not in get_args(Pooling):
            raise ConfigError(
                f"unknown pooling {pooling!r}; choose one of {', '.join(get_args(Pooling))}"
            )
        if not hidden:
            raise ConfigError("MaskedDeepSets needs at least one hidden layer")
        layers: list[nn.Module] = []
        for n_in, n_out in pairwise([channels, *hidden]):
            layers += [nn.Conv1d(n_in, n_out, kernel_size=1), nn.ReLU()]
        self.phi = nn.Sequential(*layers)
        self.pooling: Pooling = pooling
        self.out_features = hidden[-1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` ``[B, C, L]`` over its real elements (``mask`` ``[B, 1, L]``): ``[B, H]``."""
        real = real_entries(mask)
        h: torch.Tensor = self.phi(torch.where(real, x, torch.zeros_like(x)))
        if self.pooling == "max":
            pooled = torch.where(real, h, float("-inf")).amax(dim=-1)
            return torch.where(real.any(dim=-1), pooled, torch.zeros_like(pooled))
        total = torch.where(real, h, torch.zeros_like(h)).sum(dim=-1)
        if self.pooling == "sum":
            return total
        count = real.sum(dim=-1).to(h.dtype).clamp(min=1.0)
        return total / count


class DeepSetsClassifier(nn.Module):
    """Classifier of events made of padded collections and flat event-level features.

    One :class:`MaskedDeepSets` per collection; the pooled embeddings are
    concatenated with the event-level features and fed to an MLP head that
    returns ``n_outputs`` raw logits (no final activation).

    Args:
        input_shapes: ``{collection: (C, L)}`` for each collection and, when
            there are flat event-level features, ``{"event": (F,)}``.
        n_outputs: the number of logits.
        hidden: the layer sizes of each collection's ``phi``.
        head: the hidden layer sizes of the head MLP.
        pooling: the pooling of every collection (see :class:`MaskedDeepSets`).
    """

    def __init__(
        self,
        input_shapes: Mapping[str, tuple[int, ...]],
        n_outputs: int = 1,
        hidden: Sequence[int] = (64, 64),
        head: Sequence[int] = (64,),
        pooling: Pooling = "sum",
    ) -> None:
        super().__init__()
        self.sets = nn.ModuleDict()
        self.event_features = 0
        width = 0
        for name, shape in input_shapes.items():
            if name == EVENT_KEY:
                if len(shape) != 1:
                    raise ConfigError(f"event features must have shape (F,), got {shape}")
                self.event_features = shape[0]
                width += shape[0]
            elif len(shape) != 2:
                raise ConfigError(f"collection {name!r} must have shape (C, L), got {shape}")
            else:
                deep_set = MaskedDeepSets(shape[0], hidden, pooling)
                self.sets[name] = deep_set
                width += deep_set.out_features
        if width == 0:
            raise ConfigError("DeepSetsClassifier needs at least one collection or event feature")
        self.head = _mlp([width, *head, n_outputs])

    def forward(
        self, features: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Logits ``[B, n_outputs]`` from ``features`` (keys of ``input_shapes``) and masks.

        ``mask`` has one ``[B, 1, L]`` entry per collection.
        """
        parts: list[torch.Tensor] = [
            deep_set(features[name], mask[name]) for name, deep_set in self.sets.items()
        ]
        if self.event_features:
            parts.append(features[EVENT_KEY])
        logits: torch.Tensor = self.head(torch.cat(parts, dim=1))
        return logits
