"""XGBoost boosters (JSON or UBJSON model files), run on the CPU (platform ``xgboost``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep.serve.backends.base import Backend, TensorInfo, reason
from mlaas4hep.serve.errors import ModelLoadError

INPUT = "input"
PROBABILITIES = "probabilities"
PREDICTIONS = "predictions"


class XGBoostBackend(Backend):
    """An ``xgboost.Booster``: one input ``input`` FP32 ``[-1, num_features]``.

    Classifiers give ``probabilities`` FP32 ``[-1, K]``: ``[1 - p, p]`` for
    ``binary:logistic``, the K class columns for ``multi:softprob``. Any
    other objective (regression, ranking, margins, ``multi:softmax`` class
    indices) gives ``predictions`` FP32 ``[-1, T]``, one column per target.
    Missing values are NaN. :attr:`feature_names` are the booster's, if set.
    """

    platform = "xgboost"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        try:
            import xgboost
        except ImportError:
            raise ModelLoadError(
                f"{path.name} is an XGBoost model, which needs XGBoost: "
                "pip install 'mlaas4hep[xgboost]'"
            ) from None
        try:
            # XGBoost takes the format from a .json / .ubj name and warns on any other name;
            # from a buffer it guesses it from the content.
            source = str(path) if path.suffix in {".json", ".ubj"} else bytearray(path.read_bytes())
            booster = xgboost.Booster(model_file=source)
            config = json.loads(booster.save_config())["learner"]
            objective = str(config["objective"]["name"])
            classes = int(config["learner_model_param"]["num_class"])
            targets = int(config["learner_model_param"]["num_target"])
        except Exception as error:  # XGBoostError, or an unexpected config
            raise ModelLoadError(
                f"{path.name} cannot be loaded by XGBoost: {reason(error)}"
            ) from error
        if threads is not None:
            booster.set_param({"nthread": threads})
        if objective == "binary:logistic":
            output = TensorInfo(PROBABILITIES, "FP32", [-1, 2])
        elif objective == "multi:softprob":
            output = TensorInfo(PROBABILITIES, "FP32", [-1, classes])
        else:
            output = TensorInfo(PREDICTIONS, "FP32", [-1, max(targets, 1)])
        super().__init__([TensorInfo(INPUT, "FP32", [-1, booster.num_features()])], [output])
        self.path = path
        self.objective = objective
        self.feature_names = None if booster.feature_names is None else list(booster.feature_names)
        self._booster: Any = booster
        # the columns inplace_predict gives (one, p, for binary:logistic)
        self._columns = 1 if objective == "binary:logistic" else output.shape[1]

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        # inplace_predict is thread-safe and reads the array without a DMatrix copy;
        # the features are checked by position (feature names travel apart from arrays).
        values = self._booster.inplace_predict(
            feeds[INPUT], missing=np.nan, validate_features=False
        )
        values = np.asarray(values, dtype=np.float32).reshape(len(feeds[INPUT]), self._columns)
        if self.objective == "binary:logistic":
            values = np.column_stack([1 - values[:, 0], values[:, 0]])
        return dict.fromkeys(outputs, values)

    def close(self) -> None:
        """Drop the booster (calls in flight keep it until they finish)."""
        super().close()
        self._booster = None
