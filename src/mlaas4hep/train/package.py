"""The model package: the directory ``mlaas4hep train`` writes and the server loads.

::

    model/
      metadata.json   what the model is, how it was trained, checksums of the rest
      model.onnx      served by ONNX Runtime (inputs as in metadata, output "probabilities")
      model.pt        the native model (model.keras, model.joblib, model.json)
      features.json   the feature spec: how raw events become the inputs
      labels.txt      one class label per line, in the order of the probability columns
      preprocess.py   the user preprocessing the spec was computed with (when there was one)
      metrics.json    evaluation metrics (optional)
      plots/          evaluation plots (optional)

``metadata.json`` is a versioned JSON document (``"schema": "mlaas4hep.model"``,
``"version": 1``) with the SHA-256 of every other file, so a package that was
modified or damaged after it was written is detected when it is loaded.
Packages are written into a temporary directory beside the target and renamed
into place, so a failure never leaves a half-written package.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.predict.events import EventInputs
from mlaas4hep.train.export import ExportedModel, TensorInfo, framework_versions, load_native
from mlaas4hep.transform.spec import FeatureSpec

SCHEMA = "mlaas4hep.model"
VERSION = 1
METADATA = "metadata.json"
FEATURES = "features.json"
LABELS = "labels.txt"
PREPROCESSING = "preprocess.py"
METRICS = "metrics.json"
PLOTS = "plots"
REQUIRED = ("name", "framework", "inputs", "outputs", "labels", "files", "checksums")
"""Metadata fields a package must have besides ``schema`` and ``version``."""


@dataclass(eq=False)
class ModelPackage:
    """A loaded, verified model package.

    The ONNX Runtime session is created on the first :meth:`predict` (or
    :attr:`session` access), so loading a package to read its metadata is cheap.
    """

    path: Path
    metadata: dict[str, Any]
    spec: FeatureSpec
    labels: list[str]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    framework: str
    threads: int = 0
    """ONNX Runtime intra-op threads; 0: its default (all cores)."""
    _session: Any = field(default=None, init=False, repr=False)

    @property
    def onnx_path(self) -> Path:
        """The ONNX model file."""
        return self.path / str(self.metadata["files"]["onnx"])

    @property
    def native_path(self) -> Path:
        """The framework's own model file."""
        return self.path / str(self.metadata["files"]["native"])

    @property
    def session(self) -> Any:
        """The ONNX Runtime inference session (CPU), created on first use."""
        if self._session is None:
            import onnxruntime as ort  # type: ignore[import-untyped]

            options = ort.SessionOptions()
            options.log_severity_level = 3
            if self.threads > 0:
                options.intra_op_num_threads = self.threads
                # beside other busy processes, spinning threads only steal their cores
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(
                str(self.onnx_path), options, providers=["CPUExecutionProvider"]
            )
        return self._session

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Class probabilities ``[batch, K]`` for ``inputs`` (by input name).

        Raises :class:`ConfigError` naming missing or unexpected inputs, or an
        input whose shape is not the expected one.
        """
        feeds = self._check_inputs(inputs)
        return np.asarray(self.session.run([self.outputs[0].name], feeds)[0])

    @property
    def preprocessing_path(self) -> Path | None:
        """The packaged preprocessing module, or ``None`` when the model was trained without."""
        name = self.metadata["files"].get("preprocessing")
        return None if name is None else self.path / str(name)

    def event_inputs(self) -> EventInputs:
        """How raw events become this model's inputs (its spec and preprocessing).

        The preprocessing module is Python code: load only packages you trust.
        """
        names = [i.name for i in self.inputs]
        return EventInputs.from_package_files(self.spec, names, self.preprocessing_path)

    def predict_events(self, events: Any, *, where: str = "the events") -> np.ndarray:
        """Class probabilities for raw events (an awkward record array), one row per
        event; NaN rows for events the preprocessing's selection drops."""
        prepared = self.event_inputs().prepare(events, where=where)
        return prepared.scatter(self.predict(prepared.inputs))

    def load_native(self) -> Any:
        """The model in its framework (TorchScript module, Keras model, estimator, ...).

        A scikit-learn package is a pickle: load only packages you trust.
        """
        return load_native(self.framework, self.native_path)

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expected = [i.name for i in self.inputs]
        missing = [n for n in expected if n not in inputs]
        extra = [n for n in inputs if n not in expected]
        if missing or extra:
            parts = [
                f"missing {missing}" if missing else "",
                f"unexpected {extra}" if extra else "",
            ]
            raise ConfigError(
                f"model {self.metadata['name']!r} takes inputs {expected}: "
                + ", ".join(p for p in parts if p)
            )
        feeds: dict[str, np.ndarray] = {}
        batches: set[int] = set()
        for info in self.inputs:
            array = np.asarray(inputs[info.name])
            if array.dtype.kind not in "biuf":
                raise ConfigError(f"input {info.name!r} has dtype {array.dtype}, not a number")
            fits = array.ndim == len(info.shape) and all(
                want in {-1, got} for want, got in zip(info.shape, array.shape, strict=True)
            )
            if not fits:
                raise ConfigError(
                    f"input {info.name!r} has shape {list(array.shape)}, expected {info.shape} "
                    "(-1: any size)"
                )
            batches.add(array.shape[0])
            feeds[info.name] = np.ascontiguousarray(array, dtype=_NUMPY[info.datatype])
        if len(batches) > 1:
            sizes = {n: len(a) for n, a in feeds.items()}
            raise ConfigError(f"the inputs have different batch sizes: {sizes}")
        return feeds


_NUMPY: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


def write_package(
    directory: str | Path,
    exported: ExportedModel,
    *,
    spec: FeatureSpec,
    labels: Sequence[str],
    name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    plots: Sequence[str | Path] = (),
    preprocessing: str | Path | None = None,
) -> Path:
    """Write a model package into ``directory`` and return its path.

    ``labels`` name the probability columns in order (a single-column model
    may name one class, or two: the column is the probability of the last).
    ``params`` are the training parameters and ``metrics`` the evaluation
    results (non-finite numbers are written as ``null``); ``plots`` are
    copied into ``plots/``. ``preprocessing`` is the module the spec was
    computed with (required when the spec records one; checked by hash), packaged
    so that raw events can be scored as in training.

    An existing package in ``directory`` is replaced, and so is a directory
    that holds only the exported model files; any other non-empty directory
    raises :class:`ConfigError`.
    """
    target = Path(directory)
    _check_target(target, exported)
    labels = [str(label) for label in labels]
    _check_labels(labels, exported)
    plot_files = [Path(p) for p in plots]
    preprocessing_file = _check_preprocessing(spec, preprocessing)
    for plot in plot_files:
        if not plot.is_file():
            raise ConfigError(f"plot {plot} does not exist")
    if len({p.name for p in plot_files}) != len(plot_files):
        raise ConfigError(f"two plots have the same file name: {[str(p) for p in plot_files]}")

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a server may run as another user
        files = {
            "onnx": "model.onnx",
            "native": exported.native.name,
            "features": FEATURES,
            "labels": LABELS,
        }
        shutil.copyfile(exported.onnx, staging / files["onnx"])
        shutil.copyfile(exported.native, staging / files["native"])
        spec.save(staging / FEATURES)
        (staging / LABELS).write_text("".join(f"{label}\n" for label in labels))
        if preprocessing_file is not None:
            files["preprocessing"] = PREPROCESSING
            shutil.copyfile(preprocessing_file, staging / PREPROCESSING)
        if metrics is not None:
            files["metrics"] = METRICS
            _write_json(staging / METRICS, metrics)
        if plot_files:
            (staging / PLOTS).mkdir()
            for plot in plot_files:
                shutil.copyfile(plot, staging / PLOTS / plot.name)
        metadata = {
            "schema": SCHEMA,
            "version": VERSION,
            "name": name,
            "framework": exported.framework,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "inputs": [i.to_dict() for i in exported.inputs],
            "outputs": [o.to_dict() for o in exported.outputs],
            "labels": labels,
            "layout": spec.layout,
            "columns": spec.columns(),
            "training": {"data_hash": spec.data_hash, "params": params},
            "versions": framework_versions(),
            "files": files,
            "plots": [f"{PLOTS}/{p.name}" for p in plot_files],
            "checksums": _checksums(staging),
            "max_onnx_deviation": exported.max_deviation,
        }
        _write_json(staging / METADATA, metadata)
        _replace(target, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_package(path: str | Path) -> ModelPackage:
    """Read and verify a model package.

    Raises :class:`ConfigError` when ``metadata.json`` is missing, unreadable,
    of another schema or version, or lacks a field, and :class:`DataError`
    naming the file when a packaged file is missing or its checksum differs.
    """
    root = Path(path)
    metadata_path = root / METADATA
    try:
        metadata = json.loads(metadata_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{root} is not a model package: {METADATA} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{metadata_path} cannot be read: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("schema") != SCHEMA:
        raise ConfigError(f"{metadata_path} is not model package metadata (schema {SCHEMA!r})")
    if metadata.get("version") != VERSION:
        raise ConfigError(
            f"{metadata_path} has package version {metadata.get('version')}; "
            f"this release reads {VERSION}"
        )
    missing = [key for key in REQUIRED if key not in metadata]
    if missing:
        raise ConfigError(f"{metadata_path} lacks {', '.join(missing)}")
    try:
        files = {str(k): str(v) for k, v in metadata["files"].items()}
        checksums = {str(k): str(v) for k, v in metadata["checksums"].items()}
        inputs = [TensorInfo.from_dict(i) for i in metadata["inputs"]]
        outputs = [TensorInfo.from_dict(o) for o in metadata["outputs"]]
        labels = [str(label) for label in metadata["labels"]]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{metadata_path} is malformed: {exc!r}") from exc
    lacking = [role for role in ("onnx", "native", "features") if role not in files]
    if lacking:
        raise ConfigError(f"{metadata_path} names no {', '.join(lacking)} file")
    if not outputs:
        raise ConfigError(f"{metadata_path} lists no outputs")
    unlisted = sorted(set(files.values()) - set(checksums))
    if unlisted:
        raise ConfigError(f"{metadata_path} has no checksum of {', '.join(unlisted)}")
    _verify_checksums(root, checksums)
    return ModelPackage(
        path=root,
        metadata=metadata,
        spec=FeatureSpec.load(root / files["features"]),
        labels=labels,
        inputs=inputs,
        outputs=outputs,
        framework=str(metadata["framework"]),
    )


# -- helpers ----------------------------------------------------------------


def _check_target(target: Path, exported: ExportedModel) -> None:
    """Refuse to replace a non-empty directory that is neither a package nor the export."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ConfigError(f"{target} exists and is not a directory")
    if _is_package(target):
        return
    ours = {exported.onnx.resolve(), exported.native.resolve()}
    others = [p for p in target.iterdir() if p.resolve() not in ours]
    if others:
        raise ConfigError(
            f"{target} is not empty and not a model package; choose another directory or empty it"
        )


def _check_preprocessing(spec: FeatureSpec, preprocessing: str | Path | None) -> Path | None:
    """The preprocessing file to package: the one the spec records, checked by hash."""
    if spec.preprocessing is None:
        if preprocessing is not None:
            raise ConfigError("the feature spec was computed without preprocessing")
        return None
    if preprocessing is None:
        raise ConfigError(
            "the feature spec was computed with preprocessing; give its module to package it"
        )
    path = Path(preprocessing)
    if not path.is_file():
        raise ConfigError(f"preprocessing module {path} does not exist")
    if _sha256(path) != spec.preprocessing["sha256"]:
        raise ConfigError(f"{path} is not the preprocessing the feature spec was computed with")
    return path


def _is_package(directory: Path) -> bool:
    try:
        metadata = json.loads((directory / METADATA).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(metadata, dict) and metadata.get("schema") == SCHEMA


def _check_labels(labels: list[str], exported: ExportedModel) -> None:
    if not labels or any(not label or "\n" in label or "\r" in label for label in labels):
        raise ConfigError(f"labels must be non-empty single-line names, got {labels}")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"labels are not unique: {labels}")
    columns = exported.outputs[0].shape[-1] if exported.outputs else -1
    allowed = {columns, 2} if columns == 1 else {columns}
    if columns != -1 and len(labels) not in allowed:
        raise ConfigError(
            f"the model gives {columns} probability column(s), "
            f"but {len(labels)} labels were given: {labels}"
        )


def _replace(target: Path, staging: Path) -> None:
    """Move ``staging`` to ``target``, replacing what is there only once all is written."""
    if not target.exists():
        staging.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` but the metadata, by POSIX relative path."""
    return {
        path.relative_to(root).as_posix(): _sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() != METADATA
    }


def _verify_checksums(root: Path, checksums: Mapping[str, str]) -> None:
    for relative, digest in checksums.items():
        path = root / relative
        if not path.is_file():
            raise DataError(f"model package file {path} is missing", path=str(path))
        if _sha256(path) != digest:
            raise DataError(
                f"model package file {path} is corrupted (its SHA-256 differs from "
                f"the one in {METADATA})",
                path=str(path),
            )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_plain(data), indent=1, allow_nan=False) + "\n")


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars and arrays unwrapped, NaN and ±inf as null."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


__all__ = ["ModelPackage", "load_package", "write_package"]
