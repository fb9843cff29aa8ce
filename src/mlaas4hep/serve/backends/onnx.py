"""ONNX models, run by ONNX Runtime (Triton platform ``onnxruntime_onnx``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep.serve.backends.base import Backend, TensorInfo, reason
from mlaas4hep.serve.errors import BadRequest, ModelLoadError

# ONNX Runtime element type names (inside "tensor(...)") by v2 datatype.
_DATATYPES = {
    "float": "FP32",
    "double": "FP64",
    "float16": "FP16",
    "bfloat16": "BF16",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    "string": "BYTES",
}


class OnnxBackend(Backend):
    """An ONNX model in an ONNX Runtime session.

    Inputs and outputs are read from the model; symbolic or unknown
    dimensions become ``-1``. Outputs that are not tensors (the ZipMap
    sequences of maps of a skl2onnx classifier exported with its default
    options) are not served. ``device`` other than ``"cpu"`` (``"cuda"``,
    ``"cuda:1"``) uses the CUDA execution provider when ONNX Runtime has
    it, else the CPU.
    """

    platform = "onnxruntime_onnx"

    def __init__(self, path: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        try:
            import onnxruntime as ort  # type: ignore[import-untyped]
        except ImportError:
            raise ModelLoadError(
                f"{path.name} needs ONNX Runtime: pip install 'mlaas4hep[onnx]'"
            ) from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        # Idle intra-op threads would spin, taking the CPU the server needs for requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=_providers(ort, device))
        except Exception as error:  # ORT raises its own untyped exceptions
            raise ModelLoadError(
                f"{path.name} cannot be loaded by ONNX Runtime: {reason(error)}"
            ) from error
        inputs = [_tensor(path, node, "input") for node in session.get_inputs()]
        outputs = [
            _tensor(path, node, "output")
            for node in session.get_outputs()
            if node.type.startswith("tensor(")
        ]
        if not outputs:
            raise ModelLoadError(f"{path.name} has no tensor output")
        super().__init__(inputs, outputs)
        self.path = path
        self._session: Any = session

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe: no lock.
        feeds = {name: _as_text(name, array) for name, array in feeds.items()}
        results = self._session.run(outputs, feeds)
        return {name: np.asarray(result) for name, result in zip(outputs, results, strict=True)}

    def close(self) -> None:
        """Drop the session (calls in flight keep it until they finish)."""
        super().close()
        self._session = None


def _providers(ort: Any, device: str) -> list[Any]:
    """CUDA (on the device's index) then CPU when ``device`` asks for a GPU that ORT has."""
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        index = device.partition(":")[2]
        cuda_options = {"device_id": int(index)} if index.isdigit() else {}
        return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _tensor(path: Path, node: Any, role: str) -> TensorInfo:
    """The v2 description of an ORT ``NodeArg``."""
    element = node.type.removeprefix("tensor(").removesuffix(")")
    if not node.type.startswith("tensor(") or element not in _DATATYPES:
        raise ModelLoadError(f"{path.name}: {role} {node.name!r} has type {node.type}, not served")
    shape = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape or []]
    return TensorInfo(node.name, _DATATYPES[element], shape)


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """String tensors as ONNX Runtime takes them: ``str`` objects (BYTES arrive as ``bytes``)."""
    if array.dtype.kind != "O":
        return array
    try:
        text: np.ndarray = np.vectorize(
            lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object]
        )(array)
    except UnicodeDecodeError:
        raise BadRequest(f"input {name!r}: ONNX string tensors must be UTF-8") from None
    return text
