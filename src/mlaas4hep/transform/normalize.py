"""Per-feature normalisation chosen from first-pass statistics.

Computed on real entries only; the vector transform applies it to real
entries before padding, so padding stays padding.
"""

from __future__ import annotations

import numpy as np

from mlaas4hep.errors import ConfigError
from mlaas4hep.transform.spec import Normalization, ValueStats

METHODS = ("none", "minmax", "standard", "robust")


def choose(
    stats: ValueStats | None, method: str, *, log: bool = False, name: str = ""
) -> Normalization:
    """The normalisation ``method`` (optionally after ``log1p``) for a branch with ``stats``."""
    if method not in METHODS:
        raise ConfigError(f"normalisation must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "none" and not log:
        return Normalization()
    if stats is None or stats.count == 0:
        return Normalization(method="none", log=False)
    if log and stats.min < 0:
        raise ConfigError(
            f"log normalisation of {name or 'a branch'} needs non-negative values "
            f"(minimum seen {stats.min:g})"
        )

    def f(x: float) -> float:
        return float(np.log1p(x)) if log else x

    if method == "none":
        shift, scale = 0.0, 1.0
    elif method == "minmax":
        shift, scale = f(stats.min), f(stats.max) - f(stats.min)
    elif method == "standard":
        if log:
            assert stats.log_mean is not None
            assert stats.log_std is not None
            shift, scale = stats.log_mean, stats.log_std
        else:
            shift, scale = stats.mean, stats.std
    else:
        q = stats.quantiles
        shift, scale = f(q["0.5"]), f(q["0.75"]) - f(q["0.25"])
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0  # a constant feature: shift only
    return Normalization(method=method, log=log, shift=float(shift), scale=float(scale))


def apply(values: np.ndarray, norm: Normalization, out: np.ndarray | None = None) -> np.ndarray:
    """Normalised float32 values (real entries only), written to ``out`` when given."""
    if out is None:
        out = np.empty(values.shape, dtype=np.float32)
    out[...] = values
    if norm.log:
        np.log1p(out, out=out)
    if norm.shift != 0.0:
        out -= np.float32(norm.shift)
    if norm.scale != 1.0:
        out *= np.float32(1.0 / norm.scale)
    return out
