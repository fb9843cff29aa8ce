"""The conversion job: stream a dataset, apply the spec's transform, write tensors to a file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlaas4hep.data.branches import BranchSelection
from mlaas4hep.data.reader import EventStream
from mlaas4hep.data.sources import Source
from mlaas4hep.transform.pipeline import preprocessing_for, stream_branches, transform_chunk
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
    wanted = stream_branches(limited[0], spec, label_branch)
    selection = BranchSelection(include=wanted, identifiers=spec.identifiers)
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
