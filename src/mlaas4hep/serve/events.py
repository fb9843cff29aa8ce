"""Raw events in, predictions out: the ``/events`` endpoints.

``POST /v2/models/{model}[/versions/{version}]/events`` and ``POST
/predict/events`` (the model named by the ``model`` query parameter or form
field, ``name`` or ``name:version``) take events as they are in NanoAOD and
score them with a model package, which carries its feature spec and
preprocessing (:class:`~mlaas4hep.predict.events.EventInputs`). The body is

* a JSON list of records, one per event: ``[{"Jet_pt": [..], "MET_pt": 41.2}, ...]``;
* a JSON object of columns: ``{"Jet_pt": [[..], [..]], "MET_pt": [..]}``;
* a multipart form whose ``file`` part is a Parquet or ROOT file (optional
  ``tree`` field: by default the spec's tree, else the file's only tree).

``GET`` on the same paths describes what the model takes: the branches events
must have, the identifier branches it copies, the tree, its labels, whether
its preprocessing selects events, and the most events one request may carry.

Limits: a JSON body is bounded by ``max_request_bytes`` and an upload by
``max_upload_bytes``; every body by ``max_batch_rows`` events; a Parquet file
or a TTree also by ``max_upload_bytes`` of decompressed data in the branches
read. Files are checked from their metadata, before any data is decompressed.

The answer has one prediction row per event given (``null`` for the events
the preprocessing's selection drops), the labels, how many events were kept
and clipped, and the spec's identifier branches (``run``, ``event``, ...).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Any

import awkward as ak
import numpy as np
import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlaas4hep.errors import MlaasError
from mlaas4hep.predict.events import EventInputs, PreparedEvents
from mlaas4hep.serve.api.tfaas import json_response
from mlaas4hep.serve.api.tfaas_rows import split_model
from mlaas4hep.serve.errors import BadRequest, PayloadTooLarge, ServeError
from mlaas4hep.serve.models import ServedModel
from mlaas4hep.serve.state import ServerState

PARQUET_MAGIC = b"PAR1"
ROOT_MAGIC = b"root"
_TREE_CLASSES = ("TTree", "ROOT::RNTuple", "ROOT::Experimental::RNTuple")


@dataclass(frozen=True)
class Limits:
    """How much one request may carry: ``events`` events and, for a file,
    ``decoded_bytes`` bytes of the branches read once decompressed."""

    events: int
    decoded_bytes: int

    def check_events(self, events: int, where: str) -> None:
        """:class:`BadRequest` when ``events`` is over the limit."""
        if events > self.events:
            raise BadRequest(
                f"{where} holds {events:,} events, more than the limit of "
                f"{self.events:,} per request"
            )

    def check_decoded(self, size: int, where: str) -> None:
        """:class:`PayloadTooLarge` when ``size`` decoded bytes are over the limit."""
        if size > self.decoded_bytes:
            raise PayloadTooLarge(
                f"the branches to read from {where} take {size:,} bytes decompressed, "
                f"more than the limit of {self.decoded_bytes:,}"
            )


def is_events_path(path: str) -> bool:
    """Whether ``path`` is one of the events endpoints (their bodies may be files)."""
    return path == "/predict/events" or (
        path.startswith("/v2/models/") and path.endswith("/events")
    )


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.mlaas
    return state


async def v2_events(request: Request) -> Response:
    """``POST /v2/models/{model}[/versions/{version}]/events``."""
    state = _state(request)
    state.authorize(request.headers.get("authorization"), "read")
    name = request.path_params["model"]
    version = request.path_params.get("version")
    return await _answer(state, request, name, version)


async def v2_events_metadata(request: Request) -> Response:
    """``GET /v2/models/{model}[/versions/{version}]/events``: what the model takes."""
    state = _state(request)
    state.authorize(request.headers.get("authorization"), "read")
    served = await state.models.get(
        request.path_params["model"], request.path_params.get("version")
    )
    event_inputs = _event_inputs(served)
    preprocessing = event_inputs.preprocessing
    return json_response(
        {
            "model": served.name,
            "version": served.version.version,
            "labels": served.backend.labels,
            "branches": event_inputs.branches,
            "identifiers": list(event_inputs.spec.identifiers),
            "tree": event_inputs.spec.tree,
            "selection": preprocessing is not None and "selection" in preprocessing.functions,
            "max_events": state.settings.max_batch_rows,
        }
    )


def _event_inputs(served: ServedModel) -> EventInputs:
    event_inputs = served.backend.event_inputs
    if event_inputs is None:
        raise BadRequest(f"model {served.name!r} has no feature spec; send tensors to /infer")
    return event_inputs


async def predict_events(request: Request) -> Response:
    """``POST /predict/events?model=name[:version]`` (or a ``model`` form field)."""
    state = _state(request)
    state.authorize(request.headers.get("authorization"), "read")
    name, version = split_model(request.query_params.get("model"))
    return await _answer(state, request, name, version)


async def _answer(
    state: ServerState, request: Request, name: str | None, version: str | None
) -> Response:
    content_type = request.headers.get("content-type", "")
    tree: str | None = None
    data: bytes
    upload = False
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        try:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise BadRequest("the form has no 'file' part (a ROOT or Parquet file)")
            tree = _text(form.get("tree"))
            if name is None:
                name, version = split_model(_text(form.get("model")))
            data = await part.read()
        finally:
            await form.close()
        upload = True
    else:
        data = await request.body()
    served = await state.models.get(name, version)
    event_inputs = _event_inputs(served)
    settings = state.settings
    limits = Limits(events=settings.max_batch_rows, decoded_bytes=settings.max_upload_bytes)
    prepared = await asyncio.to_thread(_prepare, event_inputs, data, upload, tree, limits)
    output = served.backend.outputs[0]
    if prepared.rows:
        outputs = await state.infer(served, prepared.inputs)
        values = np.asarray(outputs[output.name], dtype=np.float32)
    else:
        width = [d if d > 0 else 1 for d in output.shape[1:]]
        values = np.zeros((0, *width), dtype=np.float32)
    return json_response(_document(served, prepared, values))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raise BadRequest(f"form field {value.filename!r} must be text, not a file")
    return str(value) or None


def _prepare(
    event_inputs: EventInputs, data: bytes, upload: bool, tree: str | None, limits: Limits
) -> PreparedEvents:
    """Parse the body and build the model's inputs (in a worker thread)."""
    if upload:
        events, where = _file_events(event_inputs, data, tree, limits)
    else:
        events, where = _json_events(data, limits), "the events"
    try:
        return event_inputs.prepare(events, where=where)
    except ServeError:
        raise
    except MlaasError as error:
        raise BadRequest(str(error)) from None


def _json_events(data: bytes, limits: Limits) -> ak.Array:
    """Events from a JSON list of records or a JSON object of columns."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    try:
        if isinstance(document, list):
            if not all(isinstance(item, dict) for item in document):
                raise BadRequest("a list of events must hold one JSON object per event")
            limits.check_events(len(document), "the body")
            return ak.from_iter(document)
        if isinstance(document, dict):
            bad = [key for key, value in document.items() if not isinstance(value, list)]
            if bad:
                raise BadRequest(f"columns {bad} must be lists, one entry per event")
            lengths = {key: len(value) for key, value in document.items()}
            if len(set(lengths.values())) > 1:
                raise BadRequest(f"the columns have different lengths: {lengths}")
            if not lengths:
                raise BadRequest("the body holds no columns")
            limits.check_events(next(iter(lengths.values())), "the body")
            columns = {key: ak.from_iter(value) for key, value in document.items()}
            return ak.zip(columns, depth_limit=1)
    except (ValueError, TypeError) as error:
        if isinstance(error, BadRequest):
            raise
        raise BadRequest(f"the events cannot be read: {error}") from None
    raise BadRequest("the body must be a JSON list of events (objects) or a JSON object of columns")


def _file_events(
    event_inputs: EventInputs, data: bytes, tree: str | None, limits: Limits
) -> tuple[ak.Array, str]:
    """Events from an uploaded Parquet or ROOT file: only the branches the model needs."""
    wanted = [*event_inputs.branches, *event_inputs.spec.identifiers]
    if data[:4] == PARQUET_MAGIC:
        return _parquet_events(data, wanted, limits), "the Parquet file"
    if data[:4] == ROOT_MAGIC:
        return _root_events(data, wanted, tree or event_inputs.spec.tree, limits)
    raise BadRequest("the uploaded file is neither a Parquet nor a ROOT file")


def _parquet_events(data: bytes, wanted: list[str], limits: Limits) -> ak.Array:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]  # noqa: PLC0415 - on use

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        present = set(parquet.schema_arrow.names)
        columns = [name for name in dict.fromkeys(wanted) if name in present]
        metadata = parquet.metadata
    except Exception as error:  # noqa: BLE001 - any unreadable file is the sender's
        raise BadRequest(f"the Parquet file cannot be read: {error}") from None
    limits.check_events(metadata.num_rows, "the Parquet file")
    read = set(columns or present)
    limits.check_decoded(_parquet_decoded_bytes(metadata, read), "the Parquet file")
    try:
        events = ak.from_arrow(parquet.read(columns=columns or None))
    except Exception as error:  # noqa: BLE001 - any unreadable file is the sender's
        raise BadRequest(f"the Parquet file cannot be read: {error}") from None
    return ak.Array(events)


_PARQUET_WIDTHS = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def _parquet_decoded_bytes(metadata: Any, columns: set[str]) -> int:
    """The bytes the top-level ``columns`` take once read into memory.

    Counted from the number of values, not from the column chunks' sizes:
    those are measured after dictionary and run-length encoding, which can
    shrink a million zeros to a few bytes.
    """
    total = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema.split(".")[0] not in columns:
                continue
            width = _PARQUET_WIDTHS.get(chunk.physical_type)
            total += chunk.total_uncompressed_size if width is None else chunk.num_values * width
    return int(total)


def _root_events(
    data: bytes, wanted: list[str], tree: str | None, limits: Limits
) -> tuple[ak.Array, str]:
    import uproot  # noqa: PLC0415 - imported on use: slow to import

    from mlaas4hep.data.rootfile import read_tree  # noqa: PLC0415 - imports uproot

    try:
        file = uproot.open(io.BytesIO(data))
        classes = file.classnames(cycle=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the sender's
        raise BadRequest(f"the ROOT file cannot be read: {error}") from None
    trees = sorted({key for key, cls in classes.items() if cls in _TREE_CLASSES})
    if tree is None:
        if len(trees) != 1:
            raise BadRequest(f"name the tree to read (form field 'tree'): the file holds {trees}")
        tree = trees[0]
    if tree not in trees:
        raise BadRequest(f"the ROOT file has no tree {tree!r}; it holds {trees}")
    where = f"tree {tree!r}"
    try:
        # Only the metadata of the branches the model reads (NanoAOD has ~1,500).
        source = read_tree(file, tree, lambda _names: wanted)
        present = set(source.keys())
        branches = [name for name in dict.fromkeys(wanted) if name in present]
        entries = int(source.num_entries)
        # TTree branches know their decompressed size; RNTuple fields do not
        decoded = sum(int(getattr(source[b], "uncompressed_bytes", 0) or 0) for b in branches)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the sender's
        raise BadRequest(f"{where} of the ROOT file cannot be read: {error}") from None
    limits.check_events(entries, where)
    limits.check_decoded(decoded, where)
    try:
        events = source.arrays(branches, library="ak")
    except Exception as error:  # noqa: BLE001 - any unreadable file is the sender's
        raise BadRequest(f"{where} of the ROOT file cannot be read: {error}") from None
    return events, where


def _document(served: ServedModel, prepared: PreparedEvents, values: np.ndarray) -> dict[str, Any]:
    rows: list[Any] = prepared.scatter(values.reshape(values.shape[0], -1)).tolist()
    if prepared.selected is not None:
        kept = prepared.selected.tolist()
        rows = [row if keep else None for row, keep in zip(rows, kept, strict=True)]
    document: dict[str, Any] = {
        "model": served.name,
        "version": served.version.version,
        "labels": served.backend.labels,
        "events": prepared.events,
        "selected": prepared.rows,
        "clipped": prepared.clipped,
        "predictions": rows,
    }
    for name, values_ in prepared.identifiers.items():
        if name not in document:
            document[name] = values_.tolist()
    return document


def routes() -> list[Route]:
    """The events endpoints."""
    return [
        Route("/v2/models/{model}/events", v2_events, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/events", v2_events, methods=["POST"]),
        Route("/v2/models/{model}/events", v2_events_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/events", v2_events_metadata, methods=["GET"]),
        Route("/predict/events", predict_events, methods=["POST"]),
    ]
