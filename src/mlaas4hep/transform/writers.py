"""Write tensors to Parquet, HDF5 or ``.npz`` chunk by chunk, and read them back.

``mlaas4hep convert`` streams chunks of tensors (``x``, ``mask``, ``label``,
``weight``, identifiers, ...) through :func:`open_writer`::

    with open_writer("train.parquet", metadata=spec, columns={"x": names}) as writer:
        for tensors in chunks:
            writer.write(tensors)  # {"x": [n, F] float32, "label": [n], ...}

Every chunk must carry the same arrays, with the same dtypes and trailing
shapes, as the first one; all arrays of a chunk share their first dimension.
Only numeric and boolean arrays of rank ≥ 1 are supported.

Writing is atomic: the data go to a hidden temporary file next to the target,
renamed onto it when the ``with`` block ends normally. An exception inside the
block removes the temporary file and leaves any existing file untouched.

Layouts:

* **Parquet** — one row group per :meth:`TensorWriter.write`. A rank-1 array
  is a plain column; an ``[n, F]`` array is one column per feature when
  ``columns`` names them (``Jet_pt_0``, ...), otherwise a ``FixedSizeList``
  column; higher ranks are nested ``FixedSizeList`` columns. The user metadata
  is stored as JSON in the schema metadata under the key ``mlaas4hep``, the
  arrays' dtypes, shapes and column names under ``mlaas4hep.arrays``.
* **HDF5** — one resizable, chunked dataset per array (compression ``lzf`` by
  default, or ``gzip[:level]``, or ``none``), in write order; the metadata as
  a JSON string attribute ``mlaas4hep`` of the file, column names as the
  attribute ``columns`` of the dataset.
* **npz** — numpy's zip of ``.npy`` files, loadable by :func:`numpy.load`.
  Chunks are appended to one raw temporary file per array (in a hidden folder
  next to the target) and streamed into the zip on close, so memory stays at
  one chunk. The metadata is the 0-d string array ``__metadata__`` (JSON), the
  column names the 0-d string array ``__columns__`` (JSON).

:func:`read_tensors`, :func:`read_metadata` and :func:`read_columns` read any
of the three back. ``pyarrow`` (Parquet) and ``h5py`` (HDF5) are imported on
first use, so each format needs only its own library.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import secrets
import shutil
import tempfile
import zipfile
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from mlaas4hep.errors import ConfigError, DataError

__all__ = [
    "FORMATS",
    "ArraySchema",
    "Hdf5Writer",
    "NpzWriter",
    "ParquetWriter",
    "TensorWriter",
    "infer_format",
    "open_writer",
    "read_columns",
    "read_metadata",
    "read_tensors",
]

#: Output formats and the file suffixes that select them.
FORMATS: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet", ".pq"),
    "hdf5": (".h5", ".hdf5"),
    "npz": (".npz",),
}

#: Key of the user metadata (JSON) in every format.
METADATA_KEY = "mlaas4hep"
#: Parquet schema-metadata key of the arrays' layout (JSON).
LAYOUT_KEY = "mlaas4hep.arrays"
_NPZ_METADATA = "__metadata__"
_NPZ_COLUMNS = "__columns__"

#: Compression codecs per format (name → whether it takes a level); the first is the default.
_CODECS: dict[str, dict[str, bool]] = {
    "parquet": {
        "zstd": True,
        "snappy": False,
        "lz4": False,
        "gzip": True,
        "brotli": True,
        "none": False,
    },
    "hdf5": {"lzf": False, "gzip": True, "none": False},
    "npz": {"none": False, "deflate": True},
}

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float

Array = npt.NDArray[Any]


def _import(module: str, package: str, fmt: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the {fmt} format needs the {package} package; install it with: pip install {package}"
        ) from None


# imported on first use, so that each format needs only its own library
@functools.cache
def _pa() -> Any:
    return _import("pyarrow", "pyarrow", "parquet")


@functools.cache
def _pq() -> Any:
    return _import("pyarrow.parquet", "pyarrow", "parquet")


@functools.cache
def _h5py() -> Any:
    return _import("h5py", "h5py", "hdf5")


@dataclass(frozen=True)
class ArraySchema:
    """What every chunk of one array must look like: dtype and shape after the first axis."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    columns: tuple[str, ...] | None = None

    def describe(self) -> str:
        """``float32[n, 10]``-style text for messages."""
        return f"{self.dtype}[{', '.join(['n', *map(str, self.shape)])}]"


# ---------------------------------------------------------------------------
# format and option parsing


def infer_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The output format: ``fmt`` when given, otherwise from the suffix of ``path``.

    Raises:
        ConfigError: for an unknown format or suffix.
    """
    known = ", ".join(f"{name} ({'/'.join(sfx)})" for name, sfx in FORMATS.items())
    if fmt is not None:
        name = fmt.lower().lstrip(".")
        for key, suffixes in FORMATS.items():
            if name == key or f".{name}" in suffixes:
                return key
        raise ConfigError(f"unknown output format {fmt!r}; expected one of: {known}")
    suffix = Path(path).suffix.lower()
    for key, suffixes in FORMATS.items():
        if suffix in suffixes:
            return key
    raise ConfigError(
        f"cannot tell the output format of {os.fspath(path)!r} from its suffix "
        f"{suffix or '(none)'!r}; use one of: {known}, or give the format explicitly"
    )


def _parse_compression(fmt: str, spec: str | None) -> tuple[str, int | None]:
    """``"gzip:4"`` → ``("gzip", 4)``, checked against what ``fmt`` supports."""
    codecs = _CODECS[fmt]
    if spec is None:
        return "none", None
    name, sep, level_text = spec.lower().partition(":")
    if name not in codecs:
        raise ConfigError(
            f"unknown compression {spec!r} for {fmt}; expected one of "
            f"{', '.join(codecs)} (optionally with a level, e.g. gzip:4)"
        )
    if not sep:
        return name, None
    if not codecs[name]:
        raise ConfigError(f"compression {spec!r}: {name} takes no level")
    try:
        level = int(level_text)
    except ValueError:
        raise ConfigError(f"compression {spec!r}: level {level_text!r} is not an integer") from None
    return name, level


def _metadata_json(metadata: Mapping[str, Any] | None) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"metadata must be a dict, not {type(metadata).__name__}")
    try:
        return json.dumps(dict(metadata), allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"metadata cannot be stored as JSON: {err}") from None


def _check_columns(columns: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    if columns is None:
        return {}
    if not isinstance(columns, Mapping):
        raise ConfigError(f"columns must be a dict of array name → column names, not {columns!r}")
    out: dict[str, tuple[str, ...]] = {}
    for array, raw in columns.items():
        names: list[object] = [] if isinstance(raw, str) else list(raw)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"columns of array {array!r} must be a list of non-empty strings")
        duplicates = sorted(str(n) for n, count in Counter(names).items() if count > 1)
        if duplicates:
            raise ConfigError(f"columns of array {array!r} are not unique: {', '.join(duplicates)}")
        out[array] = tuple(map(str, names))
    return out


# ---------------------------------------------------------------------------
# writers


def _create_temp(path: Path) -> Path:
    """A new, empty hidden file next to ``path`` (mode 0666 less the umask, unlike mkstemp)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise DataError(f"cannot write {path}: {err}", path=str(path)) from err
        os.close(fd)
        return tmp
    raise DataError(f"cannot create a temporary file next to {path}", path=str(path))


class TensorWriter(ABC):
    """Base of the writers: checks chunks against the first one and writes atomically.

    Use as a context manager (or call :meth:`close` / :meth:`abort` yourself).
    """

    format: str = ""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Any] | None = None,
        columns: Mapping[str, Sequence[str]] | None = None,
        compression: str | None = "default",
    ) -> None:
        self.path = Path(path)
        self._metadata_json = _metadata_json(metadata)
        self._columns = _check_columns(columns)
        codec = next(iter(_CODECS[self.format])) if compression == "default" else compression
        self.compression, self.compression_level = _parse_compression(self.format, codec)
        self.schema: dict[str, ArraySchema] | None = None
        self._rows = 0
        self._chunks = 0
        self._closed = False
        parent = self.path.parent
        if self.path.is_dir():
            raise DataError(f"cannot write {self.path}: it is a directory", path=str(self.path))
        if not parent.is_dir():
            raise DataError(
                f"cannot write {self.path}: directory {parent} does not exist", path=str(self.path)
            )
        self._tmp = _create_temp(self.path)

    @property
    def rows(self) -> int:
        """Rows written so far."""
        return self._rows

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` or :meth:`abort` has run."""
        return self._closed

    # -- public API -----------------------------------------------------------------

    def write(self, arrays: Mapping[str, npt.ArrayLike]) -> None:
        """Append one chunk: a dict of arrays sharing their first dimension.

        Raises:
            DataError: when the chunk does not match the first one, or its arrays
                do not share their number of rows.
        """
        if self._closed:
            raise DataError(
                f"cannot write to {self.path}: the writer is closed", path=str(self.path)
            )
        chunk = self._check(arrays)
        n = len(next(iter(chunk.values())))
        self._write(chunk, n)
        self._rows += n
        self._chunks += 1

    def close(self) -> None:
        """Finish the file and move it onto :attr:`path` (replacing any file there)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish()
            self._tmp.replace(self.path)
        except BaseException:
            self._cleanup()
            raise
        self._cleanup()

    def abort(self) -> None:
        """Drop everything written; :attr:`path` is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            self._discard()
        finally:
            self._cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({os.fspath(self.path)!r}, rows={self._rows})"

    # -- for subclasses -------------------------------------------------------------

    @abstractmethod
    def _write(self, chunk: dict[str, Array], n: int) -> None:
        """Append the checked ``chunk`` of ``n`` rows (the first call sees :attr:`schema` set)."""

    @abstractmethod
    def _finish(self) -> None:
        """Complete the temporary file (schema may still be ``None`` when nothing was written)."""

    def _discard(self) -> None:  # noqa: B027 - optional hook
        """Release resources after an error (before the temporary files are removed)."""

    def _cleanup(self) -> None:
        """Remove the temporary file, if still there."""
        self._tmp.unlink(missing_ok=True)

    # -- checks ---------------------------------------------------------------------

    def _check(self, arrays: Mapping[str, npt.ArrayLike]) -> dict[str, Array]:
        where = f"chunk {self._chunks} for {self.path}"
        given: object = arrays  # checked at run time: callers may pass anything
        if not isinstance(given, Mapping) or not given:
            raise DataError(f"{where}: expected a non-empty dict of arrays", path=str(self.path))
        chunk: dict[str, Array] = {}
        for name, value in arrays.items():
            array = np.asarray(value)
            if not array.dtype.isnative:  # e.g. big-endian data straight from a ROOT file
                array = array.astype(array.dtype.newbyteorder("="))
            if array.dtype.kind not in _NUMERIC_KINDS:
                raise DataError(
                    f"{where}: array {name!r} has dtype {array.dtype}; "
                    "expected a boolean, integer or floating-point array",
                    path=str(self.path),
                )
            if array.ndim == 0:
                raise DataError(
                    f"{where}: array {name!r} is a scalar; expected one value per row",
                    path=str(self.path),
                )
            if 0 in array.shape[1:]:
                raise DataError(
                    f"{where}: array {name!r} has shape {array.shape}; "
                    "dimensions after the first must not be empty",
                    path=str(self.path),
                )
            chunk[name] = array
        lengths = {name: len(a) for name, a in chunk.items()}
        if len(set(lengths.values())) > 1:
            listing = ", ".join(f"{name}: {n}" for name, n in lengths.items())
            raise DataError(
                f"{where}: the arrays must have the same number of rows, got {listing}",
                path=str(self.path),
            )
        if self.schema is None:
            self.schema = self._first_schema(chunk, where)
        else:
            self._compare(chunk, where)
        return chunk

    def _first_schema(self, chunk: dict[str, Array], where: str) -> dict[str, ArraySchema]:
        for name in chunk:
            if not name or "/" in name or name.startswith("__"):
                raise DataError(
                    f"{where}: array name {name!r} is not allowed "
                    "(it must be non-empty, without '/', and not start with '__')",
                    path=str(self.path),
                )
        unknown = sorted(set(self._columns) - set(chunk))
        if unknown:
            raise DataError(
                f"{where}: columns are given for {', '.join(map(repr, unknown))}, "
                f"which the chunk does not have (it has {', '.join(map(repr, chunk))})",
                path=str(self.path),
            )
        schema: dict[str, ArraySchema] = {}
        taken: dict[str, str] = {name: f"array {name!r}" for name in chunk}
        for name, array in chunk.items():
            names = self._columns.get(name)
            if names is not None:
                if array.ndim != 2 or array.shape[1] != len(names):
                    raise DataError(
                        f"{where}: {len(names)} column names are given for array {name!r}, "
                        f"which has shape {array.shape}; expected shape (n, {len(names)})",
                        path=str(self.path),
                    )
                for column in names:
                    owner = taken.get(column)
                    if owner is not None and owner != f"array {name!r}":
                        raise DataError(
                            f"{where}: column name {column!r} of array {name!r} "
                            f"is also the name of {owner}; names must be unique",
                            path=str(self.path),
                        )
                    taken[column] = f"a column of array {name!r}"
            schema[name] = ArraySchema(
                name, array.dtype, tuple(array.shape[1:]), None if names is None else names
            )
        return schema

    def _compare(self, chunk: dict[str, Array], where: str) -> None:
        assert self.schema is not None
        missing = [name for name in self.schema if name not in chunk]
        extra = [name for name in chunk if name not in self.schema]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"unexpected {', '.join(map(repr, extra))}")
            raise DataError(
                f"{where}: the arrays differ from the first chunk's ({'; '.join(parts)})",
                path=str(self.path),
            )
        for name, want in self.schema.items():
            array = chunk[name]
            if array.dtype != want.dtype:
                raise DataError(
                    f"{where}: array {name!r} changed dtype from {want.dtype} "
                    f"(first chunk) to {array.dtype}",
                    path=str(self.path),
                )
            if tuple(array.shape[1:]) != want.shape:
                raise DataError(
                    f"{where}: array {name!r} changed shape from {want.describe()} "
                    f"(first chunk) to {array.dtype}[{', '.join(['n', *map(str, array.shape[1:])])}]",
                    path=str(self.path),
                )

    def _layout(self) -> dict[str, dict[str, Any]]:
        """The arrays' dtypes, trailing shapes and column names, for the file's metadata."""
        return {
            s.name: {
                "dtype": s.dtype.str,
                "shape": list(s.shape),
                **({"columns": list(s.columns)} if s.columns is not None else {}),
            }
            for s in (self.schema or {}).values()
        }


class ParquetWriter(TensorWriter):
    """Tensors to a Parquet file, one row group per chunk."""

    format = "parquet"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Any] | None = None,
        columns: Mapping[str, Sequence[str]] | None = None,
        compression: str | None = "default",
    ) -> None:
        _pq()  # fail early when pyarrow is missing
        super().__init__(path, metadata=metadata, columns=columns, compression=compression)
        self._writer: Any = None
        self._arrow_schema: Any = None

    def _open(self, schema: Any) -> None:
        meta = {LAYOUT_KEY: json.dumps(self._layout())}
        if self._metadata_json is not None:
            meta[METADATA_KEY] = self._metadata_json
        self._arrow_schema = schema.with_metadata(meta)
        self._writer = _pq().ParquetWriter(
            self._tmp,
            self._arrow_schema,
            compression=self.compression,
            compression_level=self.compression_level,
            # dictionaries do not pay off for float tensors and cost time
            use_dictionary=False,
        )

    def _write(self, chunk: dict[str, Array], n: int) -> None:
        assert self.schema is not None
        names: list[str] = []
        columns: list[Any] = []
        for name, spec in self.schema.items():
            array = chunk[name]
            if spec.columns is not None:
                # one contiguous copy, then each feature is a zero-copy column
                transposed = np.ascontiguousarray(array.T)
                names.extend(spec.columns)
                columns.extend(_pa().array(transposed[j]) for j in range(len(spec.columns)))
            else:
                names.append(name)
                columns.append(_to_arrow(array))
        table = _pa().Table.from_arrays(columns, names=names)
        if self._writer is None:
            self._open(table.schema)
        if n == 0:
            return
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=n)

    def _finish(self) -> None:
        if self._writer is None:  # nothing written: an empty file with the metadata
            self._open(_pa().schema([]))
        assert self._writer is not None
        self._writer.close()

    def _discard(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()


def _to_arrow(array: Array) -> Any:
    """A numpy array of rank ≥ 1 as an Arrow array (nested FixedSizeList for rank ≥ 2)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    out: Any = _pa().array(flat)
    for size in reversed(array.shape[1:]):
        out = _pa().FixedSizeListArray.from_arrays(out, size)
    return out


class Hdf5Writer(TensorWriter):
    """Tensors to an HDF5 file, one resizable dataset per array."""

    format = "hdf5"

    #: Target size of one HDF5 chunk (bytes).
    chunk_bytes = 1 << 20

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Any] | None = None,
        columns: Mapping[str, Sequence[str]] | None = None,
        compression: str | None = "default",
    ) -> None:
        h5py = _h5py()  # fail early when h5py is missing
        super().__init__(path, metadata=metadata, columns=columns, compression=compression)
        # a cache of a few chunks per dataset keeps the partial chunk at the end of
        # each dataset in memory between writes instead of re-reading/re-compressing it
        try:
            self._file: Any = h5py.File(
                self._tmp, "w", track_order=True, rdcc_nbytes=4 * self.chunk_bytes, rdcc_nslots=1009
            )
        except OSError as err:
            self._cleanup()
            raise DataError(f"cannot write {self.path}: {err}", path=str(self.path)) from err
        if self._metadata_json is not None:
            self._file.attrs[METADATA_KEY] = self._metadata_json

    def _write(self, chunk: dict[str, Array], n: int) -> None:
        assert self.schema is not None
        for name, spec in self.schema.items():
            if name not in self._file:
                self._create(spec)
            dataset = self._file[name]
            if n:
                dataset.resize(self._rows + n, axis=0)
                dataset[self._rows : self._rows + n] = chunk[name]

    def _create(self, spec: ArraySchema) -> None:
        row_bytes = spec.dtype.itemsize * int(np.prod(spec.shape, dtype=np.int64))
        rows = max(1, self.chunk_bytes // max(row_bytes, 1))
        options: dict[str, Any] = {}
        if self.compression != "none":
            options["compression"] = self.compression
            if self.compression_level is not None:
                options["compression_opts"] = self.compression_level
        dataset = self._file.create_dataset(
            spec.name,
            shape=(0, *spec.shape),
            maxshape=(None, *spec.shape),
            chunks=(rows, *spec.shape),
            dtype=spec.dtype,
            **options,
        )
        if spec.columns is not None:
            dataset.attrs["columns"] = list(spec.columns)

    def _finish(self) -> None:
        self._file.close()

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()


class NpzWriter(TensorWriter):
    """Tensors to a ``.npz`` file (numpy's zip of ``.npy`` files), streamed together on close."""

    format = "npz"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Any] | None = None,
        columns: Mapping[str, Sequence[str]] | None = None,
        compression: str | None = "default",
    ) -> None:
        super().__init__(path, metadata=metadata, columns=columns, compression=compression)
        try:
            self._shards = Path(
                tempfile.mkdtemp(
                    prefix=f".{self.path.name}.", suffix=".shards", dir=self.path.parent
                )
            )
        except OSError as err:
            super()._cleanup()
            raise DataError(f"cannot write {self.path}: {err}", path=str(self.path)) from err
        self._files: dict[str, Path] = {}

    def _write(self, chunk: dict[str, Array], n: int) -> None:
        assert self.schema is not None
        for i, name in enumerate(self.schema):
            shard = self._files.setdefault(name, self._shards / f"{i}.raw")
            if n or not shard.exists():
                with shard.open("ab") as f:
                    np.ascontiguousarray(chunk[name]).tofile(f)

    def _finish(self) -> None:
        deflate = self.compression == "deflate"
        with zipfile.ZipFile(
            self._tmp,
            "w",
            compression=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED,
            compresslevel=self.compression_level,
            allowZip64=True,
        ) as zf:
            for name, spec in (self.schema or {}).items():
                header = np.lib.format.header_data_from_array_1_0(
                    np.empty((0, *spec.shape), dtype=spec.dtype)
                )
                header["shape"] = (self._rows, *spec.shape)
                with (
                    zf.open(f"{name}.npy", "w", force_zip64=True) as entry,
                    self._files[name].open("rb") as shard,
                ):
                    np.lib.format.write_array_header_1_0(entry, header)
                    shutil.copyfileobj(shard, entry, 1 << 22)
                self._files[name].unlink()
            if self.schema is not None and any(s.columns for s in self.schema.values()):
                columns = {s.name: list(s.columns) for s in self.schema.values() if s.columns}
                _write_npy(zf, _NPZ_COLUMNS, np.array(json.dumps(columns)))
            if self._metadata_json is not None:
                _write_npy(zf, _NPZ_METADATA, np.array(self._metadata_json))

    def _cleanup(self) -> None:
        super()._cleanup()
        shutil.rmtree(self._shards, ignore_errors=True)


def _write_npy(zf: zipfile.ZipFile, name: str, array: Array) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as entry:
        np.lib.format.write_array(entry, array, allow_pickle=False)


_WRITERS: dict[str, type[TensorWriter]] = {
    "parquet": ParquetWriter,
    "hdf5": Hdf5Writer,
    "npz": NpzWriter,
}


def open_writer(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    columns: Mapping[str, Sequence[str]] | None = None,
    compression: str | None = "default",
) -> TensorWriter:
    """A writer of tensors to ``path``, to use in a ``with`` block.

    Args:
        path: the output file; its suffix picks the format when ``fmt`` is not given.
        fmt: ``parquet``, ``hdf5`` or ``npz``.
        metadata: a JSON-serialisable dict (e.g. the feature spec) stored in the file.
        columns: per ``[n, F]`` array, the names of its ``F`` columns (unique).
        compression: ``"default"`` (zstd for Parquet, lzf for HDF5, none for npz),
            ``None`` / ``"none"``, or a codec of the format, optionally with a level:
            Parquet ``zstd``, ``snappy``, ``lz4``, ``gzip``, ``brotli``; HDF5 ``lzf``,
            ``gzip``; npz ``deflate`` (e.g. ``"gzip:4"``).

    Raises:
        ConfigError: for an unknown format or compression, metadata that is not
            JSON, or malformed column names.
        DataError: when the target directory does not exist.
    """
    return _WRITERS[infer_format(path, fmt)](
        path, metadata=metadata, columns=columns, compression=compression
    )


# ---------------------------------------------------------------------------
# readers


def _read_errors(kind: str) -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this file cannot be read as ``kind``"."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, zipfile.BadZipFile)
    return (*errors, _pa().ArrowException) if kind == "parquet" else errors


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"file not found: {p}", path=str(p))
    return p


def read_tensors(path: str | os.PathLike[str], fmt: str | None = None) -> dict[str, Array]:
    """All arrays of a file written by :func:`open_writer` (or a plain Parquet/HDF5/npz file).

    Per-feature Parquet columns come back as the one ``[n, F]`` array they were written from.

    Raises:
        DataError: when the file is missing or cannot be read.
        ConfigError: for an unknown format.
    """
    kind = infer_format(path, fmt)
    p = _existing(path)
    errors = _read_errors(kind)
    try:
        if kind == "parquet":
            return _read_parquet(p)
        if kind == "hdf5":
            with _h5py().File(p, "r") as f:
                return {
                    name: np.asarray(obj[()])
                    for name, obj in f.items()
                    if isinstance(obj, _h5py().Dataset)
                }
        with np.load(p, allow_pickle=False) as npz:
            return {
                name: npz[name]
                for name in npz.files
                if not (name.startswith("__") and name.endswith("__"))
            }
    except errors as err:
        raise DataError(f"cannot read {p} as {kind}: {err}", path=str(p)) from err


def _read_parquet(path: Path) -> dict[str, Array]:
    table = _pq().read_table(path)
    meta = table.schema.metadata or {}
    layout: dict[str, dict[str, Any]] | None = None
    if LAYOUT_KEY.encode() in meta:
        layout = json.loads(meta[LAYOUT_KEY.encode()])
    if layout is None:  # a file from elsewhere: one array per column
        layout = {name: {} for name in table.column_names}
    n = table.num_rows
    out: dict[str, Array] = {}
    for name, info in layout.items():
        dtype = np.dtype(info["dtype"]) if "dtype" in info else None
        names = info.get("columns")
        if names is not None:
            assert dtype is not None
            array = np.empty((n, len(names)), dtype=dtype)
            for j, column in enumerate(names):
                array[:, j] = _column_numpy(table.column(column), column)
        else:
            array = _column_numpy(table.column(name), name)
        if dtype is not None and array.dtype != dtype:
            array = array.astype(dtype)
        out[name] = array
    return out


def _column_numpy(column: Any, name: str) -> Array:
    """A Parquet column (primitive or nested FixedSizeList) as an ``[n, ...]`` numpy array."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    shape: list[int] = []
    while _pa().types.is_fixed_size_list(array.type):
        shape.append(array.type.list_size)
        array = array.flatten()
    if not (
        _pa().types.is_integer(array.type)
        or _pa().types.is_floating(array.type)
        or _pa().types.is_boolean(array.type)
    ):
        raise DataError(f"column {name!r} has type {column.type}; expected a numeric tensor")
    if array.null_count:
        raise DataError(f"column {name!r} has missing values; expected a dense tensor")
    return np.asarray(array.to_numpy(zero_copy_only=False)).reshape(len(column), *shape)


def read_metadata(path: str | os.PathLike[str], fmt: str | None = None) -> dict[str, Any] | None:
    """The ``metadata`` dict stored by :func:`open_writer`, or ``None`` when there is none."""
    text = _read_attribute(path, fmt, METADATA_KEY, _NPZ_METADATA)
    return None if text is None else dict(json.loads(text))


def read_columns(path: str | os.PathLike[str], fmt: str | None = None) -> dict[str, list[str]]:
    """The column names stored per array (empty when none were given)."""
    kind = infer_format(path, fmt)
    p = _existing(path)
    try:
        if kind == "hdf5":
            with _h5py().File(p, "r") as f:
                return {
                    name: [str(c) for c in obj.attrs["columns"]]
                    for name, obj in f.items()
                    if isinstance(obj, _h5py().Dataset) and "columns" in obj.attrs
                }
    except OSError as err:
        raise DataError(f"cannot read {p} as {kind}: {err}", path=str(p)) from err
    text = _read_attribute(p, kind, LAYOUT_KEY, _NPZ_COLUMNS)
    if text is None:
        return {}
    data = json.loads(text)
    if kind == "parquet":
        return {name: info["columns"] for name, info in data.items() if "columns" in info}
    return {str(name): list(names) for name, names in data.items()}


def _read_attribute(
    path: str | os.PathLike[str], fmt: str | None, key: str, npz_key: str
) -> str | None:
    kind = infer_format(path, fmt)
    p = _existing(path)
    errors = _read_errors(kind)
    try:
        if kind == "parquet":
            meta = _pq().read_schema(p).metadata or {}
            value = meta.get(key.encode())
            return None if value is None else bytes(value).decode()
        if kind == "hdf5":
            with _h5py().File(p, "r") as f:
                attr = f.attrs.get(key)
                return None if attr is None else str(attr)
        with np.load(p, allow_pickle=False) as npz:
            return str(npz[npz_key][()]) if npz_key in npz.files else None
    except errors as err:
        raise DataError(f"cannot read {p} as {kind}: {err}", path=str(p)) from err
