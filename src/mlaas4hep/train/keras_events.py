"""The Keras 3 loader: a ``PyDataset`` over :class:`~mlaas4hep.train.loaders.EventBatches`.

Keras runs on the torch backend unless ``KERAS_BACKEND`` says otherwise (TensorFlow
and JAX work where installed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")

from keras.utils import PyDataset

from mlaas4hep.errors import ConfigError
from mlaas4hep.train.loaders import EventBatches, NumpyBatch


class KerasEvents(PyDataset):  # type: ignore[misc]
    """``(x, y, sample_weight)`` batches of one split, for ``model.fit``.

    ``classes`` one-hot encodes the labels (for a categorical cross-entropy);
    without it ``y`` is the label column. Keras must ask for the batches in
    order (the default ``workers=1``): each pass over them is one epoch of the
    stream, reshuffled at ``on_epoch_end``.
    """

    def __init__(self, events: EventBatches, *, classes: int | None = None) -> None:
        super().__init__()
        if events.spec.layout != "flat":
            raise ConfigError(
                "the Keras loader takes the flat layout; use a torch model for 'grouped'"
            )
        self.events = events
        self.classes = classes
        self.width = len(events.spec.columns())
        # An upper bound: a selection may drop events. Batches it leaves out are
        # served as one row of weight 0, which changes neither loss nor gradients.
        self._count = max(1, math.ceil(events.events() / events.batch_size))
        self._iterator: Generator[NumpyBatch] | None = None
        self._next = 0

    @property
    def num_batches(self) -> int:
        """Batches per epoch."""
        return self._count

    def __len__(self) -> int:
        return self._count

    def _targets(self, label: np.ndarray) -> np.ndarray:
        if self.classes:
            return np.eye(self.classes, dtype=np.float32)[label.astype(np.int64)]
        return label.astype(np.float32)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if index == 0 or self._iterator is None:
            self._stop()
            self._iterator, self._next = self.events.iter_shard(), 0
        if index != self._next:
            raise ConfigError(
                f"the event loader is read in order: batch {index} was asked for, "
                f"batch {self._next} comes next (fit with workers=1)"
            )
        self._next += 1
        batch = next(self._iterator, None)
        if batch is None:
            empty = np.zeros(1, np.float32)
            return np.zeros((1, self.width), np.float32), self._targets(empty), empty
        return batch["x"], self._targets(batch["label"]), batch["weight"].astype(np.float32)

    def _stop(self) -> None:
        if self._iterator is not None:
            self._iterator.close()  # hands the kept stream back for the next pass
        self._iterator = None

    def on_epoch_end(self) -> None:
        """Move the stream to the next epoch (a new shuffle)."""
        self._stop()
        self.events.set_epoch(self.events.epoch + 1)
