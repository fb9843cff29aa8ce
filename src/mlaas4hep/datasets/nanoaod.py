"""A toy NanoAOD-like event generator: ttbar-like signal, W+jets-like background.

The demo, the tests and the benchmarks need realistic HEP data without a download:
jagged collections (jets, leptons, particle-flow candidates) next to flat
event-level branches, with the branch names, dtypes and counter branches of CMS
NanoAOD. This module draws such events with vectorised numpy (no per-event Python
loop) and writes them as a ROOT TTree or RNTuple with uproot.

* ``signal`` is ttbar → lepton + jets: at least four jets (two from b quarks,
  two from the hadronic W, plus radiation), exactly one isolated lepton, real
  missing transverse momentum from the neutrino, harder jets.
* ``background`` is W + jets: a Poisson number of softer jets with a power-law
  spectrum, one isolated lepton and missing transverse momentum; 30 % of it is
  W + bb, with two b jets.

The distributions overlap on purpose (background events can have four or more
jets and b-tagged jets), so a classifier learns something without separating the
two samples perfectly (a plain MLP on padded jets, leptons and MET reaches a ROC
AUC of about 0.95).

Floats keep NanoAOD's reduced mantissa precision (10 to 12 bits for most
quantities), which also makes the files compress like real NanoAOD.

Determinism: the random numbers of event number ``k`` of a sample depend only on
``(seed, sample, k)`` (events are drawn in fixed blocks of :data:`RNG_BLOCK`
events, each block with its own seeded generator), so the same events come out
however a dataset is split into files or written in pieces.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import awkward as ak
import numpy as np
import numpy.typing as npt
import uproot

from mlaas4hep.errors import ConfigError

__all__ = [
    "BRANCHES",
    "COLLECTIONS",
    "COMPRESSIONS",
    "EVENTS_PER_BASKET",
    "FORMATS",
    "LABELS",
    "RNG_BLOCK",
    "SAMPLES",
    "EventArrays",
    "GeneratedDataset",
    "generate_dataset",
    "generate_events",
    "parse_compression",
    "write_events",
]

Array: TypeAlias = npt.NDArray[Any]
#: One block of events: branch name → numpy array (flat branch) or awkward array (jagged).
EventArrays: TypeAlias = dict[str, "npt.NDArray[Any] | ak.Array"]

#: The samples this generator knows, in their usual order.
SAMPLES: tuple[str, ...] = ("signal", "background")
#: Class label of each sample (written to labels.txt).
LABELS: dict[str, int] = {"signal": 1, "background": 0}
#: Output formats of :func:`write_events`.
FORMATS: tuple[str, ...] = ("ttree", "rntuple")
#: Compression algorithms of :func:`write_events` (optionally ``name:level``).
COMPRESSIONS: tuple[str, ...] = ("zlib", "lz4", "zstd", "lzma", "none")
#: Events drawn with one random generator (the unit of determinism).
RNG_BLOCK = 10_000
#: Events written per TTree basket / RNTuple cluster.
EVENTS_PER_BASKET = 50_000

# ROOT's default levels (ROOT::RCompressionSetting: 101, 404, 505, 207).
_DEFAULT_LEVELS = {"zlib": 1, "lz4": 4, "zstd": 5, "lzma": 7}
_CODECS = {"zlib": uproot.ZLIB, "lz4": uproot.LZ4, "zstd": uproot.ZSTD, "lzma": uproot.LZMA}

_F4 = np.dtype(np.float32)
_I4 = np.dtype(np.int32)

#: Jagged collections: collection name → (field → dtype); the counter is ``n`` + name.
COLLECTIONS: dict[str, dict[str, np.dtype[Any]]] = {
    "Jet": {"pt": _F4, "eta": _F4, "phi": _F4, "mass": _F4, "btagDeepB": _F4},
    "Muon": {
        "pt": _F4,
        "eta": _F4,
        "phi": _F4,
        "mass": _F4,
        "charge": _I4,
        "pfRelIso04_all": _F4,
    },
    "Electron": {
        "pt": _F4,
        "eta": _F4,
        "phi": _F4,
        "mass": _F4,
        "charge": _I4,
        "pfRelIso03_all": _F4,
    },
    "PFCands": {
        "pt": _F4,
        "eta": _F4,
        "phi": _F4,
        "mass": _F4,
        "charge": _I4,
        "pdgId": _I4,
        "d0": _F4,
        "dz": _F4,
    },
}

_FLAT_HEAD: dict[str, np.dtype[Any]] = {
    "run": np.dtype(np.uint32),
    "luminosityBlock": np.dtype(np.uint32),
    "event": np.dtype(np.uint64),
}
_FLAT_MIDDLE: dict[str, np.dtype[Any]] = {
    "MET_pt": _F4,
    "MET_phi": _F4,
    "PV_npvs": _I4,
}


def _branch_order() -> dict[str, np.dtype[Any]]:
    out = dict(_FLAT_HEAD)
    for name in ("Jet", "Muon", "Electron"):
        out[f"n{name}"] = _I4
        out.update({f"{name}_{f}": dt for f, dt in COLLECTIONS[name].items()})
    out.update(_FLAT_MIDDLE)
    out["nPFCands"] = _I4
    out.update({f"PFCands_{f}": dt for f, dt in COLLECTIONS["PFCands"].items()})
    return out


#: Every branch in file order → dtype of its values (for jagged branches: of the items).
BRANCHES: dict[str, np.dtype[Any]] = _branch_order()

_MUON_MASS = 0.10566
_ELECTRON_MASS = 0.000511
_PION_MASS = 0.13957
_K0L_MASS = 0.497611
_PF_CAP = 100
# float32 phi in [-pi, pi): the largest float32 below pi (float32(pi) is above pi).
_PHI_MAX = float(np.nextafter(np.float32(math.pi), np.float32(0)))
_LUMI_EVENTS = 1000  # events per luminosity block
# Mantissa bits kept per field (NanoAOD's "precision"); fields not listed keep all 23.
_PRECISION = {
    "pt": 10,
    "eta": 12,
    "phi": 12,
    "btagDeepB": 10,
    "pfRelIso04_all": 6,
    "pfRelIso03_all": 6,
    "d0": 10,
    "dz": 10,
}
_JET_MASS_PRECISION = 10


# --------------------------------------------------------------------------- validation


def _check_sample(sample: str) -> str:
    if sample not in SAMPLES:
        raise ConfigError(f"unknown sample {sample!r}; expected one of {', '.join(SAMPLES)}")
    return sample


def _check_format(fmt: str) -> str:
    name = str(fmt).strip().lower()
    if name not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return name


def parse_compression(spec: str) -> Any:
    """Turn ``"zlib"``, ``"zstd:5"``, ``"none"``, ... into an uproot compression object.

    Levels go from 1 to 9 (ROOT's convention); without a level, ROOT's default level
    of the algorithm is used. Returns ``None`` for ``"none"`` (uncompressed).

    Raises:
        ConfigError: for an unknown algorithm or a bad level.
    """
    text = str(spec).strip().lower()
    name, sep, level_text = text.partition(":")
    allowed = ", ".join(COMPRESSIONS)
    if name not in COMPRESSIONS:
        raise ConfigError(
            f"unknown compression {spec!r}; expected one of {allowed} "
            "(optionally with a level, e.g. zstd:5)"
        )
    if name == "none":
        if sep:
            raise ConfigError(f"compression {spec!r}: 'none' takes no level")
        return None
    level = _DEFAULT_LEVELS[name]
    if sep:
        try:
            level = int(level_text)
        except ValueError:
            raise ConfigError(
                f"compression {spec!r}: level {level_text!r} is not an integer 1-9"
            ) from None
        if not 1 <= level <= 9:
            raise ConfigError(f"compression {spec!r}: level must be between 1 and 9")
    return _CODECS[name](level)


# --------------------------------------------------------------------------- drawing helpers


def _phi(rng: np.random.Generator, size: int) -> Array:
    return rng.uniform(-math.pi, math.pi, size)


def _wrap_phi(phi: Array) -> Array:
    # floor instead of np.mod: same result, several times faster on large arrays.
    turn = phi.dtype.type(2 * math.pi)
    wrapped: Array = phi - turn * np.floor((phi + phi.dtype.type(math.pi)) / turn)
    return wrapped


def _to_phi32(phi: Array) -> Array:
    return np.clip(phi.astype(np.float32), -_PHI_MAX, _PHI_MAX)


def _truncate(values: Array, bits: int) -> Array:
    """float32 with only ``bits`` mantissa bits, as NanoAOD stores most floats.

    Truncation towards zero (NanoAOD rounds to nearest) never increases a magnitude,
    so ranges such as ``|eta| < 2.5`` or ``phi < pi`` still hold, and a positive value
    stays positive. It also makes the files compress like real NanoAOD.
    """
    out = values.astype(np.float32)
    if bits < 23:
        mask = np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)
        out.view(np.uint32)[...] &= mask
    return out


def _bounded_normal(rng: np.random.Generator, size: int, sigma: float, limit: float) -> Array:
    """Normal(0, sigma); values beyond ±limit are redrawn uniformly inside."""
    x = rng.normal(0.0, sigma, size)
    out = np.abs(x) >= limit
    x[out] = rng.uniform(-limit, limit, int(out.sum()))
    return x


def _pareto(rng: np.random.Generator, size: int, threshold: float, index: float) -> Array:
    """Power-law spectrum ``dN/dpt ∝ pt^-(index+1)`` above ``threshold``."""
    return threshold * (1.0 + rng.pareto(index, size))


def _flavour(rng: np.random.Generator, size: int, p_b: float, p_c: float) -> Array:
    u = rng.random(size)
    return np.where(u < p_b, 5, np.where(u < p_b + p_c, 4, 0)).astype(np.int8)


@dataclass
class _Parts:
    """Objects of one collection before sorting: their event index and columns."""

    ev: Array
    cols: dict[str, Array]

    @staticmethod
    def concat(parts: Sequence[_Parts]) -> _Parts:
        keys = parts[0].cols.keys()
        return _Parts(
            np.concatenate([p.ev for p in parts]),
            {k: np.concatenate([p.cols[k] for p in parts]) for k in keys},
        )

    def sorted_by_pt(self, n_events: int) -> tuple[Array, dict[str, Array]]:
        """Counts per event and the columns sorted by event, then pt descending."""
        # One int64 key (event index, then the bits of the positive float32 pt, which
        # sort like the values, inverted) and a stable radix sort: much faster than
        # np.lexsort on millions of PF candidates.
        pt_bits = self.cols["pt"].astype(np.float32).view(np.uint32)
        key = (self.ev.astype(np.int64) << 32) | (np.uint32(0xFFFFFFFF) - pt_bits).astype(np.int64)
        order = np.argsort(key, kind="stable")
        counts = np.bincount(self.ev, minlength=n_events).astype(np.int32)
        return counts, {k: v[order] for k, v in self.cols.items()}


@dataclass
class _Block:
    """Events in flat form: scalar columns and, per collection, counts + flat columns."""

    n: int
    scalars: dict[str, Array]
    counts: dict[str, Array]
    flats: dict[str, dict[str, Array]] = field(default_factory=dict)

    def slice(self, start: int, stop: int) -> _Block:
        scalars = {k: v[start:stop] for k, v in self.scalars.items()}
        counts: dict[str, Array] = {}
        flats: dict[str, dict[str, Array]] = {}
        for name, c in self.counts.items():
            offsets = np.concatenate([[0], np.cumsum(c, dtype=np.int64)])
            lo, hi = int(offsets[start]), int(offsets[stop])
            counts[name] = c[start:stop]
            flats[name] = {k: v[lo:hi] for k, v in self.flats[name].items()}
        return _Block(stop - start, scalars, counts, flats)

    @staticmethod
    def concat(blocks: Sequence[_Block]) -> _Block:
        if len(blocks) == 1:
            return blocks[0]
        first = blocks[0]
        return _Block(
            sum(b.n for b in blocks),
            {k: np.concatenate([b.scalars[k] for b in blocks]) for k in first.scalars},
            {k: np.concatenate([b.counts[k] for b in blocks]) for k in first.counts},
            {
                name: {k: np.concatenate([b.flats[name][k] for b in blocks]) for k in cols}
                for name, cols in first.flats.items()
            },
        )

    def to_events(self) -> EventArrays:
        out: EventArrays = {}
        for branch, dtype in BRANCHES.items():
            if branch in self.scalars:
                out[branch] = self.scalars[branch].astype(dtype, copy=False)
            elif branch.startswith("n") and branch[1:] in self.counts:
                out[branch] = self.counts[branch[1:]].astype(dtype, copy=False)
            else:
                name, _, fld = branch.partition("_")
                flat = self.flats[name][fld].astype(dtype, copy=False)
                out[branch] = ak.unflatten(flat, self.counts[name])
        return out


# --------------------------------------------------------------------------- physics


@dataclass(frozen=True)
class _Model:
    """The knobs of one sample (pt in GeV; spectra as offset + Gamma(shape, scale))."""

    b_jets: int  # jets from b quarks (ttbar: 2) ...
    b_fraction: float  # ... in this fraction of the events (ttbar: all; W + bb: some)
    w_jets: int  # jets from a hadronic W in every event (ttbar: 2)
    b_pt: tuple[float, float, float]
    w_pt: tuple[float, float, float]
    w_charm: float  # fraction of W jets from c quarks
    extra_jets: float  # mean number of further jets (radiation, W + jets)
    extra_index: float  # their power-law index above 20 GeV
    extra_b: float  # fraction of them from b quarks
    extra_c: float  # fraction from c quarks
    extra_eta: float  # their eta spread
    lepton_pt: tuple[float, float, float]
    soft_leptons: float  # mean number of soft non-isolated leptons
    nu_pt: tuple[float, float]  # neutrino pt = lepton pt x Gamma(shape, scale)
    nu_dphi: float  # spread of the neutrino around back-to-back with the lepton


_MODELS = {
    # ttbar -> b b q q' l nu: two b jets, two jets from the hadronic W, plus radiation.
    "signal": _Model(
        b_jets=2,
        b_fraction=1.0,
        w_jets=2,
        b_pt=(25.0, 2.0, 22.0),
        w_pt=(20.0, 1.6, 15.0),
        w_charm=0.3,
        extra_jets=0.5,
        extra_index=2.6,
        extra_b=0.02,
        extra_c=0.05,
        extra_eta=2.0,
        lepton_pt=(25.0, 1.7, 18.0),
        soft_leptons=0.3,
        nu_pt=(6.0, 0.17),
        nu_dphi=1.2,
    ),
    # W + jets: a falling (Poisson) number of jets with a power-law spectrum, some W + c;
    # W + bb in 30 % of the events, which with extra jets looks much like ttbar: this is
    # what keeps the two samples from separating perfectly.
    "background": _Model(
        b_jets=2,
        b_fraction=0.3,
        w_jets=0,
        b_pt=(25.0, 2.0, 18.0),
        w_pt=(20.0, 1.6, 15.0),
        w_charm=0.0,
        extra_jets=2.5,
        extra_index=2.0,
        extra_b=0.03,
        extra_c=0.10,
        extra_eta=1.9,
        lepton_pt=(25.0, 1.6, 16.0),
        soft_leptons=0.12,
        nu_pt=(6.0, 0.15),
        nu_dphi=0.9,
    ),
}
_MAX_EXTRA_JETS = 9
# btagDeepB ~ Beta(a, b) per flavour (5: b, 4: c, 0: light).
_BTAG = {5: (2.0, 1.2), 4: (1.3, 2.6), 0: (0.8, 6.5)}


def _jets_component(
    rng: np.random.Generator,
    counts: Array,
    pt: Array,
    eta_sigma: float,
    p_b: float,
    p_c: float,
) -> _Parts:
    size = int(counts.sum())
    ev = np.repeat(np.arange(counts.size), counts)
    return _Parts(
        ev,
        {
            "pt": pt,
            "eta": _bounded_normal(rng, size, eta_sigma, 4.7),
            "flavour": _flavour(rng, size, p_b, p_c),
        },
    )


def _gamma_pt(rng: np.random.Generator, spec: tuple[float, float, float], size: int) -> Array:
    offset, shape, scale = spec
    return offset + rng.gamma(shape, scale, size)


def _draw_jets(rng: np.random.Generator, model: _Model, npv: Array) -> _Parts:
    n = npv.size
    parts: list[_Parts] = []
    if model.b_jets:
        has_b = rng.random(n) < model.b_fraction
        counts = np.where(has_b, model.b_jets, 0)
        pt = _gamma_pt(rng, model.b_pt, int(counts.sum()))
        parts.append(_jets_component(rng, counts, pt, 1.2, 1.0, 0.0))
    if model.w_jets:
        counts = np.full(n, model.w_jets, dtype=np.int64)
        pt = _gamma_pt(rng, model.w_pt, model.w_jets * n)
        parts.append(_jets_component(rng, counts, pt, 1.4, 0.0, model.w_charm))
    n_extra = np.minimum(rng.poisson(model.extra_jets, n), _MAX_EXTRA_JETS)
    pt = _pareto(rng, int(n_extra.sum()), 20.0, model.extra_index)
    parts.append(_jets_component(rng, n_extra, pt, model.extra_eta, model.extra_b, model.extra_c))
    # Pile-up jets: soft, forward, light; more of them with more primary vertices.
    n_pu = np.minimum(rng.poisson(0.015 * npv), 4)
    pt = 20.0 + rng.exponential(6.0, int(n_pu.sum()))
    parts.append(_jets_component(rng, n_pu, pt, 2.8, 0.0, 0.0))

    jets = _Parts.concat(parts)
    size = jets.ev.size
    flavour = jets.cols["flavour"]
    # No tracker beyond |eta| = 2.5: no b-tagging information there.
    flavour = np.where(np.abs(jets.cols["eta"]) > 2.5, 0, flavour)
    score = np.empty(size)
    for flav, (a, b) in _BTAG.items():
        mask = flavour == flav
        score[mask] = rng.beta(a, b, int(mask.sum()))
    jets.cols["btagDeepB"] = score
    jets.cols["phi"] = _phi(rng, size)
    jets.cols["mass"] = jets.cols["pt"] * rng.gamma(4.0, 0.035, size)
    return jets


def _draw_leptons(
    rng: np.random.Generator, model: _Model, n: int
) -> tuple[_Parts, _Parts, Array, Array]:
    """Muons and electrons; also the isolated lepton's (pt, phi) for the W kinematics."""
    # The isolated lepton from the W: one per event, muon or electron.
    is_muon = rng.random(n) < 0.5
    lep_pt = _gamma_pt(rng, model.lepton_pt, n)
    lep_phi = _phi(rng, n)
    lep_iso = np.mod(rng.exponential(0.025, n), 0.15)
    lep_eta = _bounded_normal(rng, n, 1.1, 2.4)  # inside both muon and electron acceptance
    lep_charge = np.where(rng.random(n) < 0.5, -1, 1)
    ev = np.arange(n)

    # Extra soft, non-isolated leptons (semileptonic b/c decays, more of them in ttbar).
    n_soft = rng.poisson(model.soft_leptons, n)
    size = int(n_soft.sum())
    soft_ev = np.repeat(ev, n_soft)
    soft_muon = rng.random(size) < 0.5
    soft_pt = np.where(soft_muon, 3.0, 5.0) + rng.exponential(6.0, size)
    soft_iso = 0.2 + rng.exponential(0.4, size)
    soft_eta = _bounded_normal(rng, size, 1.3, 2.4)
    soft_phi = _phi(rng, size)
    soft_charge = np.where(rng.random(size) < 0.5, -1, 1)

    def pick(iso_mask: Array, soft_mask: Array) -> _Parts:
        return _Parts(
            np.concatenate([ev[iso_mask], soft_ev[soft_mask]]),
            {
                "pt": np.concatenate([lep_pt[iso_mask], soft_pt[soft_mask]]),
                "eta": np.concatenate([lep_eta[iso_mask], soft_eta[soft_mask]]),
                "phi": np.concatenate([lep_phi[iso_mask], soft_phi[soft_mask]]),
                "charge": np.concatenate([lep_charge[iso_mask], soft_charge[soft_mask]]),
                "iso": np.concatenate([lep_iso[iso_mask], soft_iso[soft_mask]]),
            },
        )

    return pick(is_muon, soft_muon), pick(~is_muon, ~soft_muon), lep_pt, lep_phi


def _draw_pfcands(
    rng: np.random.Generator,
    npv: Array,
    jet_counts: Array,
    jets: dict[str, Array],
    ht: Array,
) -> _Parts:
    # The bulk of the data (tens of candidates per event): float32 draws and whole-array
    # operations only (no boolean-mask scatters), since this dominates the run time.
    n = npv.size
    f4 = np.float32
    mean = 0.9 * npv + 3.0 * jet_counts + 0.04 * ht
    counts = np.minimum(8 + rng.poisson(mean), _PF_CAP)
    size = int(counts.sum())
    ev = np.repeat(np.arange(n), counts)

    # One 32-bit word per candidate gives four independent choices: the charge sign
    # (bit 0), jet constituent or not (bits 1-8), pile-up or not (bits 9-16) and
    # which jet of the event (bits 16-31).
    bits = rng.integers(0, 2**32, size, dtype=np.uint32)
    sign = (bits & 1).astype(np.int32) * 2 - 1
    n_jets_ev = jet_counts.astype(np.uint32)[ev]
    constituent = (((bits >> 1) & 0xFF) < 154) & (n_jets_ev > 0)  # about 60 %
    pileup = ~constituent & (((bits >> 9) & 0xFF) < 154)
    jet_offsets = np.concatenate([[0], np.cumsum(jet_counts, dtype=np.int64)])
    which = jet_offsets[:-1][ev] + (((bits >> 16) * n_jets_ev) >> 16)
    # Candidates of events without jets point at a dummy jet (masked out below).
    jet_pt = np.append(jets["pt"].astype(f4), f4(0))
    jet_eta = np.append(jets["eta"].astype(f4), f4(0))
    jet_phi = np.append(jets["phi"].astype(f4), f4(0))
    jet_b = np.append(jets["flavour"] == 5, False)
    which = np.where(constituent, which, jet_pt.size - 1)

    # Candidate type: 0 charged hadron, 1 photon, 2 neutral hadron, 3 electron, 4 muon.
    u = rng.random(size, dtype=f4)
    kind = (
        (u >= f4(0.55)).view(np.int8)
        + (u >= f4(0.83)).view(np.int8)
        + (u >= f4(0.95)).view(np.int8)
        + (u >= f4(0.975)).view(np.int8)
    )

    # Jet constituents follow their jet; the rest (underlying event, pile-up) is soft
    # and spread out.
    z_eta = rng.standard_normal(size, dtype=f4)
    eta = np.where(constituent, jet_eta[which] + f4(0.1) * z_eta, f4(2.0) * z_eta)
    outside = np.abs(eta) >= f4(4.7)
    eta[outside] = rng.uniform(-4.7, 4.7, int(outside.sum()))
    z_phi = rng.standard_normal(size, dtype=f4)
    u_phi = rng.random(size, dtype=f4)
    phi = np.where(
        constituent,
        _wrap_phi(jet_phi[which] + f4(0.1) * z_phi),
        u_phi * f4(2 * math.pi) - f4(math.pi),
    )
    e = rng.standard_exponential(size, dtype=f4)
    pt = np.where(
        constituent,
        np.maximum(jet_pt[which] * np.minimum(e * f4(0.08), f4(1.0)), f4(0.5)),
        f4(0.5) + e * f4(1.2),
    )

    # No charged-particle tracking beyond |eta| = 2.5: those become neutral hadrons.
    kind[((kind == 0) | (kind >= 3)) & (np.abs(eta) > f4(2.5))] = 2
    charged = (kind == 0) | (kind >= 3)
    charge = np.where(charged, sign, 0).astype(np.int32)
    pdg = np.array([211, 22, 130, -11, -13], dtype=np.int32)[kind]
    pdg = np.where(charged, pdg * charge, pdg)
    mass = np.array([_PION_MASS, 0.0, _K0L_MASS, _ELECTRON_MASS, _MUON_MASS], dtype=f4)[kind]

    # Impact parameters (cm) of charged candidates: resolution, displaced tracks in
    # b jets, pile-up vertices spread along z.
    from_b = jet_b[which]
    d0 = rng.standard_normal(size, dtype=f4) * f4(0.003)
    d0 += np.where(from_b, rng.standard_exponential(size, dtype=f4) * f4(0.03), f4(0)) * sign
    d0 = np.where(charged, d0, f4(0))
    z_dz = rng.standard_normal(size, dtype=f4)
    dz = np.where(charged, z_dz * np.where(pileup, f4(4.0), f4(0.01)), f4(0))
    return _Parts(
        ev,
        {
            "pt": pt,
            "eta": eta,
            "phi": phi,
            "mass": mass,
            "charge": charge,
            "pdgId": pdg,
            "d0": d0,
            "dz": dz,
        },
    )


def _sample_code(sample: str) -> int:
    return zlib.crc32(sample.encode())


def _draw_block(sample: str, seed: int, block: int) -> _Block:
    """The ``RNG_BLOCK`` events of block number ``block`` of a sample."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _sample_code(sample), block]))
    n = RNG_BLOCK
    model = _MODELS[sample]
    npv = np.maximum(rng.poisson(20.0, n), 1)

    jet_parts = _draw_jets(rng, model, npv)
    jet_counts, jets = jet_parts.sorted_by_pt(n)
    jet_ev = np.repeat(np.arange(n), jet_counts)
    ht = np.bincount(jet_ev, weights=jets["pt"], minlength=n)

    muon_parts, electron_parts, lep_pt, lep_phi = _draw_leptons(rng, model, n)
    muon_counts, muons = muon_parts.sorted_by_pt(n)
    electron_counts, electrons = electron_parts.sorted_by_pt(n)
    muons["pfRelIso04_all"] = muons.pop("iso")
    muons["mass"] = np.full(muons["pt"].size, _MUON_MASS)
    electrons["pfRelIso03_all"] = electrons.pop("iso")
    electrons["mass"] = np.full(electrons["pt"].size, _ELECTRON_MASS)

    # Missing transverse momentum: the neutrino (W recoil) plus a resolution term.
    nu_pt = lep_pt * rng.gamma(*model.nu_pt, n)
    nu_phi = _wrap_phi(lep_phi + math.pi + rng.normal(0.0, model.nu_dphi, n))
    sigma = 3.0 + 0.5 * np.sqrt(ht) + 0.6 * np.sqrt(npv)
    met_x = nu_pt * np.cos(nu_phi) + rng.normal(0.0, 1.0, n) * sigma
    met_y = nu_pt * np.sin(nu_phi) + rng.normal(0.0, 1.0, n) * sigma

    pf_parts = _draw_pfcands(rng, npv, jet_counts, jets, ht)
    pf_counts, pfcands = pf_parts.sorted_by_pt(n)
    del jets["flavour"]

    scalars = {
        "MET_pt": np.hypot(met_x, met_y),
        "MET_phi": _to_phi32(np.arctan2(met_y, met_x)),
        "PV_npvs": npv,
    }
    for cols in (jets, muons, electrons, pfcands):
        cols["phi"] = _to_phi32(cols["phi"])
        for name, bits in _PRECISION.items():
            if name in cols:
                cols[name] = _truncate(cols[name], bits)
    jets["mass"] = _truncate(jets["mass"], _JET_MASS_PRECISION)
    return _Block(
        n,
        scalars,
        {"Jet": jet_counts, "Muon": muon_counts, "Electron": electron_counts, "PFCands": pf_counts},
        {"Jet": jets, "Muon": muons, "Electron": electrons, "PFCands": pfcands},
    )


def _generate_block(sample: str, seed: int, first_event: int, n_events: int) -> _Block:
    stop = first_event + n_events
    numbers = range(first_event // RNG_BLOCK, -(-stop // RNG_BLOCK))

    def draw(b: int) -> _Block:
        lo = max(first_event - b * RNG_BLOCK, 0)
        hi = min(stop - b * RNG_BLOCK, RNG_BLOCK)
        block = _draw_block(sample, seed, b)
        return block if (lo, hi) == (0, RNG_BLOCK) else block.slice(lo, hi)

    # numpy releases the GIL in its random generators and ufuncs: blocks (each with
    # its own generator, so the result does not depend on the scheduling) in threads.
    workers = min(len(numbers), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            blocks = list(pool.map(draw, numbers))
    else:
        blocks = [draw(b) for b in numbers]
    if not blocks:
        blocks = [_draw_block(sample, seed, 0).slice(0, 0)]
    out = _Block.concat(blocks)
    index = np.arange(first_event, stop, dtype=np.uint64)
    out.scalars["run"] = np.ones(n_events, dtype=np.uint32)
    out.scalars["luminosityBlock"] = (1 + index // _LUMI_EVENTS).astype(np.uint32)
    out.scalars["event"] = index + np.uint64(1)
    return out


def generate_events(sample: str, n_events: int, seed: int, *, first_event: int = 0) -> EventArrays:
    """Draw ``n_events`` NanoAOD-like events of one sample, in memory.

    Args:
        sample: ``"signal"`` (ttbar-like) or ``"background"`` (W+jets-like).
        n_events: number of events (≥ 0).
        seed: random seed (≥ 0); same seed, same events.
        first_event: index of the first event within the sample; the events are
            numbered ``first_event + 1``, ... in the ``event`` branch. Event ``k`` is
            the same whatever range it is drawn in.

    Returns:
        Branch name → array, in :data:`BRANCHES` order: numpy arrays for flat branches,
        awkward ``var * dtype`` arrays for the jagged ones. Jets, muons, electrons and
        PF candidates are sorted by decreasing pt within each event.

    Raises:
        ConfigError: for an unknown sample or a negative count, seed or first event.
    """
    _check_sample(sample)
    if n_events < 0:
        raise ConfigError(f"n_events must be ≥ 0, got {n_events}")
    if seed < 0:
        raise ConfigError(f"seed must be ≥ 0, got {seed}")
    if first_event < 0:
        raise ConfigError(f"first_event must be ≥ 0, got {first_event}")
    return _generate_block(sample, seed, first_event, n_events).to_events()


# --------------------------------------------------------------------------- writing


def _length(events: Mapping[str, Any]) -> int:
    if not events:
        raise ConfigError("no branches to write")
    lengths = {len(v) for v in events.values()}
    if len(lengths) != 1:
        raise ConfigError(f"branches have different lengths: {sorted(lengths)}")
    return lengths.pop()


def _pieces(
    events: Mapping[str, Any] | Iterable[Mapping[str, Any]], basket_events: int
) -> Iterator[Mapping[str, Any]]:
    if isinstance(events, Mapping):
        n = _length(events)
        for start in range(0, max(n, 1), basket_events):
            yield {k: v[start : start + basket_events] for k, v in events.items()}
    else:
        yield from events


def _branch_type(value: Any) -> Any:
    if isinstance(value, ak.Array):
        return value.type.content
    return np.asarray(value).dtype


def _counter_name(counted: str) -> str:
    """NanoAOD counters: ``Jet_pt`` → ``nJet`` (shared by the whole collection)."""
    return "n" + counted.partition("_")[0]


def write_events(
    path: str | os.PathLike[str],
    events: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    fmt: str = "ttree",
    compression: str = "zlib",
    tree: str = "Events",
    basket_events: int = EVENTS_PER_BASKET,
) -> Path:
    """Write events to a new ROOT file as a TTree or an RNTuple.

    Args:
        path: the file to (re)create; written under a temporary name and renamed when
            complete, so a file at ``path`` is never half-written.
        events: one mapping of branch name → array (as from :func:`generate_events`),
            written ``basket_events`` at a time, or an iterable of such mappings, one
            per TTree basket / RNTuple cluster.
        fmt: ``"ttree"`` (NanoAOD layout: jagged branches ``X_*`` share the int32
            counter branch ``nX``) or ``"rntuple"``.
        compression: ``zlib``, ``lz4``, ``zstd``, ``lzma`` or ``none``, optionally with
            a level 1-9 (``"zstd:5"``).
        tree: name of the TTree / RNTuple.
        basket_events: events per basket / cluster when ``events`` is one mapping.

    Returns:
        The path written.

    Raises:
        ConfigError: for an unknown format or compression, or inconsistent branches.
    """
    kind = _check_format(fmt)
    codec = parse_compression(compression)
    if not tree:
        raise ConfigError("tree name must not be empty")
    if basket_events < 1:
        raise ConfigError(f"basket_events must be ≥ 1, got {basket_events}")
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        with uproot.recreate(partial, compression=codec) as file:
            writer: Any = None
            for piece in _pieces(events, basket_events):
                try:
                    if writer is not None:
                        data = dict(piece)
                        writer.extend(data if kind == "ttree" else ak.zip(data, depth_limit=1))
                    elif kind == "ttree":
                        types = {k: _branch_type(v) for k, v in piece.items()}
                        writer = file.mktree(tree, types, counter_name=_counter_name)
                        writer.extend(dict(piece))
                    else:
                        file[tree] = ak.zip(dict(piece), depth_limit=1)
                        writer = file[tree]
                except (ValueError, TypeError) as exc:
                    # e.g. jagged branches of one collection (X_a, X_b) with different
                    # list lengths, which cannot share the counter nX
                    raise ConfigError(f"cannot write {fmt} {tree!r} to {target}: {exc}") from exc
            if writer is None:
                raise ConfigError("no events to write")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class GeneratedDataset:
    """What :func:`generate_dataset` wrote.

    Attributes:
        files: sample → its files, in order.
        files_txt: ``files.txt``, every file's absolute path, one per line.
        labels_txt: ``labels.txt``, line by line with ``files.txt``: 1 signal, 0 background.
    """

    files: dict[str, list[Path]]
    files_txt: Path
    labels_txt: Path

    @property
    def paths(self) -> list[Path]:
        """Every file, in the order of ``files.txt``."""
        return [p for paths in self.files.values() for p in paths]


def _split(n_events: int, n_files: int) -> list[tuple[int, int]]:
    """(first event, number of events) of each file, as even as possible."""
    base, extra = divmod(n_events, n_files)
    out, start = [], 0
    for i in range(n_files):
        size = base + (1 if i < extra else 0)
        out.append((start, size))
        start += size
    return out


def _chunks(sample: str, seed: int, first: int, size: int) -> Iterator[EventArrays]:
    """The events of one file in pieces aligned on :data:`EVENTS_PER_BASKET`.

    The next piece is drawn in a background thread while the caller writes (and
    compresses) the current one.
    """
    bounds: list[tuple[int, int]] = []
    start, stop = first, first + size
    while start < stop:
        end = min(stop, (start // EVENTS_PER_BASKET + 1) * EVENTS_PER_BASKET)
        bounds.append((start, end))
        start = end

    def make(bound: tuple[int, int]) -> EventArrays:
        return _generate_block(sample, seed, bound[0], bound[1] - bound[0]).to_events()

    with ThreadPoolExecutor(1) as pool:
        pending: Future[EventArrays] | None = pool.submit(make, bounds[0]) if bounds else None
        for i in range(len(bounds)):
            assert pending is not None
            current = pending.result()
            pending = pool.submit(make, bounds[i + 1]) if i + 1 < len(bounds) else None
            yield current


def generate_dataset(
    out_dir: str | os.PathLike[str],
    *,
    n_events: int,
    n_files: int = 1,
    seed: int = 42,
    fmt: str = "ttree",
    compression: str = "zlib",
    tree: str = "Events",
    samples: Sequence[str] = SAMPLES,
) -> GeneratedDataset:
    """Write a toy NanoAOD-like dataset: ``n_files`` ROOT files per sample.

    Files are ``OUT/<sample>_<i>.root``; ``OUT/files.txt`` lists them all (absolute
    paths) and ``OUT/labels.txt`` gives, line by line, 1 for signal and 0 for background.

    Args:
        out_dir: output folder, created if missing.
        n_events: events per sample, split over the files as evenly as possible; the
            files of a sample hold consecutive, distinct event numbers.
        n_files: files per sample (≤ ``n_events``).
        seed: random seed (≥ 0); each file's content depends only on the seed, the
            sample and the events it holds.
        fmt: ``"ttree"`` or ``"rntuple"``.
        compression: ``zlib``, ``lz4``, ``zstd``, ``lzma`` or ``none`` (``"zstd:5"``).
        tree: name of the TTree / RNTuple.
        samples: which samples to write (default both).

    Returns:
        The files written and the paths of files.txt and labels.txt.

    Raises:
        ConfigError: for invalid arguments (checked before anything is written).
    """
    _check_format(fmt)
    parse_compression(compression)
    if not samples:
        raise ConfigError("no samples given")
    for sample in samples:
        _check_sample(sample)
    if len(set(samples)) != len(samples):
        raise ConfigError(f"samples repeated: {list(samples)}")
    if n_files < 1:
        raise ConfigError(f"n_files must be ≥ 1, got {n_files}")
    if n_events < n_files:
        raise ConfigError(
            f"n_events ({n_events}) must be at least n_files ({n_files}): "
            "every file needs at least one event"
        )
    if seed < 0:
        raise ConfigError(f"seed must be ≥ 0, got {seed}")
    if not tree:
        raise ConfigError("tree name must not be empty")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (sample, (out / f"{sample}_{i}.root").resolve(), first, size)
        for sample in samples
        for i, (first, size) in enumerate(_split(n_events, n_files))
    ]

    def write(job: tuple[str, Path, int, int]) -> Path:
        sample, path, first, size = job
        chunks = _chunks(sample, seed, first, size)
        return write_events(path, chunks, fmt=fmt, compression=compression, tree=tree)

    # Compression (zlib, lzma) dominates; the codecs release the GIL, so files are
    # written side by side, one thread each.
    workers = min(len(jobs), os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        written = list(pool.map(write, jobs))
    files: dict[str, list[Path]] = {sample: [] for sample in samples}
    for (sample, *_), path in zip(jobs, written, strict=True):
        files[sample].append(path)

    files_txt = (out / "files.txt").resolve()
    labels_txt = (out / "labels.txt").resolve()
    files_txt.write_text("".join(f"{p}\n" for paths in files.values() for p in paths))
    labels_txt.write_text("".join(f"{LABELS[s]}\n" for s, paths in files.items() for _ in paths))
    return GeneratedDataset(files=files, files_txt=files_txt, labels_txt=labels_txt)
