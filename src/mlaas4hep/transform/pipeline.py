"""From streamed chunks to the arrays a model (or a file) takes, as a feature spec says.

Shared by ``mlaas4hep convert``, the training loaders, the server and ``mlaas4hep predict``,
so that every consumer applies exactly the same preprocessing and transform.
"""

from __future__ import annotations

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
from mlaas4hep.transform.spec import FeatureSpec
from mlaas4hep.transform.vector import VectorTransform


def stream_branches(source: Source, spec: FeatureSpec, label_branch: str | None) -> list[str]:
    """Every branch a spec's pipeline reads: features, label branch, image inputs."""
    wanted = [*spec.source_branches, *([label_branch] if label_branch else [])]
    if spec.images is not None:
        wanted += image_branches(source, spec)
    return list(dict.fromkeys(wanted))


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


def model_arrays(
    events: ak.Array, spec: FeatureSpec, vector: VectorTransform, *, where: str
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The model's arrays of ``events`` (after preprocessing) and the events each
    collection clipped: ``x`` and ``mask`` (flat layout), or ``x`` plus
    ``x_<collection>`` and ``mask_<collection>`` (grouped), and ``images``."""
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
    return arrays, clipped


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
    arrays, clipped = model_arrays(events, spec, vector, where=where)
    arrays |= {"label": labels, "weight": chunk.weight}
    for name in chunk.identifiers:
        arrays[name] = np.asarray(ak.to_numpy(events[name]))
    return arrays, clipped
