"""The conversion job: stream a dataset, apply the spec's transform, write tensors to a file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import awkward as ak
import numpy as np

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.chunk import Chunk
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.sources import Source
from mlaas4hep.errors import ConfigError, DataError
from mlaas4hep.transform.matrix import ImageSpec, make_images
from mlaas4hep.transform.preprocess import Preprocessing, load_preprocessing
from mlaas4hep.transform.scan import data_hash, identify_inputs
from mlaas4hep.transform.spec import FeatureSpec
from mlaas4hep.transform.vector import VectorTransform
from mlaas4hep.transform.writers import open_writer


@dataclass
class ConvertReport:
    """What a conversion wrote."""

    events: int = 0
    written: int = 0
    clipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def preprocessing_for(spec: FeatureSpec, path: str | Path | None) -> Preprocessing | None:
    """The preprocessing a spec was made with, checked by hash against ``path``."""
    recorded = spec.preprocessing
    if recorded is None:
        if path is not None:
            raise ConfigError(
                "the feature spec was computed without preprocessing; rescan with --preproc"
            )
        return None
    loaded = load_preprocessing(path or recorded["path"])
    if loaded.sha256 != recorded["sha256"]:
        raise ConfigError(
            f"{loaded.path} is not the preprocessing the feature spec was computed with "
            f"(sha256 {loaded.sha256[:12]}, spec {recorded['sha256'][:12]}); rescan"
        )
    return loaded


def image_branches(source: Source, spec: FeatureSpec) -> list[str]:
    """The branches the spec's event images read, as found in ``source``."""
    assert spec.images is not None
    with EventStream(
        [source], BranchSelection(identifiers=[]), tree=spec.tree, prefetch=0
    ) as probe:
        available = probe.features
    return ImageSpec.from_dict(spec.images).branches(available)


def chunk_origin(stream: EventStream, chunk: Chunk) -> str:
    """The file names a chunk's events come from, for error messages."""
    urls = [stream.sources[i].url for i in np.unique(chunk.source)]
    return ", ".join(urls[:3]) + (f" and {len(urls) - 3} more" if len(urls) > 3 else "")


def transform_chunk(
    stream: EventStream,
    chunk: Chunk,
    spec: FeatureSpec,
    vector: VectorTransform,
    preprocessing: Preprocessing | None,
    *,
    label_branch: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The arrays to write for one chunk, and the events each collection clipped."""
    where = chunk_origin(stream, chunk)
    events = chunk.arrays
    labels = chunk.label
    if preprocessing is not None:
        events, mask, own_labels = preprocessing.apply(events, where=where)
        if own_labels is not None:
            labels = own_labels
        if mask is not None:
            events, chunk = events[mask], chunk.take(mask)
            labels = labels[mask]
    if label_branch is not None:
        if label_branch not in events.fields:
            raise DataError(f"label branch {label_branch!r} is missing in {where}")
        labels = np.asarray(ak.to_numpy(events[label_branch]), dtype=np.float64)
    arrays: dict[str, np.ndarray] = {}
    if spec.layout == "flat":
        flat = vector.flat(events, where=where)
        arrays |= {"x": flat.x, "mask": flat.mask}
        clipped = flat.clipped
    else:
        grouped = vector.grouped(events, where=where)
        arrays["x"] = grouped.flat
        for name in grouped.collections:
            arrays[f"x_{name}"] = grouped.collections[name]
            arrays[f"mask_{name}"] = grouped.masks[name]
        clipped = grouped.clipped
    if spec.images is not None:
        arrays["images"] = make_images(events, ImageSpec.from_dict(spec.images))
    arrays |= {"label": labels, "weight": chunk.weight}
    for name in chunk.identifiers:
        arrays[name] = np.asarray(ak.to_numpy(events[name]))
    return arrays, clipped


def convert(
    sources: Sequence[Source],
    spec: FeatureSpec,
    out: str | Path,
    *,
    fmt: str | None = None,
    preprocessing: str | Path | None = None,
    label_branch: str | None = None,
    allow_other_data: bool = False,
    nevts: int = -1,
    step_size: int | str = "100 MB",
    shuffle: bool = False,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> ConvertReport:
    """Write the transformed tensors of ``sources`` to ``out`` (Parquet, HDF5 or npz)."""
    report = ConvertReport()
    loaded = preprocessing_for(spec, preprocessing)
    limited, inputs = identify_inputs(sources, spec.tree, nevts)
    hash_now = data_hash(
        limited, inputs, spec.tree, spec.source_branches, loaded.sha256 if loaded else None
    )
    warning = spec.check_data(hash_now, allow_other=allow_other_data)
    if warning:
        report.warnings.append(warning)
    wanted = [*spec.source_branches, *([label_branch] if label_branch else [])]
    if spec.images is not None:
        wanted += image_branches(limited[0], spec)
    selection = BranchSelection(include=list(dict.fromkeys(wanted)), identifiers=spec.identifiers)
    vector = VectorTransform(spec)
    columns = {"x": spec.columns()} if spec.layout == "flat" else None
    with (
        EventStream(
            sources,
            selection,
            tree=spec.tree,
            step_size=step_size,
            nevts=nevts,
            shuffle=shuffle,
            seed=seed,
        ) as stream,  # fmt: skip
        open_writer(out, fmt, metadata=spec.to_dict(), columns=columns) as writer,
    ):
        for chunk in stream.iter_epoch(0):
            arrays, clipped = transform_chunk(
                stream, chunk, spec, vector, loaded, label_branch=label_branch
            )
            writer.write(arrays)
            report.events += len(chunk)
            report.written += len(arrays["weight"])
            for name, n in clipped.items():
                report.clipped[name] = report.clipped.get(name, 0) + n
            if progress:
                progress(len(chunk))
    return report
