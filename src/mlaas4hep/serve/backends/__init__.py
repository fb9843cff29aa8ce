"""Inference backends: one loaded model version that runs on numpy arrays.

:func:`load_backend` picks the backend from the files of a version directory:
a mlaas4hep model package or any ONNX model (ONNX Runtime), TorchScript
(PyTorch), XGBoost boosters, TensorFlow SavedModels and TF1 frozen graphs.
The frameworks are optional extras, imported only when a model needs them.
"""

from __future__ import annotations

from mlaas4hep.serve.backends.base import Backend, TensorInfo
from mlaas4hep.serve.backends.loader import load_backend

__all__ = ["Backend", "TensorInfo", "load_backend"]
