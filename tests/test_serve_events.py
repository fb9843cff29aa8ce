"""The ``/events`` endpoints: raw NanoAOD events in, predictions out.

One real server and one model package trained with the real workflow (with a
selection and a derived variable) per module. Every prediction is compared
with an independent computation: the real file read with uproot, the
preprocessing applied by hand, the vectors built by ``VectorTransform`` and
scored by ONNX Runtime.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import httpx
import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import uproot
from conftest import shared_file
from serving import running_server

from mlaas4hep.client import Client, ServerError
from mlaas4hep.client.library import EventPredictions

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BRANCHES = "Jet_pt,Jet_eta,Jet_btagDeepB,MET_pt,nJet,Muon_pt"
NEEDED = ["Jet_pt", "Jet_eta", "Jet_btagDeepB", "MET_pt", "nJet", "Muon_pt"]
PREPROCESSING = """
import awkward as ak

def selection(events):
    return events.MET_pt > 15

def new_variables(events):
    return {"HT": ak.sum(events.Jet_pt, axis=1)}
"""
MODEL = "ttbar"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model package trained on a generated data set, with selection and HT."""
    from mlaas4hep.datasets import generate_dataset
    from mlaas4hep.train.config import TrainConfig
    from mlaas4hep.train.workflow import train

    folder = tmp_path_factory.mktemp("events-train")
    generate_dataset(folder, n_events=4000, n_files=1, seed=3)
    (folder / "preproc.py").write_text(PREPROCESSING)
    config = TrainConfig(branches=BRANCHES, epochs=2, step_size=4000, plots=False)
    train(
        str(folder / "files.txt"),
        str(folder / "labels.txt"),
        EXAMPLES / "mlp.py",
        config=config,
        out=folder / "out",
        preproc=folder / "preproc.py",
    )
    found = sorted(p.parent for p in (folder / "out").rglob("metadata.json"))
    assert found, "training wrote no model package"
    return found[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("events-server")
    with running_server(root / "repository") as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str, package: Path) -> Iterator[Client]:
    with Client(server, timeout=60) as opened:
        opened.upload_package(package, name=MODEL)
        yield opened


@pytest.fixture(scope="module")
def nanoaod() -> Path:
    return shared_file("nanoAOD_2015_CMS_Open_Data_ttbar.root")


@pytest.fixture(scope="module")
def events(nanoaod: Path) -> ak.Array:
    """The real file's events: the branches the model needs and the identifiers."""
    with uproot.open(nanoaod) as file:
        return file["Events"].arrays([*NEEDED, "run", "event"], library="ak")


@pytest.fixture(scope="module")
def expected(package: Path, events: ak.Array) -> np.ndarray:
    """Independent predictions: selection and HT by hand, VectorTransform, ONNX Runtime."""
    from mlaas4hep.train.package import load_package
    from mlaas4hep.transform.vector import VectorTransform

    spec = load_package(package).spec
    kept = np.asarray(events.MET_pt) > 15
    selected = events[kept]
    for branch in spec.branches:  # nJet is uint32 in this file, int32 in the training data
        if not branch.derived:
            converted = ak.values_astype(selected[branch.name], np.dtype(branch.dtype))
            selected = ak.with_field(selected, converted, branch.name)
    selected = ak.with_field(selected, ak.sum(selected.Jet_pt, axis=1), "HT")
    tensors = VectorTransform(spec).flat(selected)
    session = ort.InferenceSession(str(package / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    feeds: dict[str, Any] = {"x": tensors.x, "mask": tensors.mask}
    feeds = {name: feeds[name] for name in names}
    scores = np.asarray(session.run(None, feeds)[0], dtype=np.float32)
    full = np.full((len(events), scores.shape[1]), np.nan, dtype=np.float32)
    full[kept] = scores
    assert 0 < kept.sum() < len(events), "the selection must keep some events and drop some"
    return full


def _post(server: str, body: Any = None, *, path: str | None = None, **kwargs: Any) -> Any:
    url = f"{server}{path or f'/v2/models/{MODEL}/events'}"
    if body is not None:
        kwargs["json"] = body
    return httpx.post(url, timeout=60, **kwargs)


def _check(answer: dict[str, Any], expected: np.ndarray, events: ak.Array) -> None:
    rows = answer["predictions"]
    assert answer["model"] == MODEL
    assert answer["events"] == len(events) == len(rows)
    assert answer["selected"] == int(np.isfinite(expected[:, 0]).sum())
    got = np.array([[np.nan] * expected.shape[1] if r is None else r for r in rows], np.float32)
    assert [r is None for r in rows] == list(np.isnan(expected[:, 0]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert answer["event"] == np.asarray(events.event).tolist()
    assert answer["run"] == np.asarray(events.run).tolist()
    assert all(isinstance(e, int) for e in answer["event"])


# -- the four kinds of bodies -------------------------------------------------


@pytest.mark.usefixtures("client")
def test_json_records(server: str, events: ak.Array, expected: np.ndarray) -> None:
    response = _post(server, ak.to_list(events))
    assert response.status_code == 200, response.text
    _check(response.json(), expected, events)


@pytest.mark.usefixtures("client")
def test_json_columns(server: str, events: ak.Array, expected: np.ndarray) -> None:
    columns = {name: ak.to_list(events[name]) for name in events.fields}
    response = _post(server, columns, path=f"/predict/events?model={MODEL}")
    assert response.status_code == 200, response.text
    _check(response.json(), expected, events)


@pytest.mark.usefixtures("client")
def test_parquet_upload(server: str, events: ak.Array, expected: np.ndarray) -> None:
    buffer = io.BytesIO()
    pq.write_table(ak.to_arrow_table(events), buffer)
    response = _post(
        server,
        path="/v2/models/ttbar/versions/1/events",
        files={"file": ("events.parquet", buffer.getvalue(), "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1
    _check(response.json(), expected, events)


@pytest.mark.usefixtures("client")
def test_root_upload(server: str, nanoaod: Path, events: ak.Array, expected: np.ndarray) -> None:
    response = _post(
        server,
        path="/predict/events",
        data={"model": f"{MODEL}:1", "tree": "Events"},
        files={"file": (nanoaod.name, nanoaod.read_bytes(), "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    _check(response.json(), expected, events)


# -- bad input ------------------------------------------------------------------


def _record(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "Jet_pt": [50.0, 30.0],
        "Jet_eta": [0.1, -1.2],
        "Jet_btagDeepB": [0.9, 0.1],
        "MET_pt": 41.2,
        "nJet": 2,
        "Muon_pt": [25.0],
        "event": 7,
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def _error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert isinstance(message, str)
    return message


@pytest.mark.usefixtures("client")
def test_missing_branch_is_named(server: str) -> None:
    assert "Muon_pt" in _error(_post(server, [_record(Muon_pt=None)]))


@pytest.mark.usefixtures("client")
def test_jagged_branch_given_as_a_number(server: str) -> None:
    message = _error(_post(server, [_record(Jet_pt=50.0)]))
    assert "Jet_pt" in message
    assert "list" in message


@pytest.mark.usefixtures("client")
def test_non_numbers(server: str) -> None:
    assert "MET_pt" in _error(_post(server, [_record(MET_pt="high")]))


@pytest.mark.usefixtures("client")
def test_long_collections_are_clipped_and_counted(server: str) -> None:
    jets = 30
    crowded = _record(
        Jet_pt=[20.0 + i for i in range(jets)],
        Jet_eta=[0.0] * jets,
        Jet_btagDeepB=[0.5] * jets,
        nJet=jets,
    )
    response = _post(server, [crowded, _record(), _record(MET_pt=3.0)])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["clipped"].get("Jet") == 1
    assert answer["selected"] == 2
    assert answer["predictions"][2] is None
    assert answer["event"] == [7, 7, 7]


@pytest.mark.usefixtures("client")
def test_missing_tree_is_named_with_the_trees_of_the_file(server: str, nanoaod: Path) -> None:
    response = _post(
        server,
        data={"tree": "Nope"},
        files={"file": (nanoaod.name, nanoaod.read_bytes(), "application/octet-stream")},
    )
    message = _error(response)
    assert "Nope" in message
    assert "Events" in message


@pytest.mark.usefixtures("client")
def test_malformed_json(server: str) -> None:
    response = _post(server, content=b'[{"MET_pt": 4', headers={"Content-Type": "application/json"})
    assert "JSON" in _error(response)


@pytest.mark.usefixtures("client")
def test_columns_of_different_lengths(server: str) -> None:
    response = _post(server, {"MET_pt": [1.0, 2.0], "nJet": [1]})
    assert "length" in _error(response)


@pytest.mark.usefixtures("client")
def test_unknown_model(server: str) -> None:
    _error(_post(server, [_record()], path="/v2/models/nosuch/events"), 404)


def test_model_without_a_feature_spec(server: str, client: Client, tmp_path: Path) -> None:
    from serving import write_onnx_mlp

    write_onnx_mlp(tmp_path)
    client.upload("plain", tmp_path / "model.onnx")
    message = _error(_post(server, [_record()], path="/v2/models/plain/events"))
    assert "no feature spec" in message
    assert "no feature spec" in _error(httpx.get(f"{server}/v2/models/plain/events"))


def test_what_the_model_takes(client: Client, package: Path) -> None:
    from mlaas4hep.train.package import load_package

    loaded = load_package(package)
    described = client.events_metadata(MODEL)
    assert described["model"] == MODEL
    assert described["version"] == 1
    assert described["labels"] == loaded.labels
    assert sorted(described["branches"]) == sorted(NEEDED)
    assert described["identifiers"] == list(loaded.spec.identifiers)
    assert described["selection"] is True
    assert described["max_events"] >= 1000
    assert client.events_metadata(MODEL, version=1) == described
    with pytest.raises(ServerError) as error:
        client.events_metadata(MODEL, version=9)
    assert error.value.status == 404


# -- limits ---------------------------------------------------------------------

LIMIT_EVENTS = 1000
LIMIT_JSON = 300_000
LIMIT_UPLOAD = 2_000_000


@pytest.fixture(scope="module")
def tight_server(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with small limits, holding the package as MODEL."""
    root = tmp_path_factory.mktemp("events-limits")
    (root / "server.yaml").write_text(
        f"max_batch_rows: {LIMIT_EVENTS}\nmax_request_bytes: {LIMIT_JSON}\n"
        f"max_upload_bytes: {LIMIT_UPLOAD}\n"
    )
    with running_server(root / "repository", "--config", str(root / "server.yaml")) as url:
        with Client(url, timeout=60) as opened:
            opened.upload_package(package, name=MODEL)
        yield url


def _many(n: int, jets: int = 2) -> ak.Array:
    """``n`` valid events with ``jets`` jets each (zeros: they compress to nothing)."""
    zeros = np.zeros(n * jets, np.float32)
    counts = np.full(n, jets)
    jet = {f: ak.unflatten(zeros, counts) for f in ("pt", "eta", "btagDeepB")}
    return ak.Array(
        {
            "Jet": ak.zip(jet),
            "MET_pt": np.full(n, 40.0, np.float32),
            "Muon": ak.zip({"pt": ak.unflatten(np.full(n, 25.0, np.float32), np.ones(n, int))}),
            "event": np.arange(n, dtype=np.uint64),
        }
    )


def _as_root(events: ak.Array, path: Path) -> bytes:
    data = {name: events[name] for name in events.fields}
    with uproot.recreate(path) as file:  # NanoAOD names: nJet, Jet_pt, ..., nMuon, Muon_pt
        types = {name: array.type for name, array in data.items()}
        file.mktree("Events", types, field_name=lambda outer, inner: f"{outer}_{inner}")
        file["Events"].extend(data)
    return path.read_bytes()


def _as_parquet(events: ak.Array) -> bytes:
    flat = {"MET_pt": events.MET_pt, "event": events.event, "Muon_pt": events.Muon.pt}
    flat |= {f"Jet_{f}": events.Jet[f] for f in ("pt", "eta", "btagDeepB")}
    flat["nJet"] = ak.values_astype(ak.num(events.Jet), np.int32)
    buffer = io.BytesIO()
    pq.write_table(ak.to_arrow_table(ak.zip(flat, depth_limit=1)), buffer)
    return buffer.getvalue()


def _upload(server: str, name: str, data: bytes) -> httpx.Response:
    return _post(server, files={"file": (name, data, "application/octet-stream")})


def test_events_up_to_the_limit_are_scored(tight_server: str) -> None:
    records = [_record(event=i) for i in range(LIMIT_EVENTS)]
    response = _post(tight_server, records)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == LIMIT_EVENTS


def test_too_many_json_events(tight_server: str) -> None:
    records = [_record(event=i) for i in range(LIMIT_EVENTS + 1)]
    assert "1,001 events" in _error(_post(tight_server, records))
    columns = {key: [value] * (LIMIT_EVENTS + 1) for key, value in _record().items()}
    assert "1,001 events" in _error(_post(tight_server, columns))


def test_json_bodies_are_bounded_by_the_request_limit(tight_server: str) -> None:
    long = _record(Jet_pt=[50.5] * 200, Jet_eta=[0.5] * 200, Jet_btagDeepB=[0.25] * 200)
    body = [long] * 200  # few events, but over 300 kB of JSON
    assert "limit" in _error(_post(tight_server, body), 413)


def test_too_many_events_in_a_file(tight_server: str, tmp_path: Path) -> None:
    events = _many(LIMIT_EVENTS + 1)
    root = _upload(tight_server, "many.root", _as_root(events, tmp_path / "many.root"))
    assert "1,001 events" in _error(root)
    parquet = _upload(tight_server, "many.parquet", _as_parquet(events))
    assert "1,001 events" in _error(parquet)


def test_files_that_decompress_beyond_the_limit(tight_server: str, tmp_path: Path) -> None:
    """A few kilobytes that would take megabytes once decompressed: refused unread."""
    events = _many(LIMIT_EVENTS, jets=1000)  # 3 x 4 MB of float32 zeros
    for name, data in (
        ("bomb.root", _as_root(events, tmp_path / "bomb.root")),
        ("bomb.parquet", _as_parquet(events)),
    ):
        assert len(data) < LIMIT_UPLOAD / 10, name
        message = _error(_upload(tight_server, name, data), 413)
        assert "decompressed" in message
        assert f"{LIMIT_UPLOAD:,}" in message
    small = _many(10)  # the same files with few jets are scored
    for name, data in (
        ("small.root", _as_root(small, tmp_path / "small.root")),
        ("small.parquet", _as_parquet(small)),
    ):
        response = _upload(tight_server, name, data)
        assert response.status_code == 200, response.text
        assert response.json()["event"] == list(range(10))


# -- the client -------------------------------------------------------------------


def _check_client(answer: EventPredictions, expected: np.ndarray, events: ak.Array) -> None:
    assert answer.probabilities.dtype == np.float32
    np.testing.assert_allclose(answer.probabilities, expected, rtol=1e-5, atol=1e-6)
    assert answer.selected == int(np.isfinite(expected[:, 0]).sum())
    np.testing.assert_array_equal(answer.kept, np.isfinite(expected[:, 0]))
    np.testing.assert_array_equal(answer.identifiers["event"], np.asarray(events.event))
    assert answer.labels is not None


def test_client_records(client: Client, events: ak.Array, expected: np.ndarray) -> None:
    _check_client(client.predict_events(ak.to_list(events), model=MODEL), expected, events)


def test_client_awkward_array(client: Client, events: ak.Array, expected: np.ndarray) -> None:
    _check_client(client.predict_events(events, model=MODEL, version=1), expected, events)


def test_client_file_path(
    client: Client, nanoaod: Path, events: ak.Array, expected: np.ndarray
) -> None:
    _check_client(client.predict_events(nanoaod, model=MODEL), expected, events)
    _check_client(client.predict_events(str(nanoaod), model=MODEL, tree="Events"), expected, events)


def test_client_error(client: Client) -> None:
    with pytest.raises(ServerError, match="Muon_pt"):
        client.predict_events([_record(Muon_pt=None)], model=MODEL)


@pytest.mark.usefixtures("client")
def test_async_client(server: str, events: ak.Array, expected: np.ndarray) -> None:
    import asyncio

    from mlaas4hep.client import AsyncClient

    async def run() -> EventPredictions:
        async with AsyncClient(server, timeout=60) as opened:
            return await opened.predict_events(events, model=MODEL)

    _check_client(asyncio.run(run()), expected, events)
