"""Clients of the TFaaS API of ``mlaas4hep serve`` (and of TFaaS itself).

:class:`Client` (blocking) and :class:`AsyncClient` (``asyncio``) have the same
methods; each keeps one HTTP connection pool open, so use them as context
managers or close them. Both build their requests with the same functions
below and differ only in how they send them.

Every failure is an :class:`~mlaas4hep.errors.MlaasError`:

* :class:`ServerError`: the server answered with an error status (4xx/5xx),
  or with something that is not the answer the endpoint promises;
* :class:`ServerUnreachable`: no answer (connection refused, DNS, TLS, timeout);
* :class:`~mlaas4hep.errors.ConfigError`: arguments that cannot make a valid
  request (values that are not numbers, a model that is not a file, ...);
* :class:`~mlaas4hep.errors.DataError`: a local file that cannot be read.

Files are read into memory before they are sent: the server holds a whole
upload in memory too, and a request in memory can be sent again.
"""

from __future__ import annotations

import base64 as b64
import io
import json
import ssl
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast
from urllib.parse import quote

import httpx
import numpy as np
import orjson
from google.protobuf.message import DecodeError

from mlaas4hep.errors import ConfigError, DataError, MlaasError
from mlaas4hep.serve.tfaas_proto import Predictions, Row

DEFAULT_URL = "http://localhost:8083"
"""Where ``mlaas4hep serve`` (and TFaaS) listen by default."""

StrPath = str | PathLike[str]
"""A file system path."""

T = TypeVar("T")

_GZIP = b"\x1f\x8b"
_PROTOBUF = "application/octet-stream"
_IMAGE_TYPES = {b"\x89PNG": "image/png", b"\xff\xd8": "image/jpeg"}


class ServerError(MlaasError):
    """The server refused a request (4xx/5xx) or answered something unusable.

    ``status`` is the HTTP status code and ``message`` the server's reason
    (its JSON ``"error"``, else the start of the body); ``request_id`` is the
    server's ``X-Request-Id`` for the request, to find it in the server log.
    """

    def __init__(self, status: int, message: str, *, request_id: str | None = None) -> None:
        self.status = status
        self.message = message
        self.request_id = request_id
        where = f" (request id {request_id})" if request_id and status >= 500 else ""
        one_line = " ".join(message.split())
        super().__init__(f"the server answered {status}: {one_line}{where}")


class ServerUnreachable(MlaasError, ConnectionError):
    """The server could not be reached or did not answer in time."""


# -- requests: what to send and how to read the answer -----------------------


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request and the function that turns its (successful) response into a result."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    content: bytes | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _predict_call(values: Any, keys: Sequence[str] | None, model: str | None) -> _Call[np.ndarray]:
    rows = _values(values)
    body: dict[str, Any] = {"values": rows}
    if keys is not None:
        body["keys"] = _keys(keys, rows.shape[-1])
    if model:
        body["model"] = model
    return _Call(
        "POST",
        "/json",
        _array,
        content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        headers={"Content-Type": "application/json"},
    )


def _proto_call(
    values: Sequence[float], keys: Sequence[str] | None, model: str | None
) -> _Call[list[tuple[str, float]]]:
    row = _values(values)
    if row.ndim != 1:
        raise ConfigError("predict_proto sends one row: values must be a flat list of numbers")
    message = Row(
        key=[] if keys is None else _keys(keys, len(row)), value=row.tolist(), model=model or ""
    )
    return _Call(
        "POST",
        "/proto",
        _predictions,
        content=bytes(message.SerializeToString()),
        headers={"Content-Type": _PROTOBUF, "Accept": _PROTOBUF},
    )


def _image_call(image: StrPath | bytes, model: str) -> _Call[dict[str, Any]]:
    if isinstance(image, bytes):
        data, filename = image, "image"
    else:
        data, filename = _read(image), Path(image).name
    kind = next(
        (kind for magic, kind in _IMAGE_TYPES.items() if data.startswith(magic)),
        "application/octet-stream",
    )
    return _Call(
        "POST",
        "/image",
        _json_object,
        data={"model": model},
        files={"image": (filename, data, kind)},
    )


def _upload_call(
    name: str,
    model: StrPath,
    params: StrPath | dict[str, Any] | None,
    labels: StrPath | Sequence[str] | None,
    encode: bool,
) -> _Call[dict[str, Any]]:
    path = Path(model)
    if path.is_dir():
        raise ConfigError(
            f"the model {path} is a directory: upload it with upload_bundle (or --bundle)"
        )
    content = _read(path)
    headers: dict[str, str] = {}
    if encode:
        content = b64.b64encode(content)
        headers["Content-Encoding"] = "base64"
    files = {"model": (path.name, content, "application/octet-stream")}
    if isinstance(params, dict):
        files["params"] = ("params.json", orjson.dumps(params), "application/json")
    elif params is not None:
        files["params"] = ("params.json", _read(params), "application/json")
    if isinstance(labels, str | PathLike):
        files["labels"] = ("labels.txt", _read(labels), "text/plain")
    elif labels is not None:
        text = "".join(f"{label}\n" for label in labels)
        files["labels"] = ("labels.txt", text.encode(), "text/plain")
    return _Call("POST", "/upload", _json_object, data={"name": name}, files=files, headers=headers)


def _bundle_call(bundle: StrPath) -> _Call[dict[str, Any]]:
    path = Path(bundle)
    content = _tar_gz(path, path.resolve().name) if path.is_dir() else _read(path)
    return _archive_call(content)


def _package_call(package_dir: StrPath, name: str | None) -> _Call[dict[str, Any]]:
    path = Path(package_dir)
    metadata_path = path / "metadata.json"
    if not metadata_path.is_file():
        raise ConfigError(f"{path} is not a model package: it has no metadata.json")
    if name is None:
        try:
            metadata = json.loads(metadata_path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(
                f"cannot read {metadata_path}: {error}", path=str(metadata_path)
            ) from None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{metadata_path} names no model: give the name to upload it as")
    return _archive_call(_tar_gz(path, name))


@dataclass(frozen=True)
class EventPredictions:
    """The answer of the ``/events`` endpoints (:meth:`Client.predict_events`).

    ``probabilities`` has one row per event sent (float32, ``[N, K]``), NaN
    rows for the events the model's preprocessing selection dropped;
    ``selected`` counts the events kept, ``kept`` marks them (one bool per
    event); ``clipped`` counts the events whose collection was longer than the
    model takes, by collection;
    ``identifiers`` the spec's identifier branches (``run``, ``event``, ...)
    the events carried, one value per event.
    """

    model: str
    version: int
    probabilities: np.ndarray
    labels: list[str] | None
    selected: int
    kept: np.ndarray
    clipped: dict[str, int]
    identifiers: dict[str, np.ndarray]

    @property
    def events(self) -> int:
        """How many events were sent."""
        return int(self.probabilities.shape[0])


_EVENTS_FIELDS = frozenset(
    {"model", "version", "labels", "events", "selected", "clipped", "predictions"}
)


def _events_path(model: str, version: int | str | None) -> str:
    if not model:
        raise ConfigError("the events endpoints need the model to use")
    path = f"/v2/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{quote(str(version), safe='')}"
    return path + "/events"


def _events_call(
    events: Any, model: str, version: int | str | None, tree: str | None
) -> _Call[EventPredictions]:
    path = _events_path(model, version)
    if isinstance(events, str | PathLike):
        file = Path(events)
        data = _read(file)
        kind = "application/vnd.apache.parquet" if data[:4] == b"PAR1" else _PROTOBUF
        form = {"tree": tree} if tree else None
        return _Call(
            "POST", path, _event_predictions, data=form, files={"file": (file.name, data, kind)}
        )
    if type(events).__module__.partition(".")[0] == "awkward":
        import awkward as ak  # noqa: PLC0415 - only for awkward arrays, which are loaded

        try:
            import pyarrow.parquet as pq  # type: ignore[import-untyped]  # noqa: PLC0415
        except ImportError:
            raise ConfigError("sending awkward arrays needs pyarrow: pip install pyarrow") from None

        buffer = io.BytesIO()
        try:
            pq.write_table(ak.to_arrow_table(events), buffer)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"the events cannot be written as Parquet: {error}") from None
        files = {"file": ("events.parquet", buffer.getvalue(), "application/vnd.apache.parquet")}
        return _Call("POST", path, _event_predictions, files=files)
    if isinstance(events, dict | list):
        try:
            content = orjson.dumps(events, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as error:
            raise ConfigError(f"the events cannot be sent as JSON: {error}") from None
        return _Call(
            "POST",
            path,
            _event_predictions,
            content=content,
            headers={"Content-Type": "application/json"},
        )
    raise ConfigError(
        "events must be a list of records, a dict of columns, an awkward Array or the "
        f"path of a ROOT or Parquet file, not {type(events).__name__}"
    )


def _events_metadata_call(model: str, version: int | str | None) -> _Call[dict[str, Any]]:
    return _Call("GET", _events_path(model, version), _json_object)


def _event_predictions(response: httpx.Response) -> EventPredictions:
    answer = _json_object(response)
    rows = answer.get("predictions")
    if not isinstance(rows, list):
        raise _unexpected(response, "event predictions")
    labels = answer.get("labels")
    width = next((len(row) for row in rows if row is not None), len(labels or ()))
    given = [row for row in rows if row is not None]
    kept = np.fromiter((row is not None for row in rows), bool, len(rows))
    probabilities = np.full((len(rows), width), np.nan, dtype=np.float32)
    if given:
        probabilities[kept] = np.asarray(given, dtype=np.float32)
    identifiers = {
        key: np.asarray(value)
        for key, value in answer.items()
        if key not in _EVENTS_FIELDS and isinstance(value, list)
    }
    return EventPredictions(
        model=str(answer.get("model")),
        version=int(answer.get("version") or 0),
        probabilities=probabilities,
        labels=None if labels is None else [str(label) for label in labels],
        selected=int(answer.get("selected") or 0),
        kept=kept,
        clipped={str(k): int(v) for k, v in (answer.get("clipped") or {}).items()},
        identifiers=identifiers,
    )


def _archive_call(content: bytes) -> _Call[dict[str, Any]]:
    headers = {"Content-Type": "application/octet-stream"}
    if content.startswith(_GZIP):  # what TFaaS's client sends with a .tar.gz bundle
        headers["Content-Encoding"] = "gzip"
    return _Call("POST", "/upload", _json_object, content=content, headers=headers)


def _delete_call(model: str, version: int | None) -> _Call[dict[str, Any]]:
    path = f"/delete/{quote(model, safe='')}"
    if version is not None:
        path += f"/{int(version)}"
    return _Call("DELETE", path, _json_object)


def _params_call(model: str | None) -> _Call[dict[str, Any]]:
    path = "/params" if model is None else f"/params/{quote(model, safe='')}"
    return _Call("GET", path, _json_object)


def _set_default_call(model: str) -> _Call[dict[str, Any]]:
    return _Call(
        "POST",
        "/params",
        _json_object,
        content=orjson.dumps({"name": model}),
        headers={"Content-Type": "application/json"},
    )


def _models_call() -> _Call[list[dict[str, Any]]]:
    return _Call("GET", "/models", _json_list)


def _status_call() -> _Call[dict[str, Any]]:
    return _Call("GET", "/status", _json_object)


def _metrics_call() -> _Call[str]:
    return _Call("GET", "/metrics", _text)


# -- arguments ----------------------------------------------------------------


def _values(values: Any) -> np.ndarray:
    """``values`` as a C-contiguous, native-endian array of one row (1-D) or rows (2-D)."""
    try:
        array = np.asarray(values)
    except ValueError:
        raise ConfigError("the rows of values have different lengths") from None
    if array.dtype.kind not in "iuf":
        raise ConfigError(f"values must be numbers, got {array.dtype}")
    if array.ndim not in (1, 2) or array.size == 0:
        raise ConfigError(
            "values must be one row [v, ...] or rows [[v, ...], ...] of numbers, "
            f"not an array shaped {list(array.shape)}"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ConfigError("values must be finite numbers: JSON has no NaN or infinity")
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))  # as orjson needs


def _keys(keys: Sequence[str], width: int) -> list[str]:
    if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise ConfigError("keys must be a list of strings")
    if len(keys) != width:
        raise ConfigError(f"{len(keys)} keys for rows of {width} values")
    return list(keys)


def _read(path: StrPath) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}", path=str(path)) from None


def _tar_gz(directory: Path, top: str) -> bytes:
    """``directory`` as a gzipped tar archive in memory, its contents under ``top/``.

    Links are followed (the server refuses archives with links); owners are
    not recorded.
    """
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory", path=str(directory))

    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w:gz", dereference=True) as tar:
            tar.add(directory, arcname=top, filter=anonymous)
    except OSError as error:
        raise DataError(f"cannot pack {directory}: {error}", path=str(directory)) from None
    return buffer.getvalue()


# -- answers ------------------------------------------------------------------


def _check(response: httpx.Response) -> None:
    """Raise :class:`ServerError` for an error status."""
    if response.status_code < 400:
        return
    message = ""
    try:
        body = orjson.loads(response.content)
        if isinstance(body, dict) and body.get("error"):
            message = str(body["error"])
    except orjson.JSONDecodeError:
        pass
    if not message:
        message = " ".join(response.text.split())[:300] or response.reason_phrase
    raise ServerError(
        response.status_code, message, request_id=response.headers.get("x-request-id")
    )


def _unexpected(response: httpx.Response, expected: str) -> ServerError:
    kind = response.headers.get("content-type", "no content type")
    return ServerError(
        response.status_code,
        f"expected {expected} from {response.request.url.path}, got {kind}",
        request_id=response.headers.get("x-request-id"),
    )


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise _unexpected(response, "JSON") from None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    value = _json(response)
    if not isinstance(value, dict):
        raise _unexpected(response, "a JSON object")
    return value


def _json_list(response: httpx.Response) -> list[dict[str, Any]]:
    value = _json(response)
    if not isinstance(value, list):
        raise _unexpected(response, "a JSON list")
    return cast("list[dict[str, Any]]", value)


def _array(response: httpx.Response) -> np.ndarray:
    value = _json(response)
    try:
        array = np.asarray(value)
    except ValueError:
        raise _unexpected(response, "rows of numbers") from None
    if array.dtype.kind not in "biuf":
        raise _unexpected(response, "rows of numbers")
    return array


def _predictions(response: httpx.Response) -> list[tuple[str, float]]:
    try:
        message = Predictions.FromString(response.content)
    except DecodeError:
        raise _unexpected(response, "a tfaaspb.Predictions message") from None
    return [(c.label, float(c.probability)) for c in message.prediction]


def _text(response: httpx.Response) -> str:
    return response.text


# -- the clients --------------------------------------------------------------


def _options(url: str, token: str | None, timeout: float, verify: bool | str) -> dict[str, Any]:
    """Keyword arguments of ``httpx.Client`` / ``httpx.AsyncClient``."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the server URL must start with http:// or https://, not {url!r}")
    headers = {"User-Agent": "mlaas4hep-client"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    context: bool | ssl.SSLContext = verify if isinstance(verify, bool) else _ca(verify)
    return {
        "base_url": url.rstrip("/"),
        "headers": headers,
        "timeout": timeout,
        "verify": context,
    }


def _ca(path: str) -> ssl.SSLContext:
    """An SSL context trusting the CA certificates in a file or directory."""
    try:
        if Path(path).is_dir():
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as error:
        raise DataError(f"cannot load CA certificates from {path}: {error}", path=path) from None


def _request(call: _Call[Any]) -> dict[str, Any]:
    """Keyword arguments of ``httpx.Client.request`` for ``call``."""
    return {
        "content": call.content,
        "data": call.data,
        "files": call.files,
        "headers": call.headers,
    }


def _unreachable(url: str, error: httpx.TransportError) -> ServerUnreachable:
    reason = str(error) or type(error).__name__
    if isinstance(error, httpx.TimeoutException):
        reason = f"no answer in time ({reason})"
    return ServerUnreachable(f"cannot reach {url}: {reason}")


class Client:
    """A blocking client of the TFaaS API of ``mlaas4hep serve``.

    ``url`` is the server's base URL, ``token`` a bearer token (servers
    started with ``--auth-tokens``), ``timeout`` the seconds to wait for any
    one step of a request, and ``verify`` whether to check the server's TLS
    certificate: True, False or the path of a CA bundle file or directory.
    The connection is kept open between calls; close it with :meth:`close`
    or use the client as a context manager.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        verify: bool | str = True,
    ) -> None:
        self._http = httpx.Client(**_options(url, token, timeout, verify))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        url = str(self._http.base_url).rstrip("/") + call.path
        try:
            response = self._http.request(call.method, url, **_request(call))
        except httpx.TransportError as error:
            raise _unreachable(url, error) from error
        _check(response)
        return call.parse(response)

    def predict(
        self, values: Any, keys: Sequence[str] | None = None, model: str | None = None
    ) -> np.ndarray:
        """The model's output for one row (1-D ``values``) or for rows (2-D), via ``/json``.

        ``values`` is a list or array of numbers; ``keys`` names its columns
        (the server puts them in the model's order; without keys they must
        be in that order already); ``model`` is ``"name"`` or
        ``"name:version"`` (default: the server's default model). Returns a
        1-D array for one row, a 2-D array (one row per input row) for rows.
        """
        return self._send(_predict_call(values, keys, model))

    def predict_proto(
        self, values: Sequence[float], keys: Sequence[str] | None = None, model: str | None = None
    ) -> list[tuple[str, float]]:
        """The ``(label, probability)`` pairs for one row, in output order, via ``/proto``.

        A list rather than a dict because labels may repeat or be empty (a
        model without labels); ``dict(...)`` it when they are unique. Values
        travel as 32-bit floats (``tfaaspb.Row``).
        """
        return self._send(_proto_call(values, keys, model))

    def predict_image(self, image: StrPath | bytes, model: str) -> dict[str, Any]:
        """Classify a PNG or JPEG image (a path or its bytes) with ``model``, via ``/image``.

        Returns ``{"filename", "labels": [{"label", "probability"}, ...]}``,
        the five most probable labels first.
        """
        return self._send(_image_call(image, model))

    def predict_events(
        self,
        events: Any,
        *,
        model: str,
        version: int | str | None = None,
        tree: str | None = None,
    ) -> EventPredictions:
        """Score raw events with a model package, via ``/v2/models/{model}/events``.

        ``events`` is a list of records (one dict per event, jagged branches
        as lists), a dict of columns, an awkward record Array (sent as
        Parquet) or the path of a ROOT or Parquet file (``tree``: the tree
        to read from a ROOT file; default the model's, else the only one).
        The server applies the model's feature spec and preprocessing.
        """
        return self._send(_events_call(events, model, version, tree))

    def events_metadata(self, model: str, version: int | str | None = None) -> dict[str, Any]:
        """What raw events ``model`` takes: ``branches``, ``identifiers``, ``tree``,
        ``labels``, ``selection`` (whether its preprocessing drops events) and
        ``max_events`` (the most events one :meth:`predict_events` may send)."""
        return self._send(_events_metadata_call(model, version))

    def upload(
        self,
        name: str,
        model: StrPath,
        params: StrPath | dict[str, Any] | None = None,
        labels: StrPath | Sequence[str] | None = None,
        *,
        base64: bool = False,
    ) -> dict[str, Any]:
        """Upload a model file as a new version of model ``name`` (a multipart form).

        ``model`` is the model file (its file name is kept: ``model.onnx``,
        ...); ``params`` a params.json path or its content as a dict;
        ``labels`` a labels.txt path (a ``str`` is a path) or the labels in
        order. ``base64`` sends the model base64-encoded, as TFaaS's client
        can. Returns ``{"model", "version", "checksum", "serving_version"}``.
        """
        return self._send(_upload_call(name, model, params, labels, base64))

    def upload_bundle(self, bundle: StrPath) -> dict[str, Any]:
        """Upload a TFaaS bundle: a ``.tar.gz`` (or tar, zip) whose top directory is
        the model name, or a directory, sent as such an archive named after the
        directory. Returns as :meth:`upload`."""
        return self._send(_bundle_call(bundle))

    def upload_package(self, package_dir: StrPath, name: str | None = None) -> dict[str, Any]:
        """Upload a model package (the ``model`` directory ``mlaas4hep train`` writes)
        as model ``name`` (default: the name in its metadata.json). Returns as
        :meth:`upload`."""
        return self._send(_package_call(package_dir, name))

    def delete(self, model: str, version: int | None = None) -> dict[str, Any]:
        """Delete a model (every version) or one version; returns ``{"model", "deleted"}``."""
        return self._send(_delete_call(model, version))

    def models(self) -> list[dict[str, Any]]:
        """Every model of the server with its params, versions and state."""
        return self._send(_models_call())

    def params(self, model: str | None = None) -> dict[str, Any]:
        """The TFaaS params of ``model`` (default: of the server's default model)."""
        return self._send(_params_call(model))

    def set_default(self, model: str) -> dict[str, Any]:
        """Make ``model`` the server's default model; returns its params."""
        return self._send(_set_default_call(model))

    def status(self) -> dict[str, Any]:
        """The server's status: uptime, resources, request counters, per-model stats."""
        return self._send(_status_call())

    def metrics(self) -> str:
        """The server's metrics in the Prometheus text format."""
        return self._send(_metrics_call())


class AsyncClient:
    """The ``asyncio`` twin of :class:`Client`: the same arguments and methods, awaited.

    Calls may run concurrently (``asyncio.gather``) over the client's
    connection pool. Close it with :meth:`aclose` or ``async with``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        verify: bool | str = True,
    ) -> None:
        self._http = httpx.AsyncClient(**_options(url, token, timeout, verify))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        url = str(self._http.base_url).rstrip("/") + call.path
        try:
            response = await self._http.request(call.method, url, **_request(call))
        except httpx.TransportError as error:
            raise _unreachable(url, error) from error
        _check(response)
        return call.parse(response)

    async def predict(
        self, values: Any, keys: Sequence[str] | None = None, model: str | None = None
    ) -> np.ndarray:
        """As :meth:`Client.predict`."""
        return await self._send(_predict_call(values, keys, model))

    async def predict_proto(
        self, values: Sequence[float], keys: Sequence[str] | None = None, model: str | None = None
    ) -> list[tuple[str, float]]:
        """As :meth:`Client.predict_proto`."""
        return await self._send(_proto_call(values, keys, model))

    async def predict_image(self, image: StrPath | bytes, model: str) -> dict[str, Any]:
        """As :meth:`Client.predict_image`."""
        return await self._send(_image_call(image, model))

    async def predict_events(
        self,
        events: Any,
        *,
        model: str,
        version: int | str | None = None,
        tree: str | None = None,
    ) -> EventPredictions:
        """As :meth:`Client.predict_events`."""
        return await self._send(_events_call(events, model, version, tree))

    async def events_metadata(self, model: str, version: int | str | None = None) -> dict[str, Any]:
        """As :meth:`Client.events_metadata`."""
        return await self._send(_events_metadata_call(model, version))

    async def upload(
        self,
        name: str,
        model: StrPath,
        params: StrPath | dict[str, Any] | None = None,
        labels: StrPath | Sequence[str] | None = None,
        *,
        base64: bool = False,
    ) -> dict[str, Any]:
        """As :meth:`Client.upload`."""
        return await self._send(_upload_call(name, model, params, labels, base64))

    async def upload_bundle(self, bundle: StrPath) -> dict[str, Any]:
        """As :meth:`Client.upload_bundle`."""
        return await self._send(_bundle_call(bundle))

    async def upload_package(self, package_dir: StrPath, name: str | None = None) -> dict[str, Any]:
        """As :meth:`Client.upload_package`."""
        return await self._send(_package_call(package_dir, name))

    async def delete(self, model: str, version: int | None = None) -> dict[str, Any]:
        """As :meth:`Client.delete`."""
        return await self._send(_delete_call(model, version))

    async def models(self) -> list[dict[str, Any]]:
        """As :meth:`Client.models`."""
        return await self._send(_models_call())

    async def params(self, model: str | None = None) -> dict[str, Any]:
        """As :meth:`Client.params`."""
        return await self._send(_params_call(model))

    async def set_default(self, model: str) -> dict[str, Any]:
        """As :meth:`Client.set_default`."""
        return await self._send(_set_default_call(model))

    async def status(self) -> dict[str, Any]:
        """As :meth:`Client.status`."""
        return await self._send(_status_call())

    async def metrics(self) -> str:
        """As :meth:`Client.metrics`."""
        return await self._send(_metrics_call())
