"""Export a trained model to ONNX (for the server) and to its framework's own file format.

Every exporter takes the model and an ordered example batch ``{name: array}``
(``x``, ``mask``, ``x_PFCands``, ...; float32, events along the first axis) and
writes two files into a directory:

* ``model.onnx``: inputs named and ordered as the example, float32, with a
  dynamic first dimension ``batch``; one output, ``probabilities``, float32
  ``[batch, K]``. Converters that also produce a label output (scikit-learn,
  XGBoost) have it dropped, so every framework serves the same interface.
* the native file: ``model.pt`` (TorchScript), ``model.keras``,
  ``model.joblib`` (scikit-learn) or ``model.json`` (XGBoost).

Both files are checked before the exporter returns: ONNX Runtime and the
reloaded native model must reproduce the framework's predictions on the
example (pass a held-out batch), else :class:`ExportError` is raised.

The frameworks are optional extras, so each is imported only inside the
functions that need it.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import itertools
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from mlaas4hep.errors import MlaasError

if TYPE_CHECKING:
    import torch

OPSET = 18
"""The default ONNX opset of every exported model."""
OUTPUT = "probabilities"
"""The name of the one output of every exported model."""
BATCH = "batch"
"""The name of the dynamic first dimension of every input and of the output."""
FRAMEWORKS = ("torch", "keras", "sklearn", "xgboost")
NATIVE_FILES = {
    "torch": "model.pt",
    "keras": "model.keras",
    "sklearn": "model.joblib",
    "xgboost": "model.json",
}
"""The native file name of each framework."""

# ONNX element types by their Triton / KServe v2 datatype names.
_DATATYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.STRING: "BYTES",
}

# Distributions whose versions are recorded in a model package, by import name.
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "mlaas4hep": ("mlaas4hep",),
    "numpy": ("numpy",),
    "torch": ("torch",),
    "keras": ("keras",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnxscript": ("onnxscript",),
    "sklearn": ("scikit-learn",),
    "skl2onnx": ("skl2onnx",),
    "xgboost": ("xgboost", "xgboost-cpu"),
    "onnxmltools": ("onnxmltools",),
}

Example = Mapping[str, np.ndarray]


class ExportError(MlaasError):
    """A model cannot be exported, or its exported form disagrees with the framework."""


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a served model, in Triton / KServe v2 terms.

    ``datatype`` is a v2 datatype name (``FP32``, ``INT64``, ...); ``shape``
    has ``-1`` for variable dimensions (always the first, the batch).
    """

    name: str
    datatype: str
    shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"name", "datatype", "shape"}``."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorInfo:
        """Read the JSON form (raises ``KeyError`` / ``TypeError`` when malformed)."""
        return cls(str(data["name"]), str(data["datatype"]), [int(d) for d in data["shape"]])


@dataclass(frozen=True)
class ExportedModel:
    """The files an exporter wrote and what the ONNX model looks like."""

    onnx: Path
    native: Path
    framework: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    max_deviation: float
    """Largest absolute difference between ONNX Runtime and the framework on the example."""


# -- public exporters -------------------------------------------------------


def export_torch(
    module: torch.nn.Module, example: Example, directory: str | Path, *, opset: int = OPSET
) -> ExportedModel:
    """Export a PyTorch module whose ``forward(*example.values())`` returns probabilities.

    ONNX comes from the ``torch.export``-based exporter (``dynamo=True``) and
    the native ``model.pt`` from ``torch.jit.trace``, so the module must be
    traceable (no control flow on tensor values). The module is run in
    ``eval()`` mode, its training mode restored afterwards; a module on a GPU
    is exported from a CPU copy.
    """
    import torch

    arrays = _check_example(example, minimum=2)
    folder = _directory(directory)
    if _device(module).type != "cpu":
        # export and compare on the CPU, where ONNX Runtime runs: no TF32, no device copies
        module = copy.deepcopy(module).cpu()
    expected = _probabilities(predict_native("torch", module, arrays), "the torch module")
    tensors = tuple(torch.from_numpy(a) for a in arrays.values())
    proto = _torch_onnx(module, tensors, list(arrays), opset=opset, pack=False)
    native = folder / NATIVE_FILES["torch"]
    with _eval_mode(module), torch.no_grad():
        # TorchScript is deprecated in favour of torch.export, but it is
        # still the one file format that loads without the model's code.
        torch.jit.trace(module, tensors).save(str(native))  # type: ignore[no-untyped-call]
    return _finish("torch", proto, native, arrays, expected, folder)


def export_keras(
    model: Any, example: Example, directory: str | Path, *, opset: int = OPSET
) -> ExportedModel:
    """Export a Keras 3 model (torch backend) whose output is already probabilities.

    The example's arrays are the model's inputs in order (a single array for a
    one-input model, else a list). ``model.keras`` is written by
    ``model.save``; custom layers must be registered with
    ``keras.saving.register_keras_serializable`` for it to load back.

    ONNX is exported with ``torch.onnx.export(dynamo=True)`` on the model
    itself (a ``torch.nn.Module`` on the torch backend): Keras 3.15's own
    ``model.export(format="onnx")`` falls back to the deprecated TorchScript
    exporter for a dynamic batch, leaks tracer warnings and names the
    tensors ``keras_tensor`` and a node number.
    """
    import keras

    if keras.backend.backend() != "torch":
        raise ExportError(
            f"Keras models are exported on the torch backend, this process uses "
            f"{keras.backend.backend()!r}; set KERAS_BACKEND=torch before importing keras"
        )
    arrays = _check_example(example, minimum=2)
    folder = _directory(directory)
    expected = _probabilities(predict_native("keras", model, arrays), "the Keras model")
    import torch

    tensors = tuple(torch.from_numpy(a) for a in arrays.values())
    proto = _torch_onnx(model, tensors, list(arrays), opset=opset, pack=True)
    native = folder / NATIVE_FILES["keras"]
    model.save(native)
    return _finish("keras", proto, native, arrays, expected, folder)


def export_sklearn(
    model: Any, example: Example, directory: str | Path, *, opset: int = OPSET
) -> ExportedModel:
    """Export a fitted scikit-learn classifier (or pipeline) with ``predict_proba``.

    The example holds one 2-D array. Converted by skl2onnx without the ZipMap
    (so probabilities are a ``[batch, K]`` tensor); the converter's label
    output is dropped. Native file: ``model.joblib``.
    """
    import joblib

    native = _directory(directory) / NATIVE_FILES["sklearn"]
    exported = _export_tabular("sklearn", model, example, native, opset=opset)
    joblib.dump(model, native)
    return _verify_native(exported, example)


def export_xgboost(
    model: Any, example: Example, directory: str | Path, *, opset: int = OPSET
) -> ExportedModel:
    """Export a fitted ``xgboost.XGBClassifier`` (``K = 2`` columns for a binary one).

    Converted by skl2onnx with the onnxmltools XGBoost converter registered
    (onnxmltools' own ``convert_xgboost`` stops at opset 15). Feature names
    from a DataFrame are dropped from a copy of the booster for the
    conversion, since the converter reads only ``f0, f1, ...``. Native file:
    ``model.json`` (``save_model``).
    """
    native = _directory(directory) / NATIVE_FILES["xgboost"]
    exported = _export_tabular("xgboost", model, example, native, opset=opset)
    model.save_model(native)
    return _verify_native(exported, example)


def check_onnx(
    onnx_path: str | Path,
    example: Example,
    expected: np.ndarray,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> float:
    """Run ONNX Runtime (CPU) on ``example`` and compare with the framework's ``expected``.

    Returns the largest absolute deviation; raises :class:`ExportError`, naming
    the file, that deviation and the tolerance, when the outputs differ beyond
    ``|onnx - expected| <= atol + rtol * |expected|`` or have another shape.
    """
    import onnxruntime as ort  # type: ignore[import-untyped]

    arrays = _check_example(example)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no notes on pruned initialisers
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped exception classes
        raise ExportError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc
    wanted = [i.name for i in session.get_inputs()]
    if wanted != list(arrays):
        raise ExportError(f"{onnx_path} takes inputs {wanted}, the example has {list(arrays)}")
    names = [o.name for o in session.get_outputs()]
    output = OUTPUT if OUTPUT in names else names[0]
    actual = np.asarray(session.run([output], dict(arrays))[0])
    reference = np.asarray(expected)
    if actual.shape != reference.shape:
        raise ExportError(
            f"{onnx_path} returns {output!r} shaped {list(actual.shape)}, "
            f"the framework {list(reference.shape)}"
        )
    deviation = float(np.max(np.abs(actual - reference), initial=0.0))
    if not np.allclose(actual, reference, rtol=rtol, atol=atol):
        raise ExportError(
            f"{onnx_path} disagrees with the framework: max |deviation| {deviation:.3g} "
            f"exceeds the tolerance atol={atol:g} + rtol={rtol:g}·|expected|"
        )
    return deviation


def framework_versions() -> dict[str, str]:
    """Versions of the installed packages that matter for a model, by import name.

    Only packages that are importable are listed; nothing is imported.
    """
    versions: dict[str, str] = {}
    for module, distributions in _DISTRIBUTIONS.items():
        if importlib.util.find_spec(module) is None:
            continue
        for distribution in distributions:
            try:
                versions[module] = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                continue
            break
    return versions


def load_native(framework: str, path: str | Path) -> Any:
    """Load a native model file written by the exporter of ``framework``.

    ``model.joblib`` is a pickle: load only packages you trust.
    """
    path = Path(path)
    if framework == "torch":
        import torch

        return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    if framework == "keras":
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras

        return keras.saving.load_model(path)
    if framework == "sklearn":
        import joblib

        return joblib.load(path)
    if framework == "xgboost":
        import xgboost

        model = xgboost.XGBClassifier()
        model.load_model(path)
        return model
    raise ExportError(f"unknown framework {framework!r}; known: {', '.join(FRAMEWORKS)}")


def predict_native(framework: str, model: Any, inputs: Example) -> np.ndarray:
    """The probabilities a ``framework`` model gives for ``inputs`` (float32 ``[B, K]``).

    A torch module is run in ``eval()`` mode without gradients (its mode is
    restored); the others through ``predict`` (Keras) or ``predict_proba``.
    """
    arrays = _check_example(inputs)
    values = list(arrays.values())
    if framework == "torch":
        import torch

        device = _device(model)
        with _eval_mode(model), torch.no_grad():
            out = model(*(torch.from_numpy(a).to(device) for a in values))
        return np.asarray(out.detach().cpu().numpy(), dtype=np.float32)
    if framework == "keras":
        out = model.predict(values[0] if len(values) == 1 else values, verbose=0)
        return np.asarray(out, dtype=np.float32)
    if framework in {"sklearn", "xgboost"}:
        if len(values) != 1:
            raise ExportError(f"a {framework} model takes one input, got {list(arrays)}")
        if not hasattr(model, "predict_proba"):
            raise ExportError(f"{type(model).__name__} has no predict_proba: not a classifier")
        return np.asarray(model.predict_proba(values[0]), dtype=np.float32)
    raise ExportError(f"unknown framework {framework!r}; known: {', '.join(FRAMEWORKS)}")


# -- framework conversions --------------------------------------------------


def _torch_onnx(
    module: torch.nn.Module,
    tensors: tuple[torch.Tensor, ...],
    names: list[str],
    *,
    opset: int,
    pack: bool,
) -> onnx.ModelProto:
    """ONNX of a torch module called with ``tensors`` (``pack``: as one list, for Keras)."""
    import torch

    class Positional(torch.nn.Module):
        """Calls the model with positional tensors, so every model has one signature."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> Any:
            if pack and len(inputs) > 1:
                return self.model(list(inputs))
            return self.model(*inputs)

    # Dim.DYNAMIC rather than a named Dim: naming the batch of several inputs
    # that torch.export proves equal makes the exporter warn that all but one
    # name are unused. The dimension is named "batch" afterwards.
    dims = tuple({0: torch.export.Dim.DYNAMIC} for _ in tensors)
    try:
        with _eval_mode(module), _quiet_torch_onnx():
            program = torch.onnx.export(
                Positional(module).eval(),
                tensors,
                input_names=names,
                output_names=[OUTPUT],
                dynamic_shapes=(dims,),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:  # torch raises many exception types from its stages
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    if program is None:  # only for f=... with the legacy exporter
        raise ExportError("torch.onnx.export returned no ONNX program")
    return program.model_proto


def _device(module: torch.nn.Module) -> torch.device:
    """Where the module's first parameter (or buffer) lives; the CPU for a stateless one."""
    import torch

    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` in ``eval()`` mode, restoring its training mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """Silence two pieces of torch-internal noise of the dynamo ONNX exporter."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    no_torchvision = _DropMessages("torchvision is not installed")
    registration.addFilter(no_torchvision)
    try:
        with warnings.catch_warnings():
            # torch 2.13's exporter copies pytree specs internally, which trips
            # the FutureWarning torch.utils._pytree attaches to its own LeafSpec.
            warnings.filterwarnings(
                "ignore",
                message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                category=FutureWarning,
            )
            yield
    finally:
        registration.removeFilter(no_torchvision)


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with a prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _export_tabular(
    framework: str, model: Any, example: Example, native: Path, *, opset: int
) -> ExportedModel:
    """Convert a scikit-learn-style classifier with skl2onnx and check it (native not yet)."""
    arrays = _check_example(example, minimum=2)
    if len(arrays) != 1 or next(iter(arrays.values())).ndim != 2:
        shapes = {k: list(v.shape) for k, v in arrays.items()}
        raise ExportError(f"a {framework} model takes one 2-D input, got {shapes}")
    name, x = next(iter(arrays.items()))
    expected = _probabilities(predict_native(framework, model, arrays), f"the {framework} model")

    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    converted = model
    if framework == "xgboost":
        _register_xgboost()
        if model.get_booster().feature_names is not None:
            converted = copy.deepcopy(model)
            converted.get_booster().feature_names = None
    try:
        proto = convert_sklearn(
            converted,
            initial_types=[(name, FloatTensorType([None, x.shape[1]]))],
            options={id(converted): {"zipmap": False}},
            target_opset={"": opset, "ai.onnx.ml": 3},
        )
    except Exception as exc:  # the converters raise RuntimeError, NotImplementedError, ...
        raise ExportError(f"cannot convert {type(model).__name__} to ONNX: {exc}") from exc
    return _finish_onnx(framework, proto, native, arrays, expected, native.parent)


def _register_xgboost() -> None:
    """Teach skl2onnx the XGBClassifier, with the converter of onnxmltools."""
    import xgboost
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    update_registered_converter(
        xgboost.XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )


# -- shared steps -----------------------------------------------------------


def _check_example(example: Example, *, minimum: int = 1) -> dict[str, np.ndarray]:
    """The example as float32 arrays, checked: numbers, equal batches of ``minimum`` events."""
    if not example:
        raise ExportError("the example batch has no inputs")
    arrays: dict[str, np.ndarray] = {}
    for name, value in example.items():
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ExportError(f"example input {name!r} has dtype {array.dtype}, not a number")
        if array.ndim == 0:
            raise ExportError(f"example input {name!r} is a scalar, not a batch")
        arrays[str(name)] = np.ascontiguousarray(array, dtype=np.float32)
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ExportError(f"the example inputs have different batch sizes: {sizes}")
    if next(iter(sizes.values())) < minimum:
        # (exporters) a batch of one lets torch.export fix the batch dimension at 1
        raise ExportError(f"the example batch needs at least {minimum} events")
    return arrays


def _probabilities(values: np.ndarray, what: str) -> np.ndarray:
    """Check that ``values`` are ``[B, K]`` probabilities (float32)."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ExportError(
            f"{what} must return probabilities shaped [batch, classes], "
            f"got shape {list(values.shape)}"
        )
    return values


def _directory(directory: str | Path) -> Path:
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _finish(
    framework: str,
    proto: onnx.ModelProto,
    native: Path,
    arrays: dict[str, np.ndarray],
    expected: np.ndarray,
    folder: Path,
) -> ExportedModel:
    """Write and check ``model.onnx``, then check that the native file reproduces too."""
    exported = _finish_onnx(framework, proto, native, arrays, expected, folder)
    return _verify_native(exported, arrays)


def _finish_onnx(
    framework: str,
    proto: onnx.ModelProto,
    native: Path,
    arrays: dict[str, np.ndarray],
    expected: np.ndarray,
    folder: Path,
) -> ExportedModel:
    """Normalise the ONNX graph, save it as ``model.onnx`` and compare it with ``expected``."""
    proto = _normalise(proto, list(arrays))
    path = folder / "model.onnx"
    onnx.save(proto, path)
    deviation = check_onnx(path, arrays, expected)
    graph = proto.graph
    return ExportedModel(
        onnx=path,
        native=native,
        framework=framework,
        inputs=[_tensor_info(v) for v in graph.input],
        outputs=[_tensor_info(v) for v in graph.output],
        max_deviation=deviation,
    )


def _verify_native(exported: ExportedModel, example: Example) -> ExportedModel:
    """Reload the native file and compare its predictions with ONNX Runtime's."""
    try:
        model = load_native(exported.framework, exported.native)
    except ExportError:
        raise
    except Exception as exc:  # each framework has its own load errors
        raise ExportError(f"{exported.native} does not load back: {exc}") from exc
    reloaded = predict_native(exported.framework, model, example)
    check_onnx(exported.onnx, example, reloaded)
    return exported


def _normalise(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Keep only the ``probabilities`` output and name the first dimension ``batch``.

    Checks that the inputs are exactly ``names`` (in order) and that the
    first dimension of every input is variable.
    """
    graph = proto.graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if [i.name for i in inputs] != names:
        raise ExportError(
            f"the ONNX model takes inputs {[i.name for i in inputs]}, expected {names}"
        )
    outputs = [o for o in graph.output if o.name == OUTPUT]
    if not outputs:
        raise ExportError(
            f"the ONNX model has no output {OUTPUT!r}: {[o.name for o in graph.output]}"
        )
    del graph.output[:]
    graph.output.extend(outputs)

    symbols: set[str] = set()
    for value in inputs:
        first = value.type.tensor_type.shape.dim[0]
        if first.HasField("dim_value"):
            raise ExportError(
                f"the exporter fixed the batch dimension of input {value.name!r} "
                f"at {first.dim_value}"
            )
        if first.dim_param:
            symbols.add(first.dim_param)
    for value in [*inputs, *graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = BATCH
    for value in graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = BATCH

    # skl2onnx may list the default domain twice
    opsets = {o.domain: o.version for o in proto.opset_import}
    del proto.opset_import[:]
    proto.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model is invalid: {exc}") from exc
    return proto


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    datatype = _DATATYPES.get(tensor.elem_type)
    if datatype is None:
        raise ExportError(
            f"ONNX tensor {value.name!r} has element type "
            f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}, which cannot be served"
        )
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return TensorInfo(value.name, datatype, shape)


__all__ = [
    "FRAMEWORKS",
    "NATIVE_FILES",
    "ExportError",
    "ExportedModel",
    "TensorInfo",
    "check_onnx",
    "export_keras",
    "export_sklearn",
    "export_torch",
    "export_xgboost",
    "framework_versions",
    "load_native",
    "predict_native",
]
