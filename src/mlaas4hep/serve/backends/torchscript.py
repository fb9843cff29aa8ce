"""TorchScript models, run by PyTorch on the CPU (Triton platform ``pytorch_libtorch``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep.serve.backends.base import Backend, TensorInfo, reason
from mlaas4hep.serve.errors import ModelLoadError


class TorchScriptBackend(Backend):
    """A TorchScript module (``torch.jit.save``), called as ``module(*inputs)``.

    A TorchScript file carries no tensor shapes, so ``inputs`` and
    ``outputs`` describe them (as a Triton ``config.pbtxt`` or our
    ``metadata.json`` do; shapes include the batch dimension). Without
    ``inputs``, the names of ``forward()``'s tensor arguments are taken, as
    ``FP32`` of unknown shape (only the datatype and the batch size of a
    request are checked then). Without ``outputs``, they are named as
    Triton's PyTorch backend names them, ``output__0``, ``output__1``, ...,
    one per tensor ``forward()`` returns (``FP32``, shape ``[-1]`` unknown).
    Inputs may also be sent as ``input__0``, ``input__1``, ... in order.

    ``forward()`` may return a tensor, a tuple or list of tensors (the
    outputs in order) or a dict of tensors (by output name).
    """

    platform = "pytorch_libtorch"

    def __init__(
        self,
        path: Path,
        *,
        inputs: Sequence[TensorInfo] | None = None,
        outputs: Sequence[TensorInfo] | None = None,
        threads: int | None = None,
    ) -> None:
        try:
            import torch
        except ImportError:
            raise ModelLoadError(
                f"{path.name} is a TorchScript model, which needs PyTorch: "
                "pip install 'mlaas4hep[torch]'"
            ) from None
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module setting
        try:
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except Exception as error:  # torch raises RuntimeError and more
            raise ModelLoadError(
                f"{path.name} cannot be loaded by torch.jit.load: {reason(error)}"
            ) from error
        module.eval()
        schema = module.forward.schema
        unknown_rank: list[str] = []
        if inputs is None:
            inputs = _signature_inputs(path, torch, schema)
            unknown_rank = [info.name for info in inputs]
        else:
            _check_arity(path, schema, len(inputs))
        if outputs is None:
            outputs = _signature_outputs(path, torch, schema)
        declared = {info.name for info in inputs}
        for info in inputs:
            if info.datatype in {"BYTES", "BF16"}:
                raise ModelLoadError(
                    f"{path.name}: input {info.name!r} is {info.datatype}, which "
                    "cannot be fed to a TorchScript model"
                )
        aliases = {
            f"input__{i}": info.name
            for i, info in enumerate(inputs)
            if f"input__{i}" not in declared
        }
        super().__init__(inputs, outputs, unknown_rank=unknown_rank, aliases=aliases)
        self.path = path
        self._torch: Any = torch
        self._module: Any = module

    def _run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        torch = self._torch
        # torch.from_numpy warns on read-only arrays (such as np.frombuffer's): copy those.
        tensors = [
            torch.from_numpy(array if array.flags.writeable else array.copy())
            for array in feeds.values()
        ]
        with torch.inference_mode():
            result = self._module(*tensors)
        values = self._named(result)
        return {name: values[name] for name in outputs}

    def _named(self, result: Any) -> dict[str, np.ndarray]:
        """The module's return value by declared output name."""
        names = [info.name for info in self.outputs]
        if isinstance(result, dict):
            missing = [name for name in names if name not in result]
            if missing:
                raise ModelLoadError(
                    f"{self.path.name} returned outputs {sorted(result)}, "
                    f"its description declares {names}"
                )
            return {name: _numpy(result[name]) for name in names}
        values = list(result) if isinstance(result, tuple | list) else [result]
        if len(values) != len(names):
            raise ModelLoadError(
                f"{self.path.name} returned {len(values)} output(s), "
                f"its description declares {len(names)}: {names}"
            )
        return {name: _numpy(value) for name, value in zip(names, values, strict=True)}

    def close(self) -> None:
        """Drop the module (calls in flight keep it until they finish)."""
        super().close()
        self._module = None


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


def _positional(schema: Any) -> list[Any]:
    """``forward()``'s arguments after ``self``."""
    return list(schema.arguments[1:])


def _check_arity(path: Path, schema: Any, count: int) -> None:
    arguments = _positional(schema)
    required = [a for a in arguments if not a.has_default_value()]
    if not len(required) <= count <= len(arguments):
        names = ", ".join(a.name for a in arguments)
        raise ModelLoadError(
            f"{path.name}: the description declares {count} input(s), "
            f"forward() takes {len(required)} to {len(arguments)} ({names})"
        )


def _signature_inputs(path: Path, torch: Any, schema: Any) -> list[TensorInfo]:
    inputs = []
    for argument in _positional(schema):
        if argument.has_default_value():
            break
        if not isinstance(argument.type, torch.TensorType):
            raise ModelLoadError(
                f"{path.name}: forward() argument {argument.name!r} is {argument.type}, "
                "not a tensor; describe the inputs in the model configuration"
            )
        inputs.append(TensorInfo(argument.name, "FP32", [-1]))
    return inputs


def _signature_outputs(path: Path, torch: Any, schema: Any) -> list[TensorInfo]:
    returned = schema.returns[0].type
    elements = returned.elements() if isinstance(returned, torch.TupleType) else [returned]
    if not all(isinstance(element, torch.TensorType) for element in elements):
        raise ModelLoadError(
            f"{path.name}: forward() returns {returned}; describe the outputs "
            "in the model configuration"
        )
    return [TensorInfo(f"output__{i}", "FP32", [-1]) for i in range(len(elements))]
