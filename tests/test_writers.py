"""Tensors written chunk by chunk to Parquet, HDF5 and npz, and read back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.transform import writers
from mlaas4hep.transform.writers import (
    infer_format,
    open_writer,
    read_columns,
    read_metadata,
    read_tensors,
)

SUFFIXES = [".parquet", ".h5", ".npz"]
FEATURES = ["Jet_pt_0", "Jet_pt_1", "Jet_eta_0", "MET_pt"]
SPEC = {"version": 1, "features": FEATURES, "pad": 0.0, "nested": {"a": [1, 2.5, None]}}


def make_chunk(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, 4), dtype=np.float32),
        "mask": rng.random((n, 4)) > 0.3,
        "label": rng.integers(0, 2, n).astype(np.float64),
        "weight": rng.random(n, dtype=np.float32),
        "event": np.uint64(2**63) + rng.integers(0, 2**40, n).astype(np.uint64),
        "run": np.full(n, 7, dtype=np.int32),
        "image": rng.random((n, 2, 3)).astype(np.float16),
        "count": rng.integers(-5, 5, (n, 3)).astype(np.int8),
    }


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def write_all(path: Path, chunks: list[dict[str, np.ndarray]], **options: Any) -> None:
    with open_writer(path, **options) as writer:
        for chunk in chunks:
            writer.write(chunk)


def write_then_fail(path: Path, error: BaseException) -> None:
    with open_writer(path) as writer:
        writer.write(make_chunk(6, 1))
        raise error


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("named", [True, False], ids=["columns", "no-columns"])
def test_round_trip(tmp_path: Path, suffix: str, named: bool) -> None:
    path = tmp_path / f"out{suffix}"
    chunks = [make_chunk(n, seed) for seed, n in enumerate([0, 5, 0, 17, 3])]
    columns = {"x": FEATURES} if named else None
    with open_writer(path, metadata=SPEC, columns=columns) as writer:
        for i, chunk in enumerate(chunks):
            writer.write(chunk)
            assert writer.rows == sum(len(c["label"]) for c in chunks[: i + 1])
    assert writer.rows == 25
    assert files_in(tmp_path) == [path.name]  # no temporary files left

    back = read_tensors(path)
    assert list(back) == list(chunks[0])
    for name in chunks[0]:
        expected = np.concatenate([c[name] for c in chunks])
        assert back[name].dtype == expected.dtype, name
        assert back[name].shape == expected.shape, name
        np.testing.assert_array_equal(back[name], expected)
    assert read_metadata(path) == SPEC
    assert read_columns(path) == ({"x": FEATURES} if named else {})


def test_parquet_layout(tmp_path: Path) -> None:
    path = tmp_path / "out.pq"
    with open_writer(path, metadata=SPEC, columns={"x": FEATURES}) as writer:
        for seed, n in enumerate([4, 0, 6]):
            writer.write(make_chunk(n, seed))

    table = pq.read_table(path)
    assert table.column_names == [
        *FEATURES,
        "mask",
        "label",
        "weight",
        "event",
        "run",
        "image",
        "count",
    ]
    assert table.schema.field("Jet_pt_0").type == pa.float32()
    assert table.schema.field("mask").type == pa.list_(pa.bool_(), 4)
    assert table.schema.field("image").type == pa.list_(pa.list_(pa.float16(), 3), 2)
    assert table.schema.field("event").type == pa.uint64()
    np.testing.assert_array_equal(
        table.column("Jet_eta_0").to_numpy(),
        np.concatenate([make_chunk(4, 0)["x"][:, 2], make_chunk(6, 2)["x"][:, 2]]),
    )
    assert json.loads(table.schema.metadata[b"mlaas4hep"]) == SPEC
    assert pq.ParquetFile(path).metadata.num_row_groups == 2  # one per non-empty write


def test_hdf5_layout(tmp_path: Path) -> None:
    path = tmp_path / "out.hdf5"
    with open_writer(path, metadata=SPEC, columns={"x": FEATURES}, compression="gzip:1") as w:
        w.write(make_chunk(10, 0))
        w.write(make_chunk(3, 1))
    with h5py.File(path, "r") as f:
        assert list(f) == list(make_chunk(0, 0))  # write order, not alphabetical
        assert json.loads(f.attrs["mlaas4hep"]) == SPEC
        x = f["x"]
        assert x.shape == (13, 4)
        assert x.maxshape == (None, 4)
        assert x.chunks is not None
        assert x.compression == "gzip"
        assert list(x.attrs["columns"]) == FEATURES
        assert f["image"].maxshape == (None, 2, 3)


@pytest.mark.parametrize(
    ("suffix", "compression"),
    [
        (".h5", None),
        (".h5", "lzf"),
        (".npz", "deflate:1"),
        (".parquet", "snappy"),
        (".parquet", "none"),
    ],
)
def test_compression(tmp_path: Path, suffix: str, compression: str | None) -> None:
    path = tmp_path / f"out{suffix}"
    chunk = make_chunk(20, 3)
    with open_writer(path, compression=compression) as writer:
        writer.write(chunk)
    np.testing.assert_array_equal(read_tensors(path)["x"], chunk["x"])


def test_npz_loads_with_numpy(tmp_path: Path) -> None:
    path = tmp_path / "out.npz"
    with open_writer(path, metadata=SPEC, columns={"x": FEATURES}) as writer:
        writer.write(make_chunk(8, 0))
        writer.write(make_chunk(2, 1))
    with np.load(path, allow_pickle=False) as npz:
        assert npz["x"].shape == (10, 4)
        assert npz["mask"].dtype == np.bool_
        assert json.loads(str(npz["__metadata__"][()])) == SPEC
        assert npz["__metadata__"].shape == ()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_no_chunks(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    with open_writer(path, metadata={"a": 1}):
        pass
    assert read_tensors(path) == {}
    assert read_metadata(path) == {"a": 1}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_only_empty_chunks(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    with open_writer(path) as writer:
        writer.write(make_chunk(0, 0))
    back = read_tensors(path)
    assert back["image"].shape == (0, 2, 3)
    assert back["event"].dtype == np.uint64
    assert read_metadata(path) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c.update(x=c["x"].astype(np.float64)),
            r"'x' changed dtype from float32 .* to float64",
        ),
        (lambda c: c.update(image=c["image"].reshape(-1, 3, 2)), r"'image' changed shape"),
        (lambda c: c.pop("weight"), r"missing 'weight'"),
        (lambda c: c.update(extra=c["label"]), r"unexpected 'extra'"),
        (lambda c: c.update(label=c["label"][:-1]), r"same number of rows.*label: 4"),
    ],
    ids=["dtype", "shape", "missing", "extra", "rows"],
)
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_mismatch(tmp_path: Path, suffix: str, change: Any, message: str) -> None:
    path = tmp_path / f"out{suffix}"
    chunk = make_chunk(5, 1)
    change(chunk)
    with pytest.raises(DataError, match=message):
        write_all(path, [make_chunk(5, 0), chunk])
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("chunk", "columns", "message"),
    [
        ({"x": np.zeros((3, 2)), "y": np.zeros(2)}, None, r"same number of rows.*x: 3, y: 2"),
        ({"x": np.float32(1)}, None, r"'x' is a scalar"),
        ({"x": np.array(["a", "b"])}, None, r"'x' has dtype <U1"),
        ({"x": np.zeros((3, 0))}, None, r"'x' has shape \(3, 0\)"),
        ({"__x__": np.zeros(3)}, None, r"name '__x__' is not allowed"),
        (
            {"x": np.zeros((3, 2))},
            {"x": ["a", "b", "c"]},
            r"3 column names .* expected shape \(n, 3\)",
        ),
        ({"x": np.zeros(3)}, {"x": ["a"]}, r"has shape \(3,\)"),
        ({"x": np.zeros((3, 2)), "a": np.zeros(3)}, {"x": ["a", "b"]}, r"'a' of array 'x' is also"),
        ({"x": np.zeros((3, 2))}, {"y": ["a", "b"]}, r"columns are given for 'y'"),
    ],
    ids=["rows", "scalar", "strings", "empty-dim", "reserved", "count", "rank", "clash", "unknown"],
)
def test_bad_first_chunk(
    tmp_path: Path, chunk: dict[str, np.ndarray], columns: Any, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        write_all(tmp_path / "out.parquet", [chunk], columns=columns)
    assert files_in(tmp_path) == []


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"parquet \(\.parquet/\.pq\), hdf5 \(\.h5/\.hdf5\), npz"):
        open_writer(tmp_path / "out.csv")
    with pytest.raises(ConfigError, match="unknown output format 'csv'"):
        open_writer(tmp_path / "out.parquet", "csv")
    with pytest.raises(ConfigError, match="unknown compression 'zstd' for hdf5"):
        open_writer(tmp_path / "out.h5", compression="zstd")
    with pytest.raises(ConfigError, match="lzf takes no level"):
        open_writer(tmp_path / "out.h5", compression="lzf:3")
    with pytest.raises(ConfigError, match="not unique: a"):
        open_writer(tmp_path / "out.h5", columns={"x": ["a", "b", "a"]})
    with pytest.raises(ConfigError, match="metadata cannot be stored as JSON"):
        open_writer(tmp_path / "out.npz", metadata={"f": object()})
    with pytest.raises(DataError, match="does not exist"):
        open_writer(tmp_path / "missing" / "out.npz")
    assert files_in(tmp_path) == []
    with pytest.raises(ConfigError, match="needs the nosuch package; install it with"):
        writers._import("mlaas4hep_no_such_module", "nosuch", "parquet")
    assert infer_format("a.parquet", "HDF5") == "hdf5"
    assert infer_format("data.PQ") == "parquet"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_exception_keeps_existing_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    with open_writer(path, metadata={"old": True}) as writer:
        writer.write(make_chunk(4, 0))
    before = path.read_bytes()

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail(path, RuntimeError("boom"))
    assert files_in(tmp_path) == [path.name]
    assert path.read_bytes() == before

    with open_writer(path) as writer:  # a successful write replaces it
        writer.write(make_chunk(6, 1))
    assert len(read_tensors(path)["label"]) == 6
    assert read_metadata(path) is None
    assert files_in(tmp_path) == [path.name]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_exception_leaves_no_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    with pytest.raises(KeyboardInterrupt):
        write_then_fail(path, KeyboardInterrupt())
    assert files_in(tmp_path) == []
    writer = open_writer(path)
    writer.abort()
    assert files_in(tmp_path) == []
    with pytest.raises(DataError, match="writer is closed"):
        writer.write(make_chunk(6, 1))


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_tensors(tmp_path / "nope.h5")
    for suffix in SUFFIXES:
        bad = tmp_path / f"bad{suffix}"
        bad.write_bytes(b"not a tensor file")
        with pytest.raises(DataError, match=f"cannot read .*bad{suffix}"):
            read_tensors(bad)
        with pytest.raises(DataError, match=f"cannot read .*bad{suffix}"):
            read_metadata(bad)


def test_read_foreign_parquet(tmp_path: Path) -> None:
    path = tmp_path / "plain.parquet"
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    table = pa.table(
        {"a": np.arange(6), "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 2)}
    )
    pq.write_table(table, path, row_group_size=4)
    back = read_tensors(path)
    np.testing.assert_array_equal(back["a"], np.arange(6))
    np.testing.assert_array_equal(back["x"], x)
    assert read_metadata(path) is None
    pq.write_table(pa.table({"s": ["a", "b"]}), path)
    with pytest.raises(DataError, match="column 's' has type string"):
        read_tensors(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_byte_order_and_layout(tmp_path: Path, suffix: str) -> None:
    """Big-endian (ROOT) and non-contiguous arrays are written as native, C-ordered data."""
    path = tmp_path / f"out{suffix}"
    wide = np.arange(40, dtype=np.float32).reshape(5, 8)
    first = {"x": wide[:, ::2].astype(">f4"), "n": np.arange(5, dtype=">i8")}
    second = {"x": np.asfortranarray(wide[:, 1::2]), "n": np.arange(5, 10)}
    write_all(path, [first, second], columns={"x": ["a", "b", "c", "d"]})
    back = read_tensors(path)
    assert back["x"].dtype == np.dtype("float32")
    assert back["n"].dtype == np.dtype("int64")
    np.testing.assert_array_equal(back["x"], np.concatenate([wide[:, ::2], wide[:, 1::2]]))
    np.testing.assert_array_equal(back["n"], np.arange(10))
