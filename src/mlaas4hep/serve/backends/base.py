"""What every backend shares: its description and the checks of a request's inputs.

A :class:`Backend` is one loaded model version. The server calls
:meth:`Backend.predict` from several threads at once (a thread pool, with
dynamic batching), so backends keep no per-call state.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlaas4hep.serve.errors import BadRequest, ServeError, Unavailable
from mlaas4hep.train.export import TensorInfo

if TYPE_CHECKING:
    from mlaas4hep.predict.events import EventInputs

NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
    "BYTES": np.dtype(object),
}
"""The numpy dtype of each v2 datatype a backend can be fed (not BF16: numpy has none)."""

DATATYPES = (*NUMPY_TYPES, "BF16")
"""Every v2 datatype name."""

_DATATYPES = {dtype: name for name, dtype in NUMPY_TYPES.items() if name != "BYTES"}


def datatype_of(dtype: Any) -> str:
    """The v2 datatype name of a numpy dtype (``BYTES`` for strings and objects)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype not in _DATATYPES:
        raise ValueError(f"no v2 datatype for {dtype}")
    return _DATATYPES[dtype]


class Backend(abc.ABC):
    """One loaded model: describes its tensors and runs inference on numpy arrays.

    ``inputs`` and ``outputs`` use v2 datatypes and ``-1`` for variable
    dimensions (the batch first). Inputs listed in ``unknown_rank`` have no
    known shape (their ``shape`` reads ``[-1]``): only their datatype and
    batch size are checked. ``aliases`` are other accepted names of inputs
    (Triton's ``input__0``, ...), by alias.

    The loader fills :attr:`labels` (class names of the output columns),
    :attr:`feature_names` (the columns of a single 2-D input) and
    :attr:`metadata` (the model's ``metadata.json`` or ``params.json``).
    """

    platform: ClassVar[str]
    """The Triton platform name (``onnxruntime_onnx``, ``pytorch_libtorch``, ...)."""

    def __init__(
        self,
        inputs: Sequence[TensorInfo],
        outputs: Sequence[TensorInfo],
        *,
        unknown_rank: Iterable[str] = (),
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.inputs: list[TensorInfo] = list(inputs)
        self.outputs: list[TensorInfo] = list(outputs)
        self.labels: list[str] | None = None
        self.feature_names: list[str] | None = None
        self.metadata: dict[str, Any] = {}
        self.event_inputs: EventInputs | None = None
        """How raw events become this model's inputs; model packages only."""
        self._unknown_rank = frozenset(unknown_rank)
        self._aliases = dict(aliases or {})
        self._closed = False

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` checked against the model and ready to feed it.

        Returns contiguous arrays of the declared dtypes, by declared name, in
        the declared order. Raises :class:`BadRequest` for missing or
        unexpected names, non-numeric data, values that do not fit the
        declared integer type, a wrong rank or fixed dimension, or inputs
        with different batch sizes.
        """
        named: dict[str, Any] = {}
        for key, value in inputs.items():
            name = self._aliases.get(key, key)
            if name in named:
                raise BadRequest(f"input {name!r} is given twice (as {name!r} and an alias)")
            named[name] = value
        expected = [info.name for info in self.inputs]
        missing = [name for name in expected if name not in named]
        unexpected = [key for key in inputs if self._aliases.get(key, key) not in expected]
        if missing or unexpected:
            problems = [f"missing {missing}"] if missing else []
            problems += [f"unexpected {unexpected}"] if unexpected else []
            raise BadRequest(f"the model takes inputs {expected}: {', '.join(problems)}")
        feeds = {info.name: self._check_input(info, named[info.name]) for info in self.inputs}
        batches = {name: array.shape[0] for name, array in feeds.items() if array.ndim}
        if len(set(batches.values())) > 1:
            raise BadRequest(f"the inputs have different batch sizes: {batches}")
        return feeds

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        *,
        checked: bool = False,
    ) -> dict[str, np.ndarray]:
        """Run the model on ``inputs`` (by input name); the ``outputs`` asked (all by default).

        Inputs are checked as by :meth:`check_inputs`, unless ``checked`` says
        they came from it (the server checks each request before batching);
        an unknown output name or an input the model itself rejects raises
        :class:`BadRequest`. Safe to call from several threads at once.
        """
        if self._closed:
            raise Unavailable("the model has been unloaded")
        feeds = dict(inputs) if checked else self.check_inputs(inputs)
        declared = [info.name for info in self.outputs]
        wanted = declared if outputs is None else list(outputs)
        unknown = [name for name in wanted if name not in declared]
        if unknown:
            raise BadRequest(f"unknown output(s) {unknown}; the model's outputs are {declared}")
        try:
            return self._run(feeds, wanted)
        except ServeError:
            raise
        except Exception as error:  # each framework raises its own types
            raise BadRequest(f"the model cannot evaluate these inputs: {reason(error)}") from error

    def close(self) -> None:
        """Release the model; later :meth:`predict` calls raise :class:`Unavailable`."""
        self._closed = True

    @abc.abstractmethod
    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """The ``outputs`` (declared names) for checked ``feeds`` (declared names and order)."""

    def _check_input(self, info: TensorInfo, value: Any) -> np.ndarray:
        array = np.asarray(value)
        if info.datatype not in NUMPY_TYPES:
            raise BadRequest(f"input {info.name!r} has datatype {info.datatype}, not supported")
        target = NUMPY_TYPES[info.datatype]
        if info.name in self._unknown_rank:
            if array.ndim == 0:
                raise BadRequest(f"input {info.name!r} is a scalar, expected a batch")
        elif array.ndim != len(info.shape) or any(
            want not in {-1, got} for want, got in zip(info.shape, array.shape, strict=True)
        ):
            raise BadRequest(
                f"input {info.name!r} has shape {list(array.shape)}, expected {info.shape} "
                "(-1: any size)"
            )
        return np.ascontiguousarray(_cast(info.name, array, target))


def _cast(name: str, array: np.ndarray, target: np.dtype[Any]) -> np.ndarray:
    """``array`` as ``target``, refusing casts that would change values (not float precision)."""
    kind = array.dtype.kind
    if array.dtype == target:
        return array
    if target.kind == "O":
        if kind not in "OSU":
            raise BadRequest(f"input {name!r} must hold strings, got {array.dtype}")
        return array.astype(object)
    if kind not in "biuf":
        raise BadRequest(f"input {name!r} has dtype {array.dtype}, expected numbers ({target})")
    if target.kind == "f":
        return array.astype(target)
    if kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise BadRequest(f"input {name!r} has non-integer values, expected {target}")
    if target.kind == "b":
        if not np.all((array == 0) | (array == 1)):
            raise BadRequest(f"input {name!r} has values other than 0 and 1, expected bool")
    elif array.size and not np.can_cast(array.dtype, target, "safe"):
        limits = np.iinfo(target)
        if array.min() < limits.min or array.max() > limits.max:
            raise BadRequest(f"input {name!r} has values outside the range of {target}")
    return array.astype(target)


def reason(error: BaseException) -> str:
    """A one-paragraph reason from a library exception (XGBoost appends C++ stack traces)."""
    text = str(error).split("Stack trace:", 1)[0].strip()
    return text or type(error).__name__


__all__ = ["DATATYPES", "NUMPY_TYPES", "Backend", "TensorInfo", "datatype_of", "reason"]
