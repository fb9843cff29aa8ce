"""TFaaS rows: ``{"keys", "values", "model"}`` (JSON) or ``tfaaspb.Row`` (protobuf)
in, model inputs out, and the outputs back in TFaaS form.

Unlike TFaaS, ``keys`` are matched to the model's feature names and the values
reordered (keys missing or unknown → 400 naming them), and ``values`` may be a
list of rows. A model served through these endpoints takes one row input
(``[-1, F]``, or fixed dims that the row fills in order); inputs called
``mask``/``mask_*`` of the same width are filled with ones (every value real).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np
import orjson
from google.protobuf.message import DecodeError

from mlaas4hep.serve.backends import Backend
from mlaas4hep.serve.errors import BadRequest
from mlaas4hep.serve.tfaas_proto import Class, Predictions, Row

_PERMUTATIONS_KEPT = 256
"""Key orders remembered per model (clients send the same order every time)."""


@dataclass
class RowRequest:
    """One parsed TFaaS request."""

    model: str | None
    version: str | None
    keys: list[str] | None
    values: np.ndarray
    """``[rows, values per row]``, float."""
    batched: bool


def split_model(text: str | None) -> tuple[str | None, str | None]:
    """``"name"`` → (name, None); ``"name:3"`` or ``"name:prod"`` → (name, "3"/"prod")."""
    if not text:
        return None, None
    name, _, version = text.partition(":")
    return name, version or None


def parse_json(body: bytes) -> RowRequest:
    """A ``/json`` body: ``{"keys": [...], "values": [...] or [[...], ...], "model": "name"}``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object {"keys", "values", "model"}')
    values = data.get("values")
    if not isinstance(values, list) or not values:
        raise BadRequest("'values' must be a non-empty list of numbers (or of rows)")
    batched = isinstance(values[0], list)
    array = _numbers(values)
    if batched != (array.ndim == 2) or array.ndim not in (1, 2):
        raise BadRequest("'values' must be a list of numbers or a list of rows of numbers")
    keys = data.get("keys")
    if keys is not None and not isinstance(keys, list):
        raise BadRequest("'keys' must be a list of strings")  # the strings: see RowLayout._order
    model = data.get("model") or data.get("name")  # TFaaS's own client sends "name"
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string")
    name, version = split_model(model)
    rows = array if batched else array[np.newaxis]
    return RowRequest(name, version, keys or None, rows, batched)


def _numbers(values: list[Any]) -> np.ndarray:
    try:
        array = np.asarray(values)
    except ValueError:
        raise BadRequest("the rows of 'values' have different lengths") from None
    if array.dtype.kind not in "biuf":  # JSON true/false count as 1/0
        raise BadRequest("'values' must hold only numbers")
    return array


def parse_proto(body: bytes) -> RowRequest:
    """A ``/proto`` body: one serialised ``tfaaspb.Row``."""
    try:
        row = Row.FromString(body)
    except DecodeError:
        raise BadRequest("the body is not a valid tfaaspb.Row protobuf message") from None
    if not row.value:
        raise BadRequest("the Row has no values")
    name, version = split_model(row.model)
    values = np.asarray(row.value, dtype=np.float32)[np.newaxis]
    return RowRequest(name, version, list(row.key) or None, values, False)


@dataclass(eq=False)
class RowLayout:
    """How rows become the inputs of one model (worked out once per model version)."""

    input: str
    shape: tuple[int, ...]
    """The row input's dims after the batch (``(-1,)`` when any width goes)."""
    dtype: np.dtype[Any]
    names: list[str] | None
    masks: dict[str, np.dtype[Any]]
    """Mask inputs (filled with ones) and their dtypes."""
    output: str
    labels: list[str] | None
    _orders: dict[tuple[str, ...], np.ndarray | None] = field(default_factory=dict)

    @property
    def width(self) -> int | None:
        """Values per row, when the model fixes it."""
        return None if -1 in self.shape else prod(self.shape)

    @classmethod
    def of(cls, name: str, backend: Backend) -> RowLayout:
        """The layout of ``backend``; :class:`BadRequest` when rows cannot feed it."""
        masks = [i for i in backend.inputs if i.name == "mask" or i.name.startswith("mask_")]
        rows = [i for i in backend.inputs if i not in masks]
        if len(rows) != 1 or not backend.outputs:
            names = [i.name for i in backend.inputs]
            raise BadRequest(
                f"model {name!r} takes inputs {names}: TFaaS rows fill one input; "
                "send the inputs by name with the v2 API instead"
            )
        info = rows[0]
        shape = tuple(info.shape[1:]) or (1,)
        if -1 in shape and len(shape) > 1:
            raise BadRequest(
                f"model {name!r} takes input {info.name!r} shaped {info.shape}: TFaaS rows "
                "can only fill inputs of fixed shape [-1, ...] or [-1, -1]"
            )
        features = backend.feature_names or _names(backend.metadata.get("features"))
        if features is not None and len(features) != prod(shape) and -1 not in shape:
            features = None
        return cls(
            input=info.name,
            shape=shape,
            dtype=np.dtype(_NUMPY.get(info.datatype, np.float32)),
            names=list(features) if features else None,
            masks={m.name: np.dtype(_NUMPY.get(m.datatype, np.float32)) for m in masks},
            output=answer_output(backend),
            labels=backend.labels,
        )

    def inputs(self, model: str, request: RowRequest) -> dict[str, np.ndarray]:
        """The model inputs for ``request``'s rows (keys matched and reordered),
        of the model's dtypes and shapes: they need no further checks."""
        values = request.values
        width = self.width
        if request.keys is not None:
            if len(request.keys) != values.shape[1]:
                raise BadRequest(f"{len(request.keys)} keys but {values.shape[1]} values per row")
            order = self._order(model, tuple(request.keys))
            if order is not None:
                values = values[:, order]
        if width is not None and values.shape[1] != width:
            raise BadRequest(f"model {model!r} takes {width} values per row, got {values.shape[1]}")
        rows = np.ascontiguousarray(values, dtype=self.dtype).reshape(
            len(values), *self._dims(values)
        )
        inputs = {self.input: rows}
        for mask, dtype in self.masks.items():
            inputs[mask] = np.ones(rows.shape, dtype)
        return inputs

    def _dims(self, values: np.ndarray) -> tuple[int, ...]:
        return (values.shape[1],) if -1 in self.shape else self.shape

    def _order(self, model: str, keys: tuple[str, ...]) -> np.ndarray | None:
        """Column order turning ``keys`` into the model's feature order (None: as is)."""
        try:
            return self._orders[keys]
        except KeyError:
            pass
        except TypeError:  # unhashable: not a list of strings
            raise BadRequest("'keys' must be a list of strings") from None
        if not all(isinstance(k, str) for k in keys):
            raise BadRequest("'keys' must be a list of strings")
        if self.names is None:
            order = None
        else:
            missing = [n for n in self.names if n not in keys]
            unknown = [k for k in keys if k not in self.names]
            duplicated = sorted({k for k in keys if keys.count(k) > 1})
            if missing or unknown or duplicated:
                parts = [
                    f"missing keys {missing[:10]}" + (" ..." if len(missing) > 10 else "")
                    if missing
                    else "",
                    f"unknown keys {unknown[:10]}" if unknown else "",
                    f"repeated keys {duplicated}" if duplicated else "",
                ]
                raise BadRequest(
                    f"the keys do not match model {model!r}'s features: "
                    + "; ".join(p for p in parts if p)
                )
            position = {k: i for i, k in enumerate(keys)}
            indices = np.array([position[n] for n in self.names])
            order = None if np.array_equal(indices, np.arange(len(indices))) else indices
        if len(self._orders) < _PERMUTATIONS_KEPT:
            self._orders[keys] = order
        return order


def answer_output(backend: Backend) -> str:
    """The output TFaaS answers carry: the first floating-point one (a classifier
    converted by skl2onnx gives its labels first, then the probabilities)."""
    for info in backend.outputs:
        if info.datatype.startswith("FP"):
            return info.name
    return backend.outputs[0].name


def _names(value: Any) -> list[str] | None:
    """Feature names given in params.json (``"features": [...]``), if any."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


_NUMPY: dict[str, type[np.generic]] = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
}


def json_answer(output: np.ndarray, batched: bool) -> bytes:
    """The ``/json`` answer: the output row, or a list of rows for a batch."""
    flat = output.reshape(len(output), -1)
    return orjson.dumps(flat if batched else flat[0], option=orjson.OPT_SERIALIZE_NUMPY)


def proto_answer(output: np.ndarray, labels: list[str] | None) -> bytes:
    """The ``/proto`` answer: ``tfaaspb.Predictions`` with one Class per output column."""
    row = output.reshape(len(output), -1)[0]
    names = labels if labels is not None and len(labels) == len(row) else [""] * len(row)
    predictions = Predictions(
        prediction=[Class(label=n, probability=float(p)) for n, p in zip(names, row, strict=True)]
    )
    return bytes(predictions.SerializeToString())
