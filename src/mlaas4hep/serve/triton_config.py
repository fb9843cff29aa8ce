"""Triton model configurations (``config.pbtxt``): read from a repository, or derived.

A Triton repository holds ``<model>/config.pbtxt`` next to the version
directories. It is a ``ModelConfig`` message of Triton's ``model_config.proto``
in protobuf text format; :func:`read_model_config` and
:func:`parse_model_config` read it into a :class:`ModelConfig`, which gives what
this server needs (platform, tensors with full shapes, batching, version policy)
and :meth:`ModelConfig.to_json` gives what Triton's ``GET
/v2/models/{model}/config`` answers. Models published without a
``config.pbtxt`` get one from :func:`derive_config`, built from the loaded
backend and the server's settings, so every model answers in Triton form.

What is read as Triton reads it:

- ``name``, when given, must equal the model's directory name; when absent it
  is that name.
- ``platform`` and ``backend`` complete each other as Triton completes them
  (``onnxruntime`` ↔ ``onnxruntime_onnx``, ``pytorch`` ↔ ``pytorch_libtorch``,
  ``tensorflow`` ↔ ``tensorflow_savedmodel`` / ``tensorflow_graphdef``, the
  platform also following from ``default_model_filename``). A configuration
  naming neither leaves :attr:`ModelConfig.platform` empty: the model files
  decide, as Triton's auto-completion does. ``xgboost`` is this server's own
  platform (model.json / model.ubj; it has no Triton backend name).
- Tensor shapes: Triton's ``dims`` leave out the batch dimension when
  ``max_batch_size`` > 0; :attr:`ModelConfig.inputs` and
  :attr:`ModelConfig.outputs` have full shapes, ``-1`` prepended then. Types
  are v2 names (``TYPE_FP32`` → ``FP32``, ``TYPE_STRING`` → ``BYTES``).
  Empty ``dims`` are accepted when ``max_batch_size`` is 0, for a scalar
  (Triton itself wants ``dims: [1]`` with ``reshape: { shape: [] }`` there).
- A configuration without ``input`` / ``output`` (Triton auto-completes them
  for ONNX and TensorFlow models) gives empty lists: the backend's own
  description of the model is used then.
- Batching: with a ``dynamic_batching`` block, requests share model calls of
  up to ``max_batch_size`` rows, waiting at most ``max_queue_delay_microseconds``;
  without one (or with ``max_batch_size`` 0) every request is its own model
  call, as in Triton. ``preferred_batch_size`` is checked as Triton checks it
  (each ≥ 1 and ≤ ``max_batch_size``) but otherwise ignored: a batch is sent
  when it is full or when the delay has passed. Model instances are the sum
  of the ``instance_group`` counts (a group without a count counts 1; no
  group means 1), whatever their kind.
- For ``pytorch_libtorch`` models whose tensor names all follow Triton's
  ``<name>__<index>`` convention, the index gives the position of the
  argument of ``forward()`` or of the returned value, as in Triton's PyTorch
  backend (:meth:`ModelConfig.backend_params` lists them in that order).

Refused with :class:`~mlaas4hep.serve.errors.ModelLoadError`, rather than
served wrongly: ``reshape``, shape tensors (``is_shape_tensor``), non-linear
I/O formats, ``batch_input`` / ``batch_output``, sequence batching, ensembles,
and platforms or backends this server has no backend for (TensorRT, Python,
FIL, ...). ``optional`` inputs are read but not optional here: the server
requires every input of a request. ``label_filename`` of outputs is not read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2

from mlaas4hep.errors import ConfigError
from mlaas4hep.serve.backends.base import DATATYPES, TensorInfo
from mlaas4hep.serve.batching import BatchingConfig
from mlaas4hep.serve.errors import BadRequest, ModelLoadError
from mlaas4hep.serve.repository import VersionPolicy

CONFIG_FILE = "config.pbtxt"

_DEFAULT_FILES: dict[str, tuple[str, ...]] = {
    "onnxruntime_onnx": ("model.onnx",),
    "pytorch_libtorch": ("model.pt",),
    "tensorflow_savedmodel": ("model.savedmodel",),
    "tensorflow_graphdef": ("model.graphdef",),
    "xgboost": ("model.json", "model.ubj"),
}
PLATFORMS = tuple(_DEFAULT_FILES)
"""The Triton platforms this server has a backend for."""

_BACKEND_OF = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}
"""Triton's backend name of each platform (``xgboost`` has none)."""
_PLATFORM_OF_BACKEND = {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch"}
"""The platform a backend name implies (``tensorflow`` has two)."""
_PLATFORM_OF_FILE = {name: platform for platform, names in _DEFAULT_FILES.items() for name in names}

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_INDEXED_NAME = re.compile(r".+__(\d+)")
_TYPE_PREFIX = "TYPE_"


@dataclass(frozen=True)
class ModelConfig:
    """One model's Triton configuration, read for this server (see the module doc)."""

    name: str
    platform: str
    """A Triton platform name (:data:`PLATFORMS`), or ``""`` when the model files decide."""
    max_batch_size: int
    """0: the tensors have no implicit batch dimension."""
    inputs: list[TensorInfo]
    """Full shapes (with the batch dimension ``-1`` when ``max_batch_size`` > 0),
    v2 datatypes; empty when the configuration lists none."""
    outputs: list[TensorInfo]
    """As :attr:`inputs`."""
    version_policy: VersionPolicy | None
    """From ``version_policy``; None when the configuration gives none (the server's own)."""
    batching: BatchingConfig
    """How requests are batched: off (``max_batch_size`` 0) without ``dynamic_batching``."""
    default_model_filename: str | None
    """The model file name the configuration gives; None for the platform's
    default (:func:`default_file_names`)."""
    raw: model_config_pb2.ModelConfig = field(repr=False)
    """The message, with ``name``, ``platform`` and ``backend`` completed as Triton does."""

    def to_json(self) -> dict[str, Any]:
        """The configuration as Triton's ``GET /v2/models/{model}/config`` answers it.

        Like Triton: protobuf's JSON form with proto field names, fields left
        at their default value included, and 64-bit integers (``dims``,
        ``max_queue_delay_microseconds``, versions, ...) as JSON numbers
        rather than protobuf's strings; map keys stay strings.
        """
        data: dict[str, Any] = json_format.MessageToDict(
            self.raw, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        _int64_as_numbers(data, self.raw.DESCRIPTOR)
        return data

    def backend_params(self) -> dict[str, Any]:
        """``params`` for :func:`~mlaas4hep.serve.backends.load_backend`: ``inputs``
        and ``outputs`` as ``{"name", "datatype", "shape"}`` with full shapes.

        A list the configuration does not give is left out, so the backend
        describes those tensors itself. For ``pytorch_libtorch`` the tensors are
        in the order ``forward()`` takes and returns them (see the module doc).
        """
        params: dict[str, Any] = {}
        for role, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not tensors:
                continue
            if self.platform == "pytorch_libtorch":
                ordered = _call_order(tensors, f"model {self.name!r}: {role}")
            else:
                ordered = tensors
            params[role] = [t.to_dict() for t in ordered]
        return params


def default_file_names(platform: str) -> tuple[str, ...]:
    """The model file names Triton (or this server, for ``xgboost``) looks for in a
    version directory of ``platform``; empty for a platform it does not know."""
    return _DEFAULT_FILES.get(platform, ())


def read_model_config(model_dir: Path) -> ModelConfig | None:
    """The ``config.pbtxt`` of the model directory ``model_dir``; None when it has none.

    Raises :class:`ModelLoadError`, naming the file, when it cannot be read
    or parsed (with the line and column), when its ``name`` is not the
    directory's name, or when it asks for what this server does not support.
    """
    path = Path(model_dir) / CONFIG_FILE
    source = f"{path.parent.name}/{CONFIG_FILE}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{source} cannot be read: {error}") from error
    return parse_model_config(text, path.parent.name, source=source)


def parse_model_config(text: str, name: str, *, source: str | None = None) -> ModelConfig:
    """Parse the text of the ``config.pbtxt`` of model ``name``.

    ``source`` names the text in error messages (default
    ``<name>/config.pbtxt``). Raises :class:`ModelLoadError` as
    :func:`read_model_config` does.
    """
    source = source or f"{name}/{CONFIG_FILE}"
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ModelLoadError(
            f"{source} is not a valid model configuration: {_position(error)}"
        ) from None
    return _from_message(message, name, source)


def apply_override(config: ModelConfig | None, override_json: str, name: str) -> ModelConfig:
    """The configuration of model ``name`` when loaded with Triton's ``config``
    load parameter ``override_json``: a JSON ``ModelConfig`` that replaces the
    model's ``config`` (its ``config.pbtxt``, None when it has none).

    As in Triton, nothing of ``config`` is merged in, except that an override
    naming neither ``platform`` nor ``backend`` keeps those of ``config``
    (where Triton would complete them from the same model files). Raises
    :class:`BadRequest` for JSON that is not a valid, supported configuration
    of ``name``.
    """
    source = f"the configuration given for model {name!r}"
    try:
        document = json.loads(override_json)
    except json.JSONDecodeError as error:
        raise BadRequest(f"{source} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequest(f"{source} must be a JSON object (a ModelConfig)")
    message = model_config_pb2.ModelConfig()
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as error:
        raise BadRequest(f"{source} is not a valid model configuration: {error}") from None
    if config is not None and not message.platform and not message.backend:
        message.platform = config.raw.platform
        message.backend = config.raw.backend
    try:
        return _from_message(message, name, source)
    except ModelLoadError as error:
        raise BadRequest(str(error)) from None


def derive_config(
    name: str,
    platform: str,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    *,
    batching: BatchingConfig,
    policy: VersionPolicy,
) -> ModelConfig:
    """The Triton configuration of a model without ``config.pbtxt``, from its backend's
    ``platform`` and tensors (full shapes) and the server's ``batching`` and ``policy``.

    ``max_batch_size`` is ``batching.max_batch_size`` when every tensor has a
    batch dimension (rank ≥ 2 with a variable first dimension; Triton cannot
    write a 1-D batched tensor without ``reshape``), else 0 and the dims are
    the full shapes. ``dynamic_batching`` (with the queue delay) is there when
    the server batches (``max_batch_size`` > 1), and one ``KIND_CPU``
    instance group counts ``batching.instances``.
    """
    tensors = [*inputs, *outputs]
    batched = all(len(t.shape) >= 2 and t.shape[0] == -1 for t in tensors)
    max_batch_size = batching.max_batch_size if batched and tensors else 0
    message = model_config_pb2.ModelConfig(
        name=name, platform=platform, max_batch_size=max_batch_size
    )
    for target, infos in ((message.input, inputs), (message.output, outputs)):
        for info in infos:
            target.add(
                name=info.name,
                data_type=_triton_type(info.datatype),
                dims=info.shape[1:] if max_batch_size else info.shape,
            )
    _set_policy(message.version_policy, policy)
    if batching.max_batch_size > 1:
        message.dynamic_batching.max_queue_delay_microseconds = round(
            batching.max_queue_delay * 1e6
        )
    message.instance_group.add(
        name=f"{name}_0",
        count=batching.instances,
        kind=model_config_pb2.ModelInstanceGroup.KIND_CPU,
    )
    return _from_message(message, name, f"the configuration derived for model {name!r}")


def complete_config(
    config: ModelConfig, platform: str, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]
) -> ModelConfig:
    """``config`` with what it leaves out taken from the loaded model, as Triton's
    auto-complete does: the platform when it names neither platform nor backend,
    the inputs and outputs when it lists none (full shapes: with the batch
    dimension left out when ``max_batch_size`` > 0)."""
    if (config.raw.platform or config.raw.backend) and config.inputs and config.outputs:
        return config
    message = model_config_pb2.ModelConfig()
    message.CopyFrom(config.raw)
    if not message.platform and not message.backend:
        message.platform = platform
    batched = message.max_batch_size > 0
    for target, infos in ((message.input, inputs), (message.output, outputs)):
        if len(target) == 0:
            for info in infos:
                target.add(
                    name=info.name,
                    data_type=_triton_type(info.datatype),
                    dims=info.shape[1:] if batched else info.shape,
                )
    return _from_message(message, config.name, f"the configuration of model {config.name!r}")


# -- reading a message ----------------------------------------------------------


def _from_message(message: Any, name: str, source: str) -> ModelConfig:
    """The :class:`ModelConfig` of ``message`` (completed in place), checked as Triton
    checks it and against what this server supports."""
    if message.name and message.name != name:
        raise ModelLoadError(
            f"{source} names the model {message.name!r}, but it is model {name!r}: "
            "Triton requires the name to be the model directory's name"
        )
    message.name = name
    _complete_platform(message, source)
    _check_supported(message, source)
    if message.max_batch_size < 0:
        raise ModelLoadError(f"{source}: max_batch_size must be ≥ 0, not {message.max_batch_size}")
    batch = [-1] if message.max_batch_size > 0 else []
    inputs = _tensors(message.input, "input", batch, source)
    outputs = _tensors(message.output, "output", batch, source)
    if message.platform == "pytorch_libtorch":
        _call_order(inputs, f"{source}: input")
        _call_order(outputs, f"{source}: output")
    try:
        policy = _policy(message)
        batching = _batching(message, source)
    except ConfigError as error:
        raise ModelLoadError(f"{source}: {error}") from None
    return ModelConfig(
        name=name,
        platform=message.platform,
        max_batch_size=message.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        version_policy=policy,
        batching=batching,
        default_model_filename=message.default_model_filename or None,
        raw=message,
    )


def _complete_platform(message: Any, source: str) -> None:
    """Fill ``platform`` and ``backend`` from each other (and the default model file
    name) as Triton's auto-completion does; refuse what this server cannot serve."""
    backend, platform = message.backend, message.platform
    if backend and backend not in _PLATFORM_OF_BACKEND and backend != "tensorflow":
        raise ModelLoadError(
            f"{source}: backend {backend!r} is not served here; "
            f"the platforms served are {', '.join(PLATFORMS)}"
        )
    if not platform:
        platform = _PLATFORM_OF_BACKEND.get(backend) or _PLATFORM_OF_FILE.get(
            message.default_model_filename, ""
        )
    if platform and platform not in PLATFORMS:
        raise ModelLoadError(
            f"{source}: platform {platform!r} is not served here; "
            f"the platforms served are {', '.join(PLATFORMS)}"
        )
    expected = _BACKEND_OF.get(platform, "")
    if backend and platform and backend != expected:
        raise ModelLoadError(
            f"{source}: platform {platform!r} and backend {backend!r} do not go together"
        )
    message.platform = platform
    message.backend = backend or expected


def _check_supported(message: Any, source: str) -> None:
    """Refuse the features this server would otherwise serve wrongly."""
    refused = [
        (bool(message.batch_input), "batch_input"),
        (bool(message.batch_output), "batch_output"),
        (message.HasField("sequence_batching"), "sequence_batching (stateful models)"),
        (message.HasField("ensemble_scheduling"), "ensemble_scheduling"),
    ]
    for role, tensors in (("input", message.input), ("output", message.output)):
        for tensor in tensors:
            what = f"{role} {tensor.name!r} with"
            refused += [
                (tensor.HasField("reshape"), f"{what} reshape"),
                (tensor.is_shape_tensor, f"{what} is_shape_tensor"),
                (tensor.is_non_linear_format_io, f"{what} is_non_linear_format_io"),
            ]
    for used, what in refused:
        if used:
            raise ModelLoadError(f"{source} uses {what}, which this server does not support")


def _tensors(messages: Iterable[Any], role: str, batch: list[int], source: str) -> list[TensorInfo]:
    """The tensors of ``input`` or ``output`` entries with full shapes."""
    tensors: list[TensorInfo] = []
    for message in messages:
        if not message.name:
            raise ModelLoadError(f"{source}: every {role} must have a name")
        what = f"{source}: {role} {message.name!r}"
        if any(t.name == message.name for t in tensors):
            raise ModelLoadError(f"{what} is listed twice")
        if message.data_type == model_config_pb2.TYPE_INVALID:
            raise ModelLoadError(f"{what} must have a data_type")
        if any(dim < 1 and dim != -1 for dim in message.dims):
            raise ModelLoadError(f"{what}: each of dims {list(message.dims)} must be ≥ 1 or -1")
        if batch and not message.dims:
            raise ModelLoadError(f"{what} must have dims")
        type_name = model_config_pb2.DataType.Name(message.data_type).removeprefix(_TYPE_PREFIX)
        datatype = "BYTES" if type_name == "STRING" else type_name
        tensors.append(TensorInfo(message.name, datatype, [*batch, *message.dims]))
    return tensors


def _call_order(tensors: Sequence[TensorInfo], what: str) -> list[TensorInfo]:
    """PyTorch tensors in the order of ``forward()``'s arguments or results: by the
    ``__<index>`` of their names when all names have one, else as listed.

    Raises :class:`ModelLoadError` (``what`` says whose tensors) when such
    indices are not 0, 1, ... in some order.
    """
    matches = [_INDEXED_NAME.fullmatch(t.name) for t in tensors]
    if not all(matches):
        return list(tensors)
    indices = [int(m.group(1)) for m in matches if m]
    if sorted(indices) != list(range(len(tensors))):
        raise ModelLoadError(
            f"{what} names {[t.name for t in tensors]} must end in __0 to "
            f"__{len(tensors) - 1}, each once (Triton's PyTorch naming convention)"
        )
    return [
        tensor for _, tensor in sorted(zip(indices, tensors, strict=True), key=lambda pair: pair[0])
    ]


def _policy(message: Any) -> VersionPolicy | None:
    """``version_policy`` as a :class:`VersionPolicy`, None when not given."""
    kind = message.version_policy.WhichOneof("policy_choice")
    if kind == "latest":
        return VersionPolicy("latest", count=message.version_policy.latest.num_versions)
    if kind == "specific":
        return VersionPolicy("specific", versions=tuple(message.version_policy.specific.versions))
    if kind == "all":
        return VersionPolicy("all")
    return None


def _set_policy(target: Any, policy: VersionPolicy) -> None:
    """Write ``policy`` into the ``version_policy`` message ``target``."""
    if policy.kind == "latest":
        target.latest.num_versions = policy.count
    elif policy.kind == "specific":
        target.specific.versions.extend(policy.versions)
    else:
        target.all.SetInParent()


def _batching(message: Any, source: str) -> BatchingConfig:
    """How the server batches requests for this configuration (see the module doc)."""
    instances = sum(group.count or 1 for group in message.instance_group) or 1
    if not message.HasField("dynamic_batching"):
        return BatchingConfig(max_batch_size=0, instances=instances)
    dynamic = message.dynamic_batching
    for size in dynamic.preferred_batch_size:
        if not 1 <= size <= message.max_batch_size:
            raise ModelLoadError(
                f"{source}: preferred_batch_size {size} must be between 1 and "
                f"max_batch_size ({message.max_batch_size})"
            )
    return BatchingConfig(
        max_batch_size=message.max_batch_size,
        max_queue_delay=dynamic.max_queue_delay_microseconds / 1e6,
        instances=instances,
    )


def _triton_type(datatype: str) -> int:
    """Triton's ``TYPE_*`` value of a v2 datatype name."""
    if datatype not in DATATYPES:
        raise ValueError(f"no Triton data type for {datatype!r}; known: {', '.join(DATATYPES)}")
    value: int = model_config_pb2.DataType.Value(
        _TYPE_PREFIX + ("STRING" if datatype == "BYTES" else datatype)
    )
    return value


def _position(error: text_format.ParseError) -> str:
    """A protobuf text parse error as ``line L, column C: reason``."""
    line, column = error.GetLine(), error.GetColumn()
    text = str(error)
    if line is None:
        return text
    # The message starts with "L:C : " (protobuf also quotes the line, where it can).
    return f"line {line}, column {column}: {text.removeprefix(f'{line}:{column} : ')}"


def _int64_as_numbers(data: dict[str, Any], descriptor: Descriptor) -> None:
    """Turn the 64-bit integers protobuf's JSON writes as strings into numbers, in place."""
    for key, value in data.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            for map_key, item in value.items():
                value[map_key] = _fixed(value_field, item)
        elif field.is_repeated:
            data[key] = [_fixed(field, item) for item in value]
        else:
            data[key] = _fixed(field, value)


def _fixed(field: FieldDescriptor, value: Any) -> Any:
    """One value of ``field`` with its 64-bit integers as numbers."""
    if field.message_type is not None:
        _int64_as_numbers(value, field.message_type)
        return value
    return int(value) if field.type in _INT64_TYPES else value


__all__ = [
    "CONFIG_FILE",
    "PLATFORMS",
    "ModelConfig",
    "apply_override",
    "complete_config",
    "default_file_names",
    "derive_config",
    "parse_model_config",
    "read_model_config",
]
