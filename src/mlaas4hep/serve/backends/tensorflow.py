"""TensorFlow models: SavedModels (``tensorflow_savedmodel``) and TF1 frozen graphs
(``tensorflow_graphdef``, the ``.pb`` files TFaaS serves)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep._native import load_xrootd_first
from mlaas4hep.serve.backends.base import Backend, TensorInfo, datatype_of, reason
from mlaas4hep.serve.errors import ModelLoadError

SIGNATURE = "serving_default"


class SavedModelBackend(Backend):
    """A SavedModel (``tf.saved_model.save``) served through its ``serving_default``
    signature (or its only signature).

    Inputs and outputs are named, typed and shaped as in the signature
    (unknown dimensions ``-1``; an input of unknown rank reads ``[-1]`` and
    only its datatype and batch size are checked). ``threads`` sets
    TensorFlow's process-wide intra-op thread count, which TensorFlow allows
    only before it first runs anything; later it is left as it is.
    """

    platform = "tensorflow_savedmodel"

    def __init__(self, directory: Path, *, threads: int | None = None) -> None:
        tf = _import_tensorflow(directory)
        if threads is not None:
            # RuntimeError once TensorFlow is initialised: its setting stays then.
            with contextlib.suppress(RuntimeError):
                tf.config.threading.set_intra_op_parallelism_threads(threads)
        try:
            loaded = tf.saved_model.load(str(directory))
        except Exception as error:  # TensorFlow raises many exception types
            raise ModelLoadError(
                f"{directory.name} cannot be loaded as a TensorFlow SavedModel: {reason(error)}"
            ) from error
        signatures = dict(loaded.signatures)
        if SIGNATURE in signatures:
            function = signatures[SIGNATURE]
        elif len(signatures) == 1:
            (function,) = signatures.values()
        else:
            raise ModelLoadError(
                f"{directory.name} has no {SIGNATURE!r} signature to serve "
                f"(it has {sorted(signatures) or 'none'})"
            )
        _, specs = function.structured_input_signature
        inputs, unknown_rank = [], []
        for name, spec in specs.items():
            inputs.append(_tensor(directory, name, spec.dtype, spec.shape, "input"))
            if spec.shape.rank is None:
                unknown_rank.append(name)
        outputs = [
            _tensor(directory, name, spec.dtype, spec.shape, "output")
            for name, spec in function.structured_outputs.items()
        ]
        super().__init__(inputs, outputs, unknown_rank=unknown_rank)
        self.path = directory
        self._tf: Any = tf
        # The signature function uses the loaded object's variables: keep both alive.
        self._loaded: Any = loaded
        self._function: Any = function

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        tf = self._tf
        results = self._function(**{name: tf.constant(array) for name, array in feeds.items()})
        return {name: np.asarray(results[name].numpy()) for name in outputs}

    def close(self) -> None:
        """Drop the model (calls in flight keep it until they finish)."""
        super().close()
        self._loaded = self._function = None


class FrozenGraphBackend(Backend):
    """A TF1 frozen graph (a ``GraphDef`` with constants for variables) in a
    ``tf.compat.v1.Session``.

    ``input_nodes`` and ``output_nodes`` name the tensors to feed and fetch
    (``input_1`` or ``input_1:0``); the inputs and outputs take those names
    (without ``:0``), the types and shapes of the graph's tensors.
    """

    platform = "tensorflow_graphdef"

    def __init__(
        self,
        path: Path,
        *,
        input_nodes: Sequence[str],
        output_nodes: Sequence[str],
        threads: int | None = None,
    ) -> None:
        tf = _import_tensorflow(path)
        graph = tf.Graph()
        try:
            graph_def = tf.compat.v1.GraphDef()
            graph_def.ParseFromString(path.read_bytes())
            with graph.as_default():
                tf.import_graph_def(graph_def, name="")
        except Exception as error:  # DecodeError, ValueError, ...
            raise ModelLoadError(
                f"{path.name} is not a TensorFlow frozen graph: {reason(error)}"
            ) from error
        self._feeds = {_name(n): _graph_tensor(path, graph, n, "input") for n in input_nodes}
        self._fetches = {_name(n): _graph_tensor(path, graph, n, "output") for n in output_nodes}
        inputs, unknown_rank = [], []
        for name, tensor in self._feeds.items():
            inputs.append(_tensor(path, name, tensor.dtype, tensor.shape, "input"))
            if tensor.shape.rank is None:
                unknown_rank.append(name)
        outputs = [
            _tensor(path, name, tensor.dtype, tensor.shape, "output")
            for name, tensor in self._fetches.items()
        ]
        super().__init__(inputs, outputs, unknown_rank=unknown_rank)
        self.path = path
        config = tf.compat.v1.ConfigProto()
        if threads is not None:
            config.intra_op_parallelism_threads = threads
        # Session.run is thread-safe: one session serves every call.
        self._session: Any = tf.compat.v1.Session(graph=graph, config=config)

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        results = self._session.run(
            [self._fetches[name] for name in outputs],
            feed_dict={self._feeds[name]: array for name, array in feeds.items()},
        )
        return {name: np.asarray(value) for name, value in zip(outputs, results, strict=True)}

    def close(self) -> None:
        """Close the session."""
        super().close()
        self._session.close()


def _import_tensorflow(path: Path) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no C++ info and warning lines
    load_xrootd_first()
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelLoadError(
            f"{path.name} is a TensorFlow model, which needs TensorFlow: "
            "pip install 'mlaas4hep[tf]'"
        ) from None
    return tf


def _name(node: str) -> str:
    """A tensor's name as served: its node name, without the ``:0`` of a first output."""
    return node.removesuffix(":0")


def _graph_tensor(path: Path, graph: Any, node: str, role: str) -> Any:
    try:
        return graph.get_tensor_by_name(node if ":" in node else f"{node}:0")
    except (KeyError, ValueError):
        placeholders = [op.name for op in graph.get_operations() if op.type == "Placeholder"]
        raise ModelLoadError(
            f"{path.name} has no {role} node {node!r} (its placeholders: {placeholders})"
        ) from None


def _tensor(path: Path, name: str, dtype: Any, shape: Any, role: str) -> TensorInfo:
    """The v2 description of a TensorFlow tensor (unknown rank: ``[-1]``)."""
    try:
        datatype = datatype_of(dtype.as_numpy_dtype)
    except (TypeError, ValueError):
        raise ModelLoadError(
            f"{path.name}: {role} {name!r} has type {dtype.name}, not served"
        ) from None
    dims = [-1] if shape.rank is None else [-1 if d is None else int(d) for d in shape.as_list()]
    return TensorInfo(name, datatype, dims)
