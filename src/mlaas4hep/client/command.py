"""``mlaas4hep client``: TFaaS's command-line client, on :class:`~mlaas4hep.client.Client`.

One action per call, with the flags of TFaaS's client::

    --upload upload.json    {"model": "/path/model.onnx", "labels": "/path/labels.txt",
                             "name": "myModel", "params": "/path/params.json"}
                            (relative paths are relative to upload.json's directory)
    --bundle PATH           a .tar.gz bundle, a bundle directory (named as the model),
                            or a model package directory (named by its metadata.json)
    --predict input.json    {"keys": [...], "values": [...] or [[...], ...], "model": "name"}
                            ("name" instead of "model" as TFaaS's client wrote; --model wins)
    --image FILE --model NAME
    --delete NAME[:VERSION]
    --models
    --params NAME

The server's answer is printed as JSON on stdout. Every failure (the server's
error, a server that cannot be reached, a bad input file) is raised as an
:class:`~mlaas4hep.errors.MlaasError`, which the CLI prints as one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlaas4hep.client.library import Client
from mlaas4hep.errors import ConfigError, DataError

ACTIONS = ("--upload", "--bundle", "--predict", "--image", "--delete", "--models", "--params")
"""The flags that choose what to do; exactly one per call."""


def run(
    url: str,
    token: str | None,
    *,
    upload: Path | None = None,
    bundle: Path | None = None,
    predict: Path | None = None,
    image: Path | None = None,
    model: str | None = None,
    delete: str | None = None,
    models: bool = False,
    params: str | None = None,
) -> None:
    """Do the one action asked for and print the server's answer as JSON on stdout.

    Local files are read and checked before the server is contacted.
    """
    actions: dict[str, Callable[[Client], Any]] = {}
    if upload is not None:
        arguments = _upload_arguments(upload)
        actions["--upload"] = lambda client: client.upload(**arguments)
    if bundle is not None:
        if (bundle / "metadata.json").is_file():
            actions["--bundle"] = lambda client: client.upload_package(bundle)
        else:
            actions["--bundle"] = lambda client: client.upload_bundle(bundle)
    if predict is not None:
        row = _predict_arguments(predict, model)
        actions["--predict"] = lambda client: client.predict(**row).tolist()
    if image is not None:
        if not model:
            raise ConfigError("--image needs --model NAME")
        actions["--image"] = lambda client: client.predict_image(image, model)
    if delete is not None:
        name, version = _model_version(delete)
        actions["--delete"] = lambda client: client.delete(name, version)
    if models:
        actions["--models"] = lambda client: client.models()
    if params is not None:
        actions["--params"] = lambda client: client.params(params)

    if len(actions) != 1:
        given = f" (given: {', '.join(actions)})" if actions else ""
        raise ConfigError(f"give exactly one of {', '.join(ACTIONS)}{given}")
    if model is not None and predict is None and image is None:
        raise ConfigError("--model goes with --predict or --image")
    (action,) = actions.values()
    with Client(url, token) as client:
        answer = action(client)
    sys.stdout.write(json.dumps(answer, indent=2) + "\n")


def _json_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}", path=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a JSON text file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None


def _upload_arguments(path: Path) -> dict[str, Any]:
    """The arguments of :meth:`Client.upload` from TFaaS's upload.json."""
    spec = _json_file(path)
    example = '{"model": "model.onnx", "name": "myModel", "labels": ..., "params": ...}'
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} must hold a JSON object like {example}")
    name, model = spec.get("name"), spec.get("model")
    if not isinstance(name, str) or not name:
        raise ConfigError(f'{path} names no model: give "name" as in {example}')
    if not isinstance(model, str) or not model:
        raise ConfigError(f'{path} has no model file: give "model" as in {example}')
    here = path.parent

    def local(key: str, kinds: tuple[type, ...], what: str) -> Any:
        value = spec.get(key) or None
        if value is not None and not isinstance(value, (str, *kinds)):
            raise ConfigError(f'"{key}" in {path} must be {what}')
        return here / Path(value).expanduser() if isinstance(value, str) else value

    return {
        "name": name,
        "model": here / Path(model).expanduser(),
        "params": local("params", (dict,), "the path of params.json or an object"),
        "labels": local("labels", (list,), "the path of labels.txt or a list of labels"),
    }


def _predict_arguments(path: Path, model: str | None) -> dict[str, Any]:
    """The arguments of :meth:`Client.predict` from TFaaS's input.json."""
    spec = _json_file(path)
    if not isinstance(spec, dict) or "values" not in spec:
        raise ConfigError(
            f'{path} must hold a JSON object like {{"keys": [...], "values": [...], "model": ...}}'
        )
    chosen = model or spec.get("model") or spec.get("name")
    if chosen is not None and not isinstance(chosen, str):
        raise ConfigError(f'"model" in {path} must be a model name')
    return {"values": spec["values"], "keys": spec.get("keys"), "model": chosen}


def _model_version(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION`` (a positive integer)."""
    name, _, version = text.partition(":")
    if not name or (version and (not version.isdigit() or int(version) < 1)):
        raise ConfigError(
            f"--delete expects NAME or NAME:VERSION (a positive integer), not {text!r}"
        )
    return name, int(version) if version else None
