"""Event images: every cell against a plain per-event Python loop, sparse = dense, errors."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
from conftest import shared_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlaas4hep.datasets import generate_events
from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.transform.matrix import (
    ImageChannel,
    ImageSpec,
    ImageView,
    SparseImages,
    make_images,
    make_sparse_images,
)

PI = math.pi

# --------------------------------------------------------------------------- the reference


def _column(events: Any, name: str) -> tuple[list[list[float]], np.dtype[Any]]:
    """Per-event lists of python floats and the dtype of the values."""
    array = ak.Array(events[name]) if not isinstance(events[name], ak.Array) else events[name]
    if array.ndim == 1:
        values = ak.to_numpy(array)
        return [[float(v)] for v in values], values.dtype
    dtype = ak.to_numpy(ak.flatten(array)).dtype
    return [[float(v) for v in event] for event in ak.to_list(array)], dtype


def _edges(lo: float, hi: float, n: int, dtype: np.dtype[Any]) -> list[float]:
    """Bin edges as documented: lo + i * width, in the precision of the data."""
    width = (hi - lo) / n
    edges = [lo + i * width for i in range(n)] + [hi]
    if dtype == np.float32:
        return [float(np.float32(e)) for e in edges]
    return edges


def _bin(value: float, edges: list[float]) -> int | None:
    """Bin of ``value``: edges[i] <= v < edges[i + 1], the last bin closed; None outside."""
    if not edges[0] <= value <= edges[-1]:  # also False for NaN
        return None
    return min(bisect.bisect_right(edges, value) - 1, len(edges) - 2)


def reference(events: Any, spec: ImageSpec) -> np.ndarray:
    """The images computed the slow, obvious way: loop over events and entries."""
    fields = list(events.fields) if isinstance(events, ak.Array) else list(events)
    n = len(events) if isinstance(events, ak.Array) else len(next(iter(events.values())))
    h, w = spec.bins
    out = np.zeros((n, len(spec.views) * len(spec.channels), h, w))
    for v, view in enumerate(spec.views):
        for c, channel in enumerate(spec.channels):
            k = v * len(spec.channels) + c
            coll = channel.collection
            xs, x_dtype = _column(events, f"{coll}_{view.x}")
            ys, y_dtype = _column(events, f"{coll}_{view.y}")
            assert view.x_range is not None
            assert view.y_range is not None
            x_edges = _edges(*view.x_range, w, x_dtype)
            y_edges = _edges(*view.y_range, h, y_dtype)
            weights = _weights(events, fields, channel)
            for e in range(n):
                cells: dict[tuple[int, int], list[float]] = {}
                for j, (x, y) in enumerate(zip(xs[e], ys[e], strict=True)):
                    col, row = _bin(x, x_edges), _bin(y, y_edges)
                    if col is None or row is None:
                        continue
                    cells.setdefault((row, col), []).append(
                        1.0 if weights is None else weights[e][j]
                    )
                for (row, col), values in cells.items():
                    out[e, k, row, col] = sum(values) if channel.reduce == "sum" else max(values)
    return out


def _weights(events: Any, fields: list[str], channel: ImageChannel) -> list[list[float]] | None:
    coll, weight = channel.collection, channel.weight
    if weight is None:
        return None

    def col(suffix: str) -> list[list[float]]:
        return _column(events, f"{coll}_{suffix}")[0]

    if weight == "pt" and f"{coll}_pt" not in fields:
        return [
            [math.hypot(px, py) for px, py in zip(a, b, strict=True)]
            for a, b in zip(col("Px"), col("Py"), strict=True)
        ]
    if weight == "energy":
        if f"{coll}_E" in fields:
            return col("E")
        masses = col("mass") if f"{coll}_mass" in fields else None
        result = []
        for e, (pts, etas) in enumerate(zip(col("pt"), col("eta"), strict=True)):
            energies = []
            for j, (pt, eta) in enumerate(zip(pts, etas, strict=True)):
                p = pt * math.cosh(eta)
                m = 0.0 if masses is None else masses[e][j]
                energies.append(math.sqrt(p * p + m * m))
            result.append(energies)
        return result
    return col(weight)


def check(events: Any, spec: ImageSpec) -> np.ndarray:
    """make_images (float64 and float32) and make_sparse_images against the reference."""
    want = reference(events, spec)
    got = make_images(events, spec, dtype=np.float64)
    assert got.shape == want.shape
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    got32 = make_images(events, spec)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want.astype(np.float32), rtol=1e-6, atol=0)
    sparse = make_sparse_images(events, spec, dtype=np.float64)
    check_sparse(sparse, got)
    return want


def check_sparse(sparse: SparseImages, dense: np.ndarray) -> None:
    assert sparse.shape == dense.shape
    np.testing.assert_array_equal(sparse.to_dense(), dense)
    key = np.stack([sparse.event, sparse.channel, sparse.row, sparse.col])
    linear = np.ravel_multi_index(tuple(key), dense.shape)
    assert np.all(np.diff(linear) > 0), "sorted by (event, channel, row, col), each cell once"
    # Every non-zero cell is stored (zero-valued occupied cells may be stored too).
    assert np.count_nonzero(dense) == np.count_nonzero(sparse.value)


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return generate_events("signal", 150, seed=3)


@pytest.fixture(scope="module")
def nanoaod() -> ak.Array:
    path = shared_file("nanoAOD_2015_CMS_Open_Data_ttbar.root")
    with uproot.open(path) as f:
        return f["Events"].arrays(
            filter_name=["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepB", "Muon_*"]
        )


@pytest.fixture(scope="module")
def hzz() -> ak.Array:
    with uproot.open(shared_file("uproot-HZZ.root")) as f:
        return f["events"].arrays(filter_name=["Jet_*", "Muon_*"], entry_stop=800)


# --------------------------------------------------------------------------- against the loop


def test_generated_events_match_the_loop(generated: dict[str, Any]) -> None:
    spec = ImageSpec(
        views=[
            ImageView(bins=(20, 24)),  # H != W: rows are phi, columns eta
            ImageView(bins=(20, 24), x_range=(-1.0, 1.5), y_range=(0.0, 2.0)),
        ],
        channels=[
            ImageChannel("PFCands"),
            ImageChannel("PFCands", weight="pt"),
            ImageChannel("PFCands", weight="energy", reduce="max"),
            ImageChannel("PFCands", weight="charge"),
            ImageChannel("Jet", weight="btagDeepB", reduce="max"),
        ],
    )
    want = check(generated, spec)
    assert want.shape == (150, 10, 20, 24)
    # as a record array (a streamed chunk's arrays) too
    np.testing.assert_array_equal(
        make_images(ak.Array(generated), spec), make_images(generated, spec)
    )
    # the cells hold something: not an all-zero comparison
    assert want[:, 0].sum() > 30 * 150
    # counts are exact integers, and sum to the entries inside the range
    eta = ak.to_numpy(ak.flatten(generated["PFCands_eta"]))
    assert want[:, 0].sum() == np.count_nonzero(np.abs(eta) <= 2.5)


def test_real_nanoaod_file_matches_the_loop(nanoaod: ak.Array) -> None:
    spec = ImageSpec(
        views=[ImageView(bins=(12, 10)), ImageView(bins=(12, 10), x_range=(-5.0, 5.0))],
        channels=[
            ImageChannel("Jet"),
            ImageChannel("Jet", weight="pt"),
            ImageChannel("Jet", weight="energy"),
            ImageChannel("Jet", weight="btagDeepB", reduce="max"),
            ImageChannel("Muon", weight="pt", reduce="max"),
            ImageChannel("Muon", weight="charge"),
        ],
    )
    want = check(nanoaod, spec)
    assert want.shape == (200, 12, 12, 10)
    assert np.count_nonzero(want[:, 4]) > 20


def test_hzz_cartesian_view_matches_the_loop(hzz: ak.Array) -> None:
    view = ImageView(x="Px", y="Py", bins=(16, 20), x_range=(-80.0, 80.0), y_range=(-60.0, 60.0))
    spec = ImageSpec(
        views=[view],
        channels=[
            ImageChannel("Jet"),
            ImageChannel("Jet", weight="energy"),  # the Jet_E branch
            ImageChannel("Jet", weight="pt", reduce="max"),  # hypot(Jet_Px, Jet_Py)
            ImageChannel("Muon", weight="pt"),
        ],
    )
    want = check(hzz, spec)
    assert np.count_nonzero(want[:, 0]) > 200
    assert spec.branches(hzz.fields) == ["Jet_Px", "Jet_Py", "Jet_E", "Muon_Px", "Muon_Py"]


# --------------------------------------------------------------------------- rules


def small(*events: list[tuple[float, float, float]], dtype: Any = np.float64) -> ak.Array:
    """Events of a collection ``P`` from (eta, phi, pt) triples."""
    return ak.Array(
        {
            name: ak.values_astype(ak.Array([[e[i] for e in event] for event in events]), dtype)
            for i, name in enumerate(("P_eta", "P_phi", "P_pt"))
        }
    )


VIEW = ImageView(bins=(2, 4), x_range=(0.0, 4.0), y_range=(0.0, 2.0))


def test_sum_and_max_rules() -> None:
    events = small([(0.5, 0.5, 3.0), (0.7, 0.2, 5.0), (3.5, 1.5, -2.0), (3.9, 1.9, -4.0)], [])
    spec = ImageSpec(
        views=[VIEW],
        channels=[
            ImageChannel("P"),
            ImageChannel("P", reduce="max"),
            ImageChannel("P", weight="pt"),
            ImageChannel("P", weight="pt", reduce="max"),
        ],
    )
    images = make_images(events, spec)
    assert images.shape == (2, 4, 2, 4)
    counts, occupancy, total, largest = images[0]
    assert counts[0, 0] == 2
    assert counts[1, 3] == 2
    assert occupancy[0, 0] == 1
    assert occupancy[1, 3] == 1
    assert total[0, 0] == 8.0  # 3 + 5
    assert largest[0, 0] == 5.0
    assert total[1, 3] == -6.0
    assert largest[1, 3] == -2.0  # the largest, though negative
    for channel in images[0]:  # empty cells are 0 under every rule
        assert np.count_nonzero(channel) == 2
    assert not images[1].any()  # an event without entries
    check(events, spec)


def test_entries_out_of_range_are_dropped_and_edges_belong_to_the_upper_bin() -> None:
    events = small(
        [
            (0.0, 0.0, 1.0),  # lower corner: first row and column
            (4.0, 2.0, 2.0),  # upper corner (== high): last row and column
            (1.0, 1.0, 4.0),  # an inner edge: the upper bin (row 1, column 1)
            (-0.001, 1.0, 100.0),  # below the x range
            (4.001, 1.0, 100.0),  # above it
            (2.0, 2.001, 100.0),  # above the y range
            (float("nan"), 1.0, 100.0),  # NaN coordinate
            (2.0, float("inf"), 100.0),
        ]
    )
    images = make_images(events, ImageSpec(views=[VIEW], channels=[ImageChannel("P", "pt")]))
    expected = np.zeros((2, 4))
    expected[0, 0] = 1.0
    expected[1, 3] = 2.0
    expected[1, 1] = 4.0
    np.testing.assert_array_equal(images[0, 0], expected)


def test_float32_phi_at_pi_lands_in_the_edge_bins() -> None:
    pi32 = float(np.float32(PI))
    assert pi32 > PI  # float32(pi) is just above pi: compared in float64 it would be dropped
    events = small([(0.0, pi32, 1.0), (0.0, -pi32, 1.0), (2.5, 0.0, 1.0), (-2.5, 0.0, 1.0)])
    events32 = ak.Array({k: ak.values_astype(events[k], np.float32) for k in events.fields})
    spec = ImageSpec(views=[ImageView(bins=(4, 2))], channels=[ImageChannel("P")])
    image = make_images(events32, spec)[0, 0]
    assert image[3, 0] + image[3, 1] == 1  # phi = pi → last row
    assert image[0, 0] + image[0, 1] == 1  # phi = -pi → first row
    assert image.sum() == 4
    check(events32, spec)
    # float64 data are compared with float64 edges: float32(pi) as a double is outside
    assert make_images(events, spec)[0, 0].sum() == 2


def test_energy_weight_from_pt_eta_mass_and_without_mass() -> None:
    events = {
        "P_eta": ak.Array([[0.5, -1.2]]),
        "P_phi": ak.Array([[0.1, 0.2]]),
        "P_pt": ak.Array([[10.0, 20.0]]),
        "P_mass": ak.Array([[3.0, 0.0]]),
    }
    spec = ImageSpec(views=[ImageView(bins=(1, 1))], channels=[ImageChannel("P", "energy")])
    expected = math.hypot(10 * math.cosh(0.5), 3.0) + 20 * math.cosh(-1.2)
    assert make_images(events, spec, dtype=np.float64)[0, 0, 0, 0] == pytest.approx(expected)
    del events["P_mass"]
    expected = 10 * math.cosh(0.5) + 20 * math.cosh(-1.2)
    assert make_images(events, spec, dtype=np.float64)[0, 0, 0, 0] == pytest.approx(expected)


def test_channel_order_is_views_outer_channels_inner(generated: dict[str, Any]) -> None:
    a = ImageView(bins=(8, 8))
    b = ImageView(bins=(8, 8), x_range=(-1.0, 1.0))
    counts, pt = ImageChannel("PFCands"), ImageChannel("PFCands", "pt")
    both = make_images(generated, ImageSpec(views=[a, b], channels=[counts, pt]))
    for k, (view, channel) in enumerate([(a, counts), (a, pt), (b, counts), (b, pt)]):
        alone = make_images(generated, ImageSpec(views=[view], channels=[channel]))
        np.testing.assert_array_equal(both[:, k], alone[:, 0])
    names = ImageSpec(views=[a, b], channels=[counts, pt]).channel_names
    assert names == [
        "eta-phi/PFCands:count:sum",
        "eta-phi/PFCands:pt:sum",
        "eta-phi/PFCands:count:sum",
        "eta-phi/PFCands:pt:sum",
    ]


def test_flat_branches_are_one_entry_per_event(generated: dict[str, Any]) -> None:
    view = ImageView(x="phi", y="pt", bins=(5, 6), y_range=(0.0, 200.0))
    spec = ImageSpec(views=[view], channels=[ImageChannel("MET"), ImageChannel("MET", "pt")])
    images = check(generated, spec)
    assert images[:, 0].sum() == np.count_nonzero(generated["MET_pt"] <= 200.0)


def test_zero_events_and_a_reused_output_buffer(generated: dict[str, Any]) -> None:
    spec = ImageSpec(views=[ImageView(bins=(3, 5))], channels=[ImageChannel("Jet", "pt")] * 2)
    none = {k: v[:0] for k, v in generated.items()}
    assert make_images(none, spec).shape == (0, 2, 3, 5)
    sparse = make_sparse_images(none, spec)
    assert sparse.shape == (0, 2, 3, 5)
    assert sparse.nnz == 0
    assert sparse.to_dense().shape == (0, 2, 3, 5)
    buffer = np.full((150, 2, 3, 5), 7.0, dtype=np.float32)
    result = make_images(generated, spec, out=buffer)
    assert result is buffer
    np.testing.assert_array_equal(buffer, make_images(generated, spec))


# --------------------------------------------------------------------------- property tests


@st.composite
def jagged_events(draw: st.DrawFn) -> tuple[dict[str, ak.Array], ImageSpec]:
    n = draw(st.integers(0, 8))
    counts = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    total = sum(counts)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    # Values on and around the edges of the ranges below, plus arbitrary ones.
    special = st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, math.nan])
    coordinate = st.one_of(special, st.floats(-1.5, 3.5, width=32))
    columns = {}
    for name, values in (
        ("P_a", coordinate),
        ("P_b", coordinate),
        ("P_w", st.floats(-10, 10, width=32)),
    ):
        flat = np.array(draw(st.lists(values, min_size=total, max_size=total)), dtype=dtype)
        columns[name] = ak.unflatten(flat, np.array(counts, dtype=np.int64))
    bins = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    views = [
        ImageView(x="a", y="b", bins=bins, x_range=(0.0, 2.0), y_range=(-0.5, 2.5)),
        ImageView(x="b", y="a", bins=bins, x_range=(0.25, 3.0), y_range=(0.0, 1.0)),
    ]
    channels = [
        ImageChannel("P", weight=w, reduce=r)
        for w in draw(st.lists(st.sampled_from([None, "w"]), min_size=1, max_size=2))
        for r in draw(st.lists(st.sampled_from(["sum", "max"]), min_size=1, max_size=2))
    ]
    return columns, ImageSpec(views=views, channels=channels)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jagged_events())
def test_random_jagged_events_match_the_loop(case: tuple[dict[str, ak.Array], ImageSpec]) -> None:
    events, spec = case
    check(events, spec)
    check(ak.Array(events), spec)


# --------------------------------------------------------------------------- JSON


def test_json_round_trip() -> None:
    spec = ImageSpec(
        views=[
            ImageView(),
            ImageView(x="Px", y="Py", bins=(32, 32), x_range=(-100, 100.5), y_range=(-1e3, 1e3)),
        ],
        channels=[
            ImageChannel("PFCands"),
            ImageChannel("PFCands", weight="energy", reduce="max"),
            ImageChannel("Jet", weight="btagDeepB"),
        ],
    )
    document = json.loads(json.dumps(spec.to_dict()))
    assert document["views"][0] == {
        "x": "eta",
        "y": "phi",
        "bins": [32, 32],
        "x_range": [-2.5, 2.5],
        "y_range": [-PI, PI],
    }
    assert document["channels"][0] == {"collection": "PFCands", "weight": None, "reduce": "sum"}
    again = ImageSpec.from_dict(document)
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert again.shape == (6, 32, 32)
    assert ImageView.from_dict({"bins": [4, 8]}) == ImageView(bins=(4, 8))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"views": [], "channels": [{"collection": "Jet"}]}, "at least one view"),
        ({"views": [{}], "channels": []}, "at least one channel"),
        ({"channels": [{"collection": "Jet"}]}, "needs 'views'"),
        ({"views": [{}], "channels": [{"collection": "Jet"}], "extra": 1}, "unknown key"),
        ({"views": [{"bins": [4]}], "channels": [{"collection": "Jet"}]}, "two integers"),
        ({"views": [{"binz": [4, 4]}], "channels": [{"collection": "Jet"}]}, "'binz'"),
        ({"views": [{}], "channels": [{"weight": "pt"}]}, "needs a 'collection'"),
        ({"views": [{}], "channels": ["Jet"]}, "must be a JSON object"),
        ({"views": {}, "channels": [{"collection": "Jet"}]}, "must be a list"),
    ],
)
def test_malformed_documents(document: Mapping[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageSpec.from_dict(document)


# --------------------------------------------------------------------------- errors


def test_missing_branch_names_it_and_lists_the_collection(generated: dict[str, Any]) -> None:
    events = {k: v for k, v in generated.items() if k != "PFCands_eta"}
    spec = ImageSpec(views=[ImageView()], channels=[ImageChannel("PFCands")])
    for fn in (make_images, make_sparse_images):
        with pytest.raises(DataError, match="'PFCands_eta'") as info:
            fn(events, spec)
        assert "PFCands_pt" in str(info.value)
        assert "PFCands_phi" in str(info.value)
    with pytest.raises(DataError, match=r"'Tau_eta'.*no field starts with 'Tau_'"):
        make_images(generated, ImageSpec(views=[ImageView()], channels=[ImageChannel("Tau")]))
    with pytest.raises(DataError, match="'Jet_dxy'"):
        make_images(
            generated, ImageSpec(views=[ImageView()], channels=[ImageChannel("Jet", "dxy")])
        )
    bare = {"P_eta": generated["Jet_eta"], "P_phi": generated["Jet_phi"]}
    with pytest.raises(DataError, match=r"'P_pt'.*needs P_E, or P_pt and P_eta"):
        make_images(bare, ImageSpec(views=[ImageView()], channels=[ImageChannel("P", "energy")]))
    with pytest.raises(DataError, match="'PFCands_eta'"):
        ImageSpec(views=[ImageView()], channels=[ImageChannel("PFCands")]).branches(events)


def test_inconsistent_or_unusable_data(generated: dict[str, Any]) -> None:
    spec = ImageSpec(views=[ImageView()], channels=[ImageChannel("Jet", "pt")])
    mixed = {**generated, "Jet_phi": generated["Muon_phi"]}
    with pytest.raises(DataError, match="same number of entries per event"):
        make_images(mixed, spec)
    with pytest.raises(DataError, match="different lengths"):
        make_images({**generated, "Jet_pt": generated["Jet_pt"][:10]}, spec)
    missing = {**generated, "Jet_pt": ak.mask(generated["Jet_pt"], generated["nJet"] > 4)}
    with pytest.raises(DataError, match="'Jet_pt' cannot be read"):
        make_images(missing, spec)
    strings = {**generated, "Jet_pt": ak.Array([["a"]] * len(generated["nJet"]))}
    with pytest.raises(DataError, match="'Jet_pt'"):
        make_images(strings, spec)
    with pytest.raises(DataError, match="record array or a mapping"):
        make_images([1, 2, 3], spec)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ImageView(bins=(0, 4)), "≥ 1"),
        (lambda: ImageView(bins=(4, -1)), "≥ 1"),
        (lambda: ImageView(bins=(4.0, 4)), "two integers"),
        (lambda: ImageView(bins=(4, 4, 4)), "two integers"),
        (lambda: ImageView(x_range=(1.0, 1.0)), "low < high"),
        (lambda: ImageView(y_range=(2.0, -2.0)), "low < high"),
        (lambda: ImageView(x_range=(0.0, math.inf)), "finite"),
        (lambda: ImageView(x_range=(0.0, math.nan)), "finite"),
        (lambda: ImageView(x_range=(0.0,)), "two numbers"),
        (lambda: ImageView(x="Px", y="Py"), "x_range is required for coordinate 'Px'"),
        (lambda: ImageView(x=""), "non-empty"),
        (lambda: ImageChannel("Jet", reduce="mean"), "sum, max"),
        (lambda: ImageChannel("Jet_"), "without the underscore"),
        (lambda: ImageChannel(""), "branch prefix"),
        (lambda: ImageChannel("Jet", weight=""), "non-empty"),
        (
            lambda: ImageSpec(
                views=[ImageView(bins=(32, 32)), ImageView(bins=(16, 16))],
                channels=[ImageChannel("Jet")],
            ),
            "same bins",
        ),
    ],
)
def test_invalid_configuration(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_invalid_dtype_or_output(generated: dict[str, Any]) -> None:
    spec = ImageSpec(views=[ImageView(bins=(4, 4))], channels=[ImageChannel("Jet")])
    with pytest.raises(ConfigError, match="floating"):
        make_images(generated, spec, dtype=np.int32)
    with pytest.raises(ConfigError, match="dtype"):
        make_sparse_images(generated, spec, dtype="not a type")
    with pytest.raises(ConfigError, match="shape"):
        make_images(generated, spec, out=np.zeros((150, 2, 4, 4), np.float32))
    with pytest.raises(ConfigError, match="C-contiguous"):
        make_images(generated, spec, out=np.zeros((4, 4, 1, 150), np.float32).T)
    with pytest.raises(ConfigError, match="ImageSpec"):
        make_images(generated, spec.to_dict())  # type: ignore[arg-type]
