"""User models: ``model.py`` files loaded by path, and what framework they are.

The conventions (MLaaS4HEP's, extended):

* ``def model(idim)`` returns a ``torch.nn.Module`` or a Keras model taking the
  flat layout's ``idim`` columns;
* ``def model(input_shapes)`` (grouped layout) returns a ``torch.nn.Module``
  called as ``module(features, mask)``, with ``input_shapes`` mapping
  ``"event"`` to ``(F,)`` (the flat branches, when there are any) and each
  collection to ``(C, L)``;
* ``def model()`` returns a scikit-learn or XGBoost estimator.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlaas4hep.data.rootfile import describe_exception
from mlaas4hep.errors import ConfigError
from mlaas4hep.transform.spec import FeatureSpec
from mlaas4hep.usercode import load_user_module

FRAMEWORKS = ("torch", "keras", "sklearn", "xgboost")


@dataclass
class UserModel:
    """A model built by the user's function, and where it came from."""

    model: Any
    framework: str
    path: Path
    sha256: str


def input_shapes(spec: FeatureSpec) -> dict[str, tuple[int, ...]]:
    """Shapes of one event's inputs: ``{"x": (F,)}`` flat, or per collection grouped."""
    if spec.layout == "flat":
        return {"x": (len(spec.columns()),)}
    shapes: dict[str, tuple[int, ...]] = {}
    if spec.flat_branches:
        shapes["event"] = (len(spec.flat_branches),)
    for name, branches in spec.collections().items():
        shapes[name] = (len(branches), branches[0].length)
    return shapes


def framework_of(model: Any) -> str | None:
    """``torch``, ``keras``, ``xgboost``, ``sklearn`` or ``None``, by the model's classes."""
    modules = [c.__module__.split(".")[0] for c in type(model).__mro__]
    # Keras before torch: on the torch backend a Keras model is also a torch.nn.Module
    for module, framework in [
        ("keras", "keras"),
        ("torch", "torch"),
        ("xgboost", "xgboost"),
        ("sklearn", "sklearn"),
    ]:
        if module in modules:
            return framework
    return None


def load_model_function(path: str | Path) -> tuple[Callable[..., Any], str]:
    """The ``model`` function of a model file, and the file's SHA-256."""
    # Keras 3 runs on torch here unless told otherwise (its own default is TensorFlow)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    module, sha256 = load_user_module(path, what="model file", prefix="mlaas4hep_model")
    function = getattr(module, "model", None)
    if not callable(function):
        raise ConfigError(
            f"the model file {path} defines no function 'model'; expected "
            "def model(idim) (torch / Keras), def model(input_shapes) (grouped layout) "
            "or def model() (scikit-learn / XGBoost)"
        )
    return function, sha256


def build_user_model(path: str | Path, spec: FeatureSpec) -> UserModel:
    """Call the file's ``model`` function with what its signature asks for."""
    function, sha256 = load_model_function(path)
    required = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) > 1:
        raise ConfigError(
            f"model() in {path} takes {len(required)} arguments; expected one (idim or "
            "input_shapes) or none"
        )
    shapes = input_shapes(spec)
    if not required:
        arguments: tuple[Any, ...] = ()
    elif spec.layout == "grouped":
        arguments = (shapes,)
    else:
        arguments = (shapes["x"][0],)
    try:
        built = function(*arguments)
    except Exception as exc:
        raise ConfigError(
            f"model({', '.join(map(repr, arguments))}) in {path} failed: {describe_exception(exc)}"
        ) from exc
    framework = framework_of(built)
    if framework is None:
        raise ConfigError(
            f"model() in {path} returned {type(built).__name__}; expected a torch.nn.Module, "
            "a Keras model, or a scikit-learn / XGBoost estimator"
        )
    if framework in {"sklearn", "xgboost"} and spec.layout != "flat":
        raise ConfigError(f"a {framework} model takes the flat layout, the spec is {spec.layout}")
    if framework == "keras" and spec.layout != "flat":
        raise ConfigError("a Keras model takes the flat layout; use a torch model for 'grouped'")
    return UserModel(model=built, framework=framework, path=Path(path), sha256=sha256)
