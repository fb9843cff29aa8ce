"""Pick and load the backend for the files of one model version directory."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlaas4hep.errors import MlaasError
from mlaas4hep.serve.backends.base import DATATYPES, Backend, TensorInfo, reason
from mlaas4hep.serve.backends.onnx import OnnxBackend
from mlaas4hep.serve.backends.tensorflow import FrozenGraphBackend, SavedModelBackend
from mlaas4hep.serve.backends.torchscript import TorchScriptBackend
from mlaas4hep.serve.backends.xgboost import XGBoostBackend
from mlaas4hep.serve.errors import ModelLoadError, ServeError

METADATA = "metadata.json"
PARAMS = "params.json"
LABELS = "labels.txt"
SAVED_MODEL = "saved_model.pb"
SAVED_MODEL_DIR = "model.savedmodel"
PACKAGE_SCHEMA = "mlaas4hep.model"

_TORCH_SUFFIXES = (".pt", ".pth", ".torchscript")
_XGBOOST_SUFFIXES = (".json", ".ubj", ".xgb")
_GRAPH_SUFFIXES = (".pb", ".graphdef")
ACCEPTED = (
    f"{METADATA} of a mlaas4hep model package; {PARAMS} naming the model file (TFaaS); "
    "model.onnx or one *.onnx (ONNX); model.pt, model.pth or one *.torchscript (TorchScript); "
    "model.json, model.ubj or one *.xgb (XGBoost); saved_model.pb or model.savedmodel/ "
    "(TensorFlow SavedModel); one *.pb or model.graphdef with input and output node names "
    "(TensorFlow frozen graph)"
)
"""The model files :func:`load_backend` recognises, for error messages."""


def load_backend(
    directory: Path,
    *,
    params: Mapping[str, Any] | None = None,
    threads: int | None = None,
    device: str = "cpu",
) -> Backend:
    """Load the model in one version directory with the backend its files call for.

    Tried in order:

    1. a mlaas4hep model package (``metadata.json`` with ``"schema":
       "mlaas4hep.model"``): checked against its checksums, its ONNX file
       served by ONNX Runtime, whose inputs and outputs must agree with the
       metadata;
    2. a TFaaS ``params.json`` whose ``"model"`` names the model file (for a
       frozen graph ``.pb``, ``inputNode`` and ``outputNode`` name the tensors);
    3. by file name: ``model.onnx`` or a single ``*.onnx``; ``model.pt``,
       ``model.pth`` or ``*.torchscript``; ``model.json``, ``model.ubj`` or
       ``*.xgb``; ``saved_model.pb`` or ``model.savedmodel/``; another
       ``*.pb`` (or Triton's ``model.graphdef``) as a frozen graph.

    ``params`` describe the model further, as a Triton ``config.pbtxt``
    does (they override ``params.json``): ``inputs`` and ``outputs``, lists
    of ``{"name", "datatype", "shape"}`` with the batch dimension (needed
    for TorchScript shapes; their names are a frozen graph's nodes when
    ``inputNode`` / ``outputNode`` are not given). ``threads`` caps the
    intra-op threads; ``device`` other than ``"cpu"`` lets ONNX Runtime use
    CUDA when it can (the other backends run on the CPU).

    The backend's :attr:`~Backend.labels` come from the package metadata, a
    ``labels`` entry of ``params.json`` (a file name or a list) or
    ``labels.txt``. Raises :class:`ModelLoadError`, naming the file and the
    reason, when nothing can be loaded.
    """
    directory = Path(directory)
    try:
        return _load(directory, params or {}, threads, device)
    except ServeError:
        raise
    except MlaasError as error:  # a damaged model package
        raise ModelLoadError(str(error)) from error
    except Exception as error:  # a model file can fail in any library
        raise ModelLoadError(
            f"cannot load the model in {directory.name}: {reason(error)}"
        ) from error


def _load(directory: Path, params: Mapping[str, Any], threads: int | None, device: str) -> Backend:
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory.name} does not exist")
    metadata = _read_json(directory / METADATA)
    if isinstance(metadata, dict) and metadata.get("schema") == PACKAGE_SCHEMA:
        return _load_package(directory, threads, device)
    tfaas = _read_json(directory / PARAMS)
    if tfaas is not None and not isinstance(tfaas, dict):
        raise ModelLoadError(f"{PARAMS} must hold a JSON object")
    description: dict[str, Any] = {**(tfaas or {}), **params}
    if tfaas and "model" in tfaas:
        model = _inside(directory, tfaas["model"], f"{PARAMS} 'model'")
    else:
        model = _model_file(directory)
    backend = _by_file(model, description, threads, device)
    try:
        backend.labels = _labels(directory, description)
    except ModelLoadError:
        backend.close()
        raise
    backend.metadata = tfaas or {}
    return backend


def _load_package(directory: Path, threads: int | None, device: str) -> Backend:
    """Our model package: checksums verified, ONNX served, tensors agreeing with metadata."""
    from mlaas4hep.train.package import load_package  # here: it imports the feature-spec code

    package = load_package(directory)
    backend = OnnxBackend(package.onnx_path, threads=threads, device=device)
    for role, declared, actual in (
        ("inputs", package.inputs, backend.inputs),
        ("outputs", package.outputs, backend.outputs),
    ):
        if declared != actual:
            backend.close()
            raise ModelLoadError(
                f"{package.onnx_path.name} has {role} {[t.to_dict() for t in actual]}, "
                f"{METADATA} declares {[t.to_dict() for t in declared]}"
            )
    backend.metadata = package.metadata
    backend.labels = package.labels
    columns = package.metadata.get("columns")
    if len(backend.inputs) == 1 and len(backend.inputs[0].shape) == 2 and columns:
        backend.feature_names = [str(column) for column in columns]
    try:
        backend.event_inputs = package.event_inputs()  # runs the packaged preprocess.py
    except Exception as error:
        backend.close()
        raise ModelLoadError(
            f"the model package's feature spec or preprocessing cannot be loaded: {error}"
        ) from error
    return backend


def _model_file(directory: Path) -> Path:
    """The model file (or SavedModel directory) in ``directory``, chosen by file names."""
    names = sorted(p.name for p in directory.iterdir())

    def pick(exact: tuple[str, ...], suffixes: tuple[str, ...]) -> Path | None:
        for name in exact:
            if name in names:
                return directory / name
        matches = [n for n in names if n.endswith(suffixes) and (directory / n).is_file()]
        if len(matches) > 1:
            raise ModelLoadError(
                f"{directory.name} holds several model files {matches}; "
                f"keep one, or name one {exact[0]}"
            )
        return directory / matches[0] if matches else None

    found = (
        pick(("model.onnx",), (".onnx",))
        or pick(("model.pt", "model.pth"), (".torchscript",))
        or pick(("model.json", "model.ubj"), (".xgb",))
        or (directory if SAVED_MODEL in names else None)
        or (directory / SAVED_MODEL_DIR if (directory / SAVED_MODEL_DIR).is_dir() else None)
        or pick(("model.graphdef",), (".pb",))
    )
    if found is None:
        raise ModelLoadError(
            f"no model file in {directory.name}: it holds {names or 'nothing'}; "
            f"accepted: {ACCEPTED}"
        )
    return found


def _by_file(
    path: Path, description: Mapping[str, Any], threads: int | None, device: str
) -> Backend:
    """The backend for one model file (or SavedModel directory)."""
    if not path.exists():
        raise ModelLoadError(f"model file {path.name} does not exist")
    if path.is_dir() or path.name == SAVED_MODEL:
        return SavedModelBackend(path if path.is_dir() else path.parent, threads=threads)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxBackend(path, threads=threads, device=device)
    if suffix in _TORCH_SUFFIXES:
        return TorchScriptBackend(
            path,
            inputs=_tensors(description, "inputs"),
            outputs=_tensors(description, "outputs"),
            threads=threads,
        )
    if suffix in _XGBOOST_SUFFIXES:
        return XGBoostBackend(path, threads=threads)
    if suffix in _GRAPH_SUFFIXES:
        return _frozen_graph(path, description, threads)
    raise ModelLoadError(f"{path.name} is not a model file this server loads; accepted: {ACCEPTED}")


def _frozen_graph(
    path: Path, description: Mapping[str, Any], threads: int | None
) -> FrozenGraphBackend:
    nodes = {}
    for role, key in (("inputs", "inputNode"), ("outputs", "outputNode")):
        value = description.get(key)
        tensors = _tensors(description, role)
        if isinstance(value, str) and value:
            nodes[role] = [value]
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            nodes[role] = value
        elif tensors:
            nodes[role] = [t.name for t in tensors]
        else:
            raise ModelLoadError(
                f"{path.name} is a TensorFlow frozen graph: {PARAMS} must name its "
                f"input and output tensors ('inputNode' and 'outputNode')"
            )
    return FrozenGraphBackend(
        path, input_nodes=nodes["inputs"], output_nodes=nodes["outputs"], threads=threads
    )


def _tensors(description: Mapping[str, Any], role: str) -> list[TensorInfo] | None:
    """``description[role]`` as tensors, None when not given."""
    value = description.get(role)
    if value is None:
        return None
    try:
        tensors = [TensorInfo.from_dict(item) for item in value]
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(
            f"the model's {role} must be a list of {{'name', 'datatype', 'shape'}}: {error!r}"
        ) from error
    for tensor in tensors:
        if tensor.datatype not in DATATYPES:
            raise ModelLoadError(
                f"{role[:-1]} {tensor.name!r} has datatype {tensor.datatype!r}; "
                f"known: {', '.join(DATATYPES)}"
            )
    return tensors


def _labels(directory: Path, description: Mapping[str, Any]) -> list[str] | None:
    value = description.get("labels")
    if isinstance(value, list):
        return [str(label) for label in value]
    if isinstance(value, str) and value:
        path = _inside(directory, value, f"{PARAMS} 'labels'")
    elif (directory / LABELS).is_file():
        path = directory / LABELS
    else:
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"labels file {path.name} cannot be read: {error}") from error
    return [line.strip() for line in text.splitlines() if line.strip()]


def _inside(directory: Path, name: Any, what: str) -> Path:
    """``directory / name``, refusing names that leave the directory."""
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"{what} must be a file name, got {name!r}")
    path = (directory / name).resolve()
    if not path.is_relative_to(directory.resolve()) or path == directory.resolve():
        raise ModelLoadError(f"{what} must name a file inside the model directory, got {name!r}")
    return path


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, None when there is no such file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path.name} cannot be read: {error}") from error
