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

With ``wide=True`` the events get ~870 further branches with the names and dtypes of
real NanoAOD (:data:`WIDE_BRANCHES`, ~900 in all): many more jet and lepton fields, taus,
photons, AK8 jets and subjets, isolated tracks, secondary vertices, generator objects,
MET flavours, pile-up and generator information, and hundreds of filter, HLT and L1
bits; the 35 default branches keep their values.

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
import re
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
    "WIDE_BRANCHES",
    "WIDE_COLLECTIONS",
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

    def to_events(self, branches: Mapping[str, np.dtype[Any]] = BRANCHES) -> EventArrays:
        out: EventArrays = {}
        for branch, dtype in branches.items():
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


# --------------------------------------------------------------------------- wide layout

# The wide layout (``wide=True``) adds several hundred branches with the names and
# dtypes of real CMS NanoAOD on top of the branches above: many more fields of the jets
# and leptons, more collections (taus, photons, AK8 jets, secondary vertices, generator
# objects, ...) and hundreds of flat trigger bits, filters and event quantities, so that
# a padded feature matrix has thousands of columns. The values are cheap but plausible:
# simple distributions, plus the physics where it comes for free (b-tagging, lepton
# isolation and identification, generator objects from the reconstructed ones, triggers
# that fire above their thresholds, MET flavours around the MET). They come from a random
# generator of their own, so the branches of the default layout keep their values.

_BOOL = np.dtype(np.bool_)
_U1 = np.dtype(np.uint8)
_CODES: dict[str, np.dtype[Any]] = {"f": _F4, "i": _I4, "b": _BOOL, "B": _U1}

# A group of fields: (names, dtype code: f float32 / i int32 / b bool / B uint8, kind,
# *parameters). Kind "=" is computed by the collection's code (see _WideDraw); the other
# kinds are drawn (a second parameter set, where given, is for the objects outside the
# collection's class: non-prompt leptons, non-b jets):
#   u lo hi: uniform; n mu sigma: normal; e scale: exponential; g shape scale: gamma;
#   b a b: beta (a score in [0, 1]); s a b: 2 beta - 1 (a score in [-1, 1]);
#   p prob: bool; i lo hi: integer in [lo, hi]; w bits: cumulative working-point mask
#   2^k - 1 with k uniform in [0, bits]; k value: constant;
#   c values probs [probs]: choice; x collection prob [prob]: index of a random object of
#   that collection in the same event, with probability prob (else, or without any, -1).
_Spec: TypeAlias = tuple[Any, ...]

_FOUR_MOMENTUM = "eta mass phi pt"
_IMPACT = "dxy dxyErr dz dzErr ip3d sip3d"
_LEPTON_FLAV = ((0, 3, 4, 5, 15, 22), (0.15, 0.1, 0.25, 0.4, 0.05, 0.05))
_GEN_PDG = (
    (21, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 11, -11, 13, -13, 15, -15, 22, 24, -24),
    (
        *(0.3, 0.05, 0.05, 0.05, 0.05, 0.03, 0.03, 0.03, 0.03, 0.05, 0.05, 0.02, 0.02),
        *(0.02, 0.02, 0.02, 0.02, 0.01, 0.01, 0.1, 0.02, 0.02),
    ),
)
_SCORES = (1.0, 3.0)

#: Extra fields of the base collections and all fields of the new ones, in file order.
_WIDE_FIELDS: dict[str, list[_Spec]] = {
    "Jet": [
        ("area", "f", "n", 0.50, 0.04),
        ("btagCMVA btagCSVV2 btagDeepC btagDeepFlavB btagDeepFlavC", "f", "="),
        ("chEmEF chHEF muEF neEmEF neHEF", "f", "="),
        ("jercCHF", "f", "b", 3.0, 3.0),
        ("jercCHPUF", "f", "b", 1.0, 12.0),
        ("muonSubtrFactor", "f", "b", 40.0, 0.4),
        ("qgl", "f", "b", 2.0, 1.2, 1.2, 1.2),
        ("rawFactor", "f", "g", 4.0, 0.02),
        ("bRegCorr", "f", "n", 1.05, 0.08, 1.0, 0.15),
        ("bRegRes", "f", "g", 16.0, 0.008),
        ("electronIdx1", "i", "="),
        ("electronIdx2", "i", "k", -1),
        ("jetId", "i", "c", (2, 6), (0.04, 0.96)),
        ("muonIdx1", "i", "="),
        ("muonIdx2", "i", "k", -1),
        ("nConstituents nElectrons nMuons puId genJetIdx hadronFlavour partonFlavour", "i", "="),
        ("cleanmask", "B", "k", 1),
    ],
    "Muon": [
        (_IMPACT, "f", "="),
        ("jetPtRelv2", "f", "e", 1.0, 5.0),
        ("jetRelIso", "f", "e", 0.1, 1.0),
        ("miniPFRelIso_all miniPFRelIso_chg pfRelIso03_all pfRelIso03_chg ptErr", "f", "="),
        ("segmentComp", "f", "b", 8.0, 2.0, 3.0, 3.0),
        ("softMva", "f", "s", 6.0, 2.0, 2.0, 3.0),
        ("tkRelIso", "f", "="),
        ("tunepRelPt", "f", "n", 1.0, 0.02),
        ("mvaLowPt", "f", "s", 6.0, 1.5, 1.5, 4.0),
        ("mvaTTH", "f", "s", 8.0, 1.5, 1.2, 5.0),
        ("jetIdx", "i", "x", "Jet", 0.05, 0.85),
        ("nStations", "i", "i", 1, 4),
        ("nTrackerLayers", "i", "i", 6, 17),
        ("pdgId", "i", "="),
        ("tightCharge", "i", "c", (0, 2), (0.01, 0.99)),
        ("fsrPhotonIdx", "i", "x", "FsrPhoton", 0.5),
        ("highPtId", "B", "c", (0, 1, 2), (0.1, 0.1, 0.8)),
        ("miniIsoId", "B", "="),
        ("multiIsoId", "B", "c", (0, 1, 2), (0.05, 0.15, 0.8), (0.8, 0.15, 0.05)),
        ("mvaId", "B", "c", (0, 1, 2, 3), (0.05, 0.1, 0.25, 0.6), (0.6, 0.2, 0.15, 0.05)),
        ("pfIsoId tkIsoId", "B", "="),
        ("inTimeMuon", "b", "p", 0.999),
        ("isGlobal", "b", "p", 0.97, 0.8),
        ("isPFcand", "b", "p", 0.999, 0.98),
        ("isTracker", "b", "p", 0.99, 0.95),
        ("looseId mediumId mediumPromptId", "b", "="),
        ("softId", "b", "p", 0.9, 0.6),
        ("softMvaId", "b", "p", 0.85, 0.5),
        ("tightId", "b", "="),
        ("triggerIdLoose", "b", "p", 0.99, 0.9),
        ("genPartIdx", "i", "x", "GenPart", 0.97, 0.7),
        ("genPartFlav", "B", "="),
        ("cleanmask", "B", "k", 1),
    ],
    "Electron": [
        ("deltaEtaSC", "f", "n", 0.0, 0.01),
        ("dr03EcalRecHitSumEt", "f", "e", 1.0, 4.0),
        ("dr03HcalDepth1TowerSumEt", "f", "e", 0.5, 2.0),
        ("dr03TkSumPt dr03TkSumPtHEEP", "f", "e", 0.5, 3.0),
        (_IMPACT, "f", "="),
        ("eCorr", "f", "n", 1.0, 0.02),
        ("eInvMinusPInv", "f", "n", 0.0, 0.003, 0.0, 0.02),
        ("energyErr", "f", "="),
        ("hoe", "f", "e", 0.02, 0.1),
        ("jetPtRelv2", "f", "e", 1.0, 5.0),
        ("jetRelIso", "f", "e", 0.1, 1.0),
        ("miniPFRelIso_all miniPFRelIso_chg pfRelIso03_chg", "f", "="),
        ("mvaFall17V1Iso mvaFall17V1noIso mvaFall17V2Iso mvaFall17V2noIso", "f", "="),
        ("r9", "f", "b", 12.0, 2.0),
        ("sieie", "f", "g", 25.0, 0.0004),
        ("mvaTTH", "f", "s", 8.0, 1.5, 1.2, 5.0),
        (
            "cutBased cutBased_Fall17_V1",
            *("i", "c", (0, 1, 2, 3, 4)),
            *((0.01, 0.02, 0.05, 0.12, 0.8), (0.4, 0.25, 0.15, 0.12, 0.08)),
        ),
        ("jetIdx", "i", "x", "Jet", 0.05, 0.85),
        ("pdgId", "i", "="),
        ("photonIdx", "i", "x", "Photon", 0.1),
        ("tightCharge", "i", "c", (0, 1, 2), (0.02, 0.08, 0.9)),
        ("vidNestedWPBitmap vidNestedWPBitmapHEEP", "i", "i", 0, 2**30 - 1),
        ("convVeto", "b", "p", 0.98, 0.85),
        ("cutBased_HEEP", "b", "p", 0.7, 0.05),
        ("isPFcand", "b", "p", 0.99),
        (
            " ".join(
                f"mvaFall17{v}{iso}_{wp}"
                for v in ("V1", "V2")
                for iso in ("Iso", "noIso")
                for wp in ("WP80", "WP90", "WPL")
            ),
            *("b", "="),
        ),
        ("lostHits", "B", "c", (0, 1, 2), (0.9, 0.08, 0.02)),
        ("seedGain", "B", "c", (1, 6, 12), (0.001, 0.009, 0.99)),
        ("genPartIdx", "i", "x", "GenPart", 0.97, 0.7),
        ("genPartFlav", "B", "="),
        ("cleanmask", "B", "k", 1),
    ],
    "Tau": [
        ("chargedIso", "f", "e", 2.0),
        ("dxy", "f", "n", 0.0, 0.005),
        ("dz", "f", "n", 0.0, 0.01),
        ("eta", "f", "="),
        ("leadTkDeltaEta leadTkDeltaPhi", "f", "n", 0.0, 0.02),
        ("leadTkPtOverTauPt", "f", "b", 5.0, 2.0),
        ("mass", "f", "="),
        ("neutralIso", "f", "e", 3.0),
        ("phi", "f", "="),
        ("photonsOutsideSignalCone", "f", "e", 0.2),
        ("pt", "f", "="),
        ("puCorr", "f", "e", 5.0),
        ("rawAntiEle rawAntiEle2018", "f", "s", 2.0, 2.0),
        ("rawDeepTau2017v2p1VSe rawDeepTau2017v2p1VSjet rawDeepTau2017v2p1VSmu", "f", "="),
        ("rawIso rawIsodR03", "f", "e", 3.0),
        (
            (
                "rawMVAnewDM2017v2 rawMVAoldDM rawMVAoldDM2017v1 rawMVAoldDM2017v2"
                " rawMVAoldDMdR032017v2"
            ),
            *("f", "s", 2.0, 3.0),
        ),
        ("charge", "i", "c", (-1, 1), (0.5, 0.5)),
        ("decayMode", "i", "="),
        ("jetIdx", "i", "x", "Jet", 0.9),
        ("rawAntiEleCat rawAntiEleCat2018", "i", "i", -1, 15),
        ("idAntiEle idAntiEle2018", "B", "w", 5),
        ("idAntiMu", "B", "w", 2),
        ("idDecayMode", "b", "p", 0.9),
        ("idDecayModeNewDMs", "b", "p", 0.97),
        ("idDeepTau2017v2p1VSe idDeepTau2017v2p1VSjet idDeepTau2017v2p1VSmu", "B", "="),
        (
            "idMVAnewDM2017v2 idMVAoldDM idMVAoldDM2017v1 idMVAoldDM2017v2 idMVAoldDMdR032017v2",
            *("B", "w", 7),
        ),
        ("genPartIdx", "i", "x", "GenPart", 0.3),
        ("genPartFlav", "B", "c", (0, 1, 2, 3, 4, 5), (0.5, 0.05, 0.05, 0.05, 0.05, 0.3)),
        ("cleanmask", "B", "k", 1),
    ],
    "Photon": [
        ("eCorr", "f", "n", 1.0, 0.02),
        ("energyErr", "f", "g", 2.0, 1.0),
        ("eta", "f", "="),
        ("hoe", "f", "e", 0.03),
        ("mass mvaID", "f", "="),
        ("mvaIDV1", "f", "s", 4.0, 2.0),
        ("pfRelIso03_all pfRelIso03_chg phi pt", "f", "="),
        ("r9", "f", "b", 8.0, 2.0),
        ("sieie", "f", "g", 25.0, 0.0004),
        ("charge", "i", "k", 0),
        ("cutBasedBitmap cutBasedV1Bitmap", "i", "w", 3),
        ("electronIdx", "i", "x", "Electron", 0.05),
        ("jetIdx", "i", "x", "Jet", 0.5),
        ("pdgId", "i", "k", 22),
        ("vidNestedWPBitmap", "i", "i", 0, 2**28 - 1),
        ("electronVeto", "b", "p", 0.9),
        ("isScEtaEB isScEtaEE mvaID_WP80 mvaID_WP90", "b", "="),
        ("pixelSeed", "b", "p", 0.1),
        ("seedGain", "B", "c", (1, 6, 12), (0.001, 0.009, 0.99)),
        ("genPartIdx", "i", "x", "GenPart", 0.6),
        ("genPartFlav", "B", "c", (0, 1, 11), (0.4, 0.5, 0.1)),
        ("cleanmask", "B", "k", 1),
    ],
    "FatJet": [
        ("area", "f", "n", 2.0, 0.05),
        ("btagCMVA", "f", "s", 1.5, 3.0),
        ("btagCSVV2", "f", "b", 1.5, 3.0),
        (
            "btagDDBvL btagDDBvL_noMD btagDDCvB btagDDCvB_noMD btagDDCvL btagDDCvL_noMD",
            *("f", "b", *_SCORES),
        ),
        ("btagDeepB", "f", "b", 1.2, 4.0),
        ("btagHbb", "f", "s", 1.5, 3.0),
        (
            " ".join(
                f"deepTagMD_{t}"
                for t in (
                    *("H4qvsQCD", "HbbvsQCD", "TvsQCD", "WvsQCD", "ZHbbvsQCD", "ZHccvsQCD"),
                    *("ZbbvsQCD", "ZvsQCD", "bbvsLight", "ccvsLight"),
                )
            ),
            *("f", "b", *_SCORES),
        ),
        ("deepTag_H", "f", "b", *_SCORES),
        ("deepTag_QCD deepTag_QCDothers", "f", "b", 3.0, 1.0),
        ("deepTag_TvsQCD deepTag_WvsQCD deepTag_ZvsQCD", "f", "b", *_SCORES),
        ("eta mass msoftdrop", "f", "="),
        ("n2b1", "f", "b", 3.0, 8.0),
        ("n3b1", "f", "g", 4.0, 0.4),
        ("phi pt", "f", "="),
        ("rawFactor", "f", "g", 4.0, 0.02),
        ("tau1 tau2 tau3 tau4", "f", "="),
        ("jetId", "i", "c", (2, 6), (0.05, 0.95)),
        ("subJetIdx1 subJetIdx2", "i", "="),
    ],
    "SubJet": [
        ("btagCMVA", "f", "s", 1.0, 3.0),
        ("btagCSVV2 btagDeepB", "f", "b", *_SCORES),
        ("eta mass", "f", "="),
        ("n2b1", "f", "b", 3.0, 8.0),
        ("n3b1", "f", "g", 4.0, 0.4),
        ("phi pt", "f", "="),
        ("rawFactor", "f", "g", 4.0, 0.02),
        ("tau1 tau2 tau3 tau4", "f", "="),
    ],
    "IsoTrack": [
        ("dxy", "f", "n", 0.0, 0.01),
        ("dz", "f", "n", 0.0, 0.05),
        ("eta", "f", "="),
        ("pfRelIso03_all pfRelIso03_chg phi pt miniPFRelIso_all miniPFRelIso_chg", "f", "="),
        ("fromPV", "i", "c", (0, 1, 2, 3), (0.05, 0.05, 0.1, 0.8)),
        ("pdgId", "i", "c", (-211, 211, -11, 11, -13, 13), (0.3, 0.3, 0.1, 0.1, 0.1, 0.1)),
        ("isHighPurityTrack", "b", "p", 0.95),
        ("isPFcand", "b", "p", 0.9),
        ("isFromLostTrack", "b", "p", 0.05),
    ],
    "SV": [
        ("dlen dlenSig dxy dxySig", "f", "="),
        ("pAngle", "f", "e", 0.02),
        ("chi2", "f", "g", 2.0, 1.0),
        (_FOUR_MOMENTUM, "f", "="),
        ("ndof", "f", "c", (1.0, 3.0, 5.0, 7.0), (0.4, 0.3, 0.2, 0.1)),
        ("x y z", "f", "="),
    ],
    "GenJet": [
        (_FOUR_MOMENTUM, "f", "="),
        ("partonFlavour", "i", "="),
        ("hadronFlavour", "B", "="),
    ],
    "GenPart": [
        (_FOUR_MOMENTUM, "f", "="),
        ("genPartIdxMother pdgId", "i", "="),
        (
            "status",
            "i",
            "c",
            (1, 2, 21, 22, 23, 44, 62, 71),
            (0.5, 0.2, 0.04, 0.06, 0.1, 0.04, 0.04, 0.02),
        ),
        ("statusFlags", "i", "i", 0, 2**15 - 1),
    ],
    "TrigObj": [
        ("pt eta phi l1pt l1pt_2 l2pt", "f", "="),
        (
            "id",
            "i",
            "c",
            (1, 2, 3, 6, 11, 13, 15, 22),
            (0.3, 0.05, 0.05, 0.05, 0.15, 0.2, 0.05, 0.15),
        ),
        ("l1iso", "i", "i", 0, 3),
        ("l1charge", "i", "c", (-1, 0, 1), (0.25, 0.5, 0.25)),
        ("filterBits", "i", "i", 0, 2**16 - 1),
    ],
    "OtherPV": [("z", "f", "n", 0.0, 4.0)],
    "SoftActivityJet": [("eta phi pt", "f", "=")],
    "CorrT1METJet": [
        ("area", "f", "n", 0.50, 0.04),
        ("eta", "f", "="),
        ("muonSubtrFactor", "f", "b", 40.0, 0.4),
        ("phi rawPt", "f", "="),
    ],
    "GenDressedLepton": [
        (_FOUR_MOMENTUM, "f", "="),
        ("pdgId", "i", "="),
        ("hasTauAnc", "b", "p", 0.05),
    ],
    "FsrPhoton": [
        ("dROverEt2", "f", "e", 0.005),
        ("eta phi pt", "f", "="),
        ("relIso03", "f", "e", 0.5),
        ("muonIdx", "i", "x", "Muon", 1.0),
    ],
    "GenVisTau": [
        (_FOUR_MOMENTUM, "f", "="),
        ("charge", "i", "c", (-1, 1), (0.5, 0.5)),
        ("genPartIdxMother", "i", "x", "GenPart", 1.0),
        ("status", "i", "c", (0, 1, 2, 10, 11), (0.3, 0.45, 0.05, 0.15, 0.05)),
    ],
    "GenJetAK8": [
        (_FOUR_MOMENTUM, "f", "="),
        ("partonFlavour", "i", "c", (0, 1, 2, 3, 4, 5, 21), (0.1, 0.1, 0.1, 0.05, 0.05, 0.1, 0.5)),
        ("hadronFlavour", "B", "c", (0, 4, 5), (0.8, 0.08, 0.12)),
    ],
    "SubGenJetAK8": [(_FOUR_MOMENTUM, "f", "=")],
}

#: Flat branches of the wide layout, before the filter and trigger bits.
_WIDE_FLAT_FIELDS: list[_Spec] = [
    ("MET_MetUnclustEnUpDeltaX MET_MetUnclustEnUpDeltaY", "f", "n", 0.0, 2.0),
    ("MET_covXX MET_covXY MET_covYY MET_significance MET_sumEt", "f", "="),
    ("MET_fiducialGenPhi MET_fiducialGenPt GenMET_phi GenMET_pt", "f", "="),
    (
        " ".join(
            f"{met}_{v}"
            for met in ("CaloMET", "ChsMET", "PuppiMET", "RawMET", "TkMET")
            for v in ("phi", "pt", "sumEt")
        ),
        *("f", "="),
    ),
    (
        (
            "fixedGridRhoFastjetAll fixedGridRhoFastjetCentral fixedGridRhoFastjetCentralCalo"
            " fixedGridRhoFastjetCentralChargedPileUp fixedGridRhoFastjetCentralNeutral"
        ),
        *("f", "="),
    ),
    ("PV_ndof PV_x PV_y PV_z PV_chi2 PV_score", "f", "="),
    ("PV_npvsGood", "i", "="),
    ("Pileup_nTrueInt", "f", "="),
    ("Pileup_pudensity Pileup_gpudensity", "f", "g", 2.0, 0.4),
    ("Pileup_nPU Pileup_sumEOOT Pileup_sumLOOT", "i", "="),
    ("SoftActivityJetHT SoftActivityJetHT10 SoftActivityJetHT2 SoftActivityJetHT5", "f", "="),
    ("SoftActivityJetNjets10 SoftActivityJetNjets2 SoftActivityJetNjets5", "i", "="),
    ("genWeight Generator_weight LHEWeight_originalXWGTUP", "f", "="),
    ("Generator_binvar Generator_scalePDF", "f", "g", 3.0, 40.0),
    ("Generator_x1 Generator_x2", "f", "b", 1.0, 12.0),
    ("Generator_xpdf1 Generator_xpdf2", "f", "e", 0.5),
    (
        "Generator_id1 Generator_id2",
        *("i", "c", (21, 1, 2, -1, -2, 3, -3, 4, -4, 5, -5)),
        (0.6, 0.1, 0.1, 0.04, 0.04, 0.03, 0.03, 0.02, 0.02, 0.01, 0.01),
    ),
    ("LHE_HT LHE_HTIncoming LHE_Vpt", "f", "="),
    ("LHE_Njets LHE_Nb LHE_Nc LHE_Nuds LHE_Nglu LHE_NpNLO LHE_NpLO", "B", "="),
    ("btagWeight_CSVV2 btagWeight_DeepCSVB", "f", "n", 1.0, 0.05),
    ("genTtbarId", "i", "="),
    ("HLTriggerFirstPath HLTriggerFinalPath L1Reco_step L1simulation_step", "b", "k", True),
]


def _words(text: str) -> list[str]:
    return text.split()


# Filters, HLT paths and L1 seeds of real NanoAOD (nano_dy.root): all 27 filters, the
# 269 HLT paths with the shortest names plus some common lepton, HT and MET paths, and
# the 112 L1 seeds with the shortest names.
_FLAG_NAMES = _words(
    """
ecalBadCalibFilterV2 HBHENoiseFilter HBHENoiseIsoFilter CSCTightHaloFilter
CSCTightHaloTrkMuUnvetoFilter CSCTightHalo2015Filter globalTightHalo2016Filter
globalSuperTightHalo2016Filter HcalStripHaloFilter hcalLaserEventFilter
EcalDeadCellTriggerPrimitiveFilter EcalDeadCellBoundaryEnergyFilter ecalBadCalibFilter
goodVertices eeBadScFilter ecalLaserCorrFilter trkPOGFilters chargedHadronTrackResolutionFilter
muonBadTrackFilter BadChargedCandidateFilter BadPFMuonFilter BadChargedCandidateSummer16Filter
BadPFMuonSummer16Filter trkPOG_manystripclus53X trkPOG_toomanystripclus53X
trkPOG_logErrorTooManyClusters METFilters
"""
)
_HLT_NAMES = _words(
    """
CaloJet500_NoJetID CaloJet550_NoJetID Mu37_TkMu27 DoubleMu4_3_Bs DoubleMu4_3_Jpsi Mu3_PFJet40
Mu7p5_L2Mu2_Jpsi Mu7p5_L2Mu2_Upsilon Mu7p5_Track2_Jpsi Mu7p5_Track3p5_Jpsi Mu7p5_Track7_Jpsi
DoublePhoton70 DoublePhoton85 Ele20_WPTight_Gsf Ele15_WPLoose_Gsf Ele17_WPLoose_Gsf
Ele20_WPLoose_Gsf Ele27_WPTight_Gsf Ele28_WPTight_Gsf Ele30_WPTight_Gsf Ele32_WPTight_Gsf
Ele35_WPTight_Gsf Ele35_WPTight_Gsf_L1EGMT Ele38_WPTight_Gsf Ele40_WPTight_Gsf
Ele32_WPTight_Gsf_L1DoubleEG HT450_Beamspot HT300_Beamspot ZeroBias_Beamspot IsoMu20 IsoMu24
IsoMu24_eta2p1 IsoMu27 IsoMu30 L1SingleMu18 L1SingleMu25 L2Mu10 L2Mu50 L2Mu23NoVtx_2Cha
DoubleL2Mu50 Mu17_TrkIsoVVL_Mu8_TrkIsoVVL_DZ_Mass8 Mu25_TkMu0_Onia Mu30_TkMu0_Psi
Mu30_TkMu0_Upsilon Mu20_TkMu0_Phi Mu25_TkMu0_Phi Mu12 Mu15 Mu20 Mu27 Mu50 Mu55 OldMu100 TkMu100
DiPFJetAve40 DiPFJetAve60 DiPFJetAve80 DiPFJetAve140 DiPFJetAve200 DiPFJetAve260 DiPFJetAve320
DiPFJetAve400 DiPFJetAve500 DiPFJetAve60_HFJEC DiPFJetAve80_HFJEC DiPFJetAve100_HFJEC
DiPFJetAve160_HFJEC DiPFJetAve220_HFJEC DiPFJetAve300_HFJEC AK8PFJet15 AK8PFJet25 AK8PFJet40
AK8PFJet60 AK8PFJet80 AK8PFJet140 AK8PFJet200 AK8PFJet260 AK8PFJet320 AK8PFJet400 AK8PFJet450
AK8PFJet500 AK8PFJet550 PFJet15 PFJet25 PFJet40 PFJet60 PFJet80 PFJet140 PFJet200 PFJet260
PFJet320 PFJet400 PFJet450 PFJet500 PFJet550 PFJetFwd15 PFJetFwd25 PFJetFwd40 PFJetFwd60
PFJetFwd80 PFJetFwd140 PFJetFwd200 PFJetFwd260 PFJetFwd320 PFJetFwd400 PFJetFwd450 PFJetFwd500
AK8PFJetFwd15 AK8PFJetFwd25 AK8PFJetFwd40 AK8PFJetFwd60 AK8PFJetFwd80 AK8PFJetFwd140
AK8PFJetFwd200 AK8PFJetFwd260 AK8PFJetFwd320 AK8PFJetFwd400 AK8PFJetFwd450 AK8PFJetFwd500
PFHT180 PFHT250 PFHT370 PFHT430 PFHT510 PFHT590 PFHT680 PFHT780 PFHT890 PFHT1050
PFMET110_PFMHT110_IDTight PFMET120_PFMHT120_IDTight PFMET130_PFMHT130_IDTight
PFMET140_PFMHT140_IDTight L1ETMHadSeeds CaloMHT90 PFMET200_NotCleaned MET105_IsoTrk50
MET120_IsoTrk50 Photon300_NoHE Mu8_TrkIsoVVL Mu17_TrkIsoVVL Mu19_TrkIsoVVL
Ele23_Ele12_CaloIdL_TrackIdL_IsoVL_DZ Mu23_TrkIsoVVL_Ele12_CaloIdL_TrackIdL_IsoVL_DZ
Mu12_TrkIsoVVL_Ele23_CaloIdL_TrackIdL_IsoVL_DZ Mu12_DoublePhoton20 Photon20 Photon33 Photon50
Photon75 Photon90 Photon120 Photon150 Photon175 Photon200 Photon100EBHE10 Photon100EEHE10
IsoMu24_TwoProngs35 Dimuon0_Jpsi Dimuon0_LowMass TripleMu_10_5_5_DZ TripleMu_12_10_5 HT425
Ele30_eta2p1_WPTight_Gsf_CentralPFJet35_EleCleaned Ele28_eta2p1_WPTight_Gsf_HT150
Dimuon18_PsiPrime Dimuon25_Jpsi Mu8 Mu17 Mu19
PFHT330PT30_QuadPFJet_75_60_45_40_TriplePFBTagDeepCSV_4p5
PFHT400_SixPFJet32_DoublePFBTagDeepCSV_2p94 PFHT400_SixPFJet32
PFHT450_SixPFJet36_PFBTagDeepCSV_1p59 PFHT450_SixPFJet36 PFHT350 PFHT350MinPFJet15 ECALHT800
Physics Physics_part0 Physics_part1 Physics_part2 Physics_part3 Physics_part4 Physics_part5
Physics_part6 Physics_part7 Random ZeroBias ZeroBias_Alignment ZeroBias_part0 ZeroBias_part1
ZeroBias_part2 ZeroBias_part3 ZeroBias_part4 ZeroBias_part5 ZeroBias_part6 ZeroBias_part7
AK4CaloJet30 AK4CaloJet40 AK4CaloJet50 AK4CaloJet80 AK4CaloJet100 AK4CaloJet120 AK4PFJet30
AK4PFJet50 AK4PFJet80 AK4PFJet100 AK4PFJet120 EcalCalibration HcalCalibration L1NotBptxOR
HcalNZS HcalPhiSym HcalIsolatedbunch IsoTrackHB IsoTrackHE Rsq0p35 Rsq0p40 IsoMu27_MET90
Mu18_Mu9_SameSign Mu18_Mu9 Mu18_Mu9_DZ Mu20_Mu10_SameSign Mu20_Mu10 Mu20_Mu10_DZ
Mu23_Mu12_SameSign Mu23_Mu12 Mu23_Mu12_DZ Mu12_IP6_part0 Mu12_IP6_part1 Mu12_IP6_part2
Mu12_IP6_part3 Mu12_IP6_part4 Mu9_IP5_part0 Mu9_IP5_part1 Mu9_IP5_part2 Mu9_IP5_part3
Mu9_IP5_part4 Mu7_IP4_part0 Mu7_IP4_part1 Mu7_IP4_part2 Mu7_IP4_part3 Mu7_IP4_part4
Mu9_IP4_part0 Mu9_IP4_part1 Mu9_IP4_part2 Mu9_IP4_part3 Mu9_IP4_part4 Mu8_IP5_part0
Mu8_IP5_part1 Mu8_IP5_part2 Mu8_IP5_part3 Mu8_IP5_part4 Mu8_IP6_part0 Mu8_IP6_part1
Mu8_IP6_part2 Mu8_IP6_part3 Mu8_IP6_part4 Mu9_IP6_part0 Mu9_IP6_part1 Mu9_IP6_part2
Mu9_IP6_part3 Mu9_IP6_part4 Mu8_IP3_part0 Mu8_IP3_part1 Mu8_IP3_part2 Mu8_IP3_part3
Mu8_IP3_part4
"""
)
_L1_NAMES = _words(
    """
AlwaysTrue BPTX_NotOR_VME BPTX_RefAND_VME BptxMinus BptxOR BptxPlus BptxXOR DoubleMu0
DoubleMu0_OQ DoubleMu0_SQ DoubleMu0_SQ_OS DoubleMu10_SQ DoubleMu18er2p1 DoubleMu4_SQ_OS
DoubleMu9_SQ DoubleMu_12_5 DoubleMu_15_7 ETM120 ETM150 ETMHF100 ETMHF110 ETMHF120 ETMHF130
ETMHF140 ETMHF150 ETMHF90_HTT60er ETT1200 ETT1600 ETT2000 HTT120er HTT160er HTT200er HTT255er
HTT280er HTT320er HTT360er HTT400er HTT450er IsolatedBunch Mu20_EG10er2p5 Mu3_Jet30er2p5
Mu5_EG23er2p5 Mu6_HTT240er Mu6_HTT250er Mu7_EG23er2p5 NotBptxOR QuadJet60er2p5 QuadMu0
QuadMu0_OQ QuadMu0_SQ SingleEG10er2p5 SingleEG15er2p5 SingleEG26er2p5 SingleEG34er2p5
SingleEG36er2p5 SingleEG38er2p5 SingleEG40er2p5 SingleEG42er2p5 SingleEG45er2p5 SingleEG50
SingleEG60 SingleEG8er2p5 SingleJet10erHE SingleJet120 SingleJet12erHE SingleJet180
SingleJet200 SingleJet35 SingleJet60 SingleJet8erHE SingleJet90 SingleMu0_BMTF SingleMu0_DQ
SingleMu0_EMTF SingleMu0_OMTF SingleMu10er1p5 SingleMu12er1p5 SingleMu14er1p5 SingleMu15_DQ
SingleMu16er1p5 SingleMu18 SingleMu18er1p5 SingleMu20 SingleMu22 SingleMu22_BMTF
SingleMu22_EMTF SingleMu22_OMTF SingleMu25 SingleMu3 SingleMu5 SingleMu6er1p5 SingleMu7
SingleMu7_DQ SingleMu7er1p5 SingleMu8er1p5 SingleMu9er1p5 SingleMuCosmics SingleMuOpen TOTEM_1
TOTEM_2 TOTEM_3 TOTEM_4 TripleEG16er2p5 TripleMu0 TripleMu0_OQ TripleMu0_SQ TripleMu3
TripleMu3_SQ TripleMu_5_3_3 TripleMu_5_5_3 ZeroBias ZeroBias_copy
"""
)

_Field: TypeAlias = tuple[np.dtype[Any], str, tuple[Any, ...]]


def _expand(specs: Iterable[_Spec]) -> dict[str, _Field]:
    """Field groups → field name → (dtype, kind, parameters)."""
    out: dict[str, _Field] = {}
    for names, code, kind, *params in specs:
        for name in names.split():
            if name in out:
                raise AssertionError(f"field {name} listed twice")
            out[name] = (_CODES[code], kind, tuple(params))
    return out


_WIDE_SPECS: dict[str, dict[str, _Field]] = {
    name: _expand(specs) for name, specs in _WIDE_FIELDS.items()
}
_FLAT_SPECS: dict[str, _Field] = _expand(_WIDE_FLAT_FIELDS)
_TRIGGER_BITS: list[str] = [
    *(f"Flag_{name}" for name in _FLAG_NAMES),
    *(f"HLT_{name}" for name in _HLT_NAMES),
    *(f"L1_{name}" for name in _L1_NAMES),
]
# The filters that make up Flag_METFilters (the recommended MET filters).
_MET_FILTERS = _words(
    "goodVertices globalSuperTightHalo2016Filter HBHENoiseFilter HBHENoiseIsoFilter"
    " EcalDeadCellTriggerPrimitiveFilter BadPFMuonFilter eeBadScFilter"
)
# Triggers that fire on the physics: name pattern → (observable, efficiency, prescale
# below this threshold). The other bits fire at a fixed, trigger-like rate.
_TRIGGER_RULES: list[tuple[re.Pattern[str], str, float, float]] = [
    (re.compile(r"HLT_IsoMu(\d+)(_eta2p1)?"), "iso_mu", 0.92, 0.0),
    (re.compile(r"HLT_Ele(\d+)_WPTight_Gsf"), "iso_el", 0.88, 0.0),
    (re.compile(r"HLT_Mu(\d+)"), "mu", 0.95, 50.0),
    (re.compile(r"HLT_PFJet(\d+)"), "jet", 0.98, 450.0),
    (re.compile(r"HLT_PFHT(\d+)"), "ht", 0.98, 1050.0),
    (re.compile(r"HLT_PFMET(\d+)_PFMHT\d+_IDTight"), "met", 0.95, 0.0),
    (re.compile(r"L1_SingleMu(\d+)"), "mu", 0.97, 0.0),
    (re.compile(r"L1_SingleEG(\d+)(er2p5)?"), "el", 0.97, 0.0),
    (re.compile(r"L1_SingleJet(\d+)"), "jet", 0.97, 0.0),
    (re.compile(r"L1_HTT(\d+)er"), "ht", 0.97, 0.0),
    (re.compile(r"L1_ETM(HF)?(\d+)"), "met", 0.97, 0.0),
]
_PRESCALE = 0.01


def _trigger_rate(name: str) -> float:
    """A fixed, plausible rate for bits that do not fire on the physics."""
    if name.startswith("Flag_"):
        return 0.998
    if name in {"L1_AlwaysTrue", "L1_BptxPlus", "L1_BptxMinus", "L1_BptxOR"}:
        return 1.0
    # log-uniform from 3e-4 to 0.3, fixed by the name
    return float(10 ** (-3.5 + 3.0 * zlib.crc32(name.encode()) / 2**32))


def _trigger_plan() -> tuple[Array, list[tuple[int, str, float, float, float]]]:
    """Per trigger bit: its 16-bit rate threshold; the bits that follow the physics."""
    thresholds = np.array(
        [min(round(_trigger_rate(name) * 65536), 65535) for name in _TRIGGER_BITS],
        dtype=np.uint16,
    )
    rules: list[tuple[int, str, float, float, float]] = []
    for row, name in enumerate(_TRIGGER_BITS):
        for pattern, observable, efficiency, unprescaled in _TRIGGER_RULES:
            match = pattern.fullmatch(name)
            if match:
                cut = float(match.groups()[-1] if observable == "met" else match.group(1))
                prescale = _PRESCALE if cut < unprescaled else 1.0
                rules.append((row, observable, cut, efficiency, prescale))
                break
    return thresholds, rules


_TRIGGER_THRESHOLDS, _TRIGGER_PHYSICS = _trigger_plan()
_NEW_COLLECTIONS: tuple[str, ...] = tuple(c for c in _WIDE_FIELDS if c not in COLLECTIONS)

#: Jagged collections of the wide layout (the base ones with their extra fields first).
WIDE_COLLECTIONS: dict[str, dict[str, np.dtype[Any]]] = {
    name: {
        **COLLECTIONS.get(name, {}),
        **{f: spec[0] for f, spec in _WIDE_SPECS.get(name, {}).items()},
    }
    for name in (*COLLECTIONS, *_NEW_COLLECTIONS)
}


def _wide_branch_order() -> dict[str, np.dtype[Any]]:
    out = dict(_FLAT_HEAD)
    for name in ("Jet", "Muon", "Electron"):
        out[f"n{name}"] = _I4
        out.update({f"{name}_{f}": dt for f, dt in WIDE_COLLECTIONS[name].items()})
    out.update(_FLAT_MIDDLE)
    for name in ("PFCands", *_NEW_COLLECTIONS):
        out[f"n{name}"] = _I4
        out.update({f"{name}_{f}": dt for f, dt in WIDE_COLLECTIONS[name].items()})
    out.update({name: spec[0] for name, spec in _FLAT_SPECS.items()})
    out.update(dict.fromkeys(_TRIGGER_BITS, _BOOL))
    return out


#: Every branch of the wide layout in file order → dtype (the default layout's branches
#: keep their relative order).
WIDE_BRANCHES: dict[str, np.dtype[Any]] = _wide_branch_order()


@dataclass(frozen=True)
class _Physics:
    """Per-event quantities of a block that the wide branches are correlated with."""

    signal: bool
    npv: Array
    ht: Array
    jet_flavour: Array  # per jet, in the jets' order: 5 b, 4 c, 0 light
    lep_pt: Array
    lep_phi: Array
    nu_pt: Array
    nu_phi: Array
    met_x: Array
    met_y: Array
    met_sigma: Array


def _event_index(counts: Array) -> Array:
    return np.repeat(np.arange(counts.size), counts)


def _offsets(counts: Array) -> Array:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def _local_index(counts: Array) -> Array:
    """Index of each object within its event."""
    index: Array = np.arange(int(counts.sum())) - np.repeat(_offsets(counts)[:-1], counts)
    return index


def _sort_descending(ev: Array, values: Array) -> Array:
    """Positive values grouped by event (``ev`` ascending), decreasing within each event."""
    bits = values.astype(np.float32).view(np.uint32)
    key = (ev.astype(np.int64) << 32) | (np.uint32(0xFFFFFFFF) - bits).astype(np.int64)
    key.sort()
    low = (key & 0xFFFFFFFF).astype(np.uint32)
    out: Array = (np.uint32(0xFFFFFFFF) - low).view(np.float32)
    return out


def _leading(counts: Array, values: Array) -> Array:
    """Per event: the value of the first (leading) object, 0 without objects."""
    out = np.zeros(counts.size)
    has = counts > 0
    out[has] = values[_offsets(counts)[:-1][has]]
    return out


def _event_sum(counts: Array, values: Array) -> Array:
    return np.bincount(_event_index(counts), weights=values, minlength=counts.size)


def _id_level(values: Array, cuts: Iterable[float], *, below: bool = False) -> Array:
    """How many of the (increasingly tight) cuts each value passes."""
    level = np.zeros(values.size, dtype=np.int64)
    for cut in cuts:
        level += (values < cut) if below else (values > cut)
    return level


def _bitmask(level: Array) -> Array:
    """NanoAOD's cumulative working-point bits: level k → 2^k - 1."""
    return ((np.int64(1) << level) - 1).astype(np.uint8)


_ARITY = {"u": 2, "n": 2, "e": 1, "g": 2, "b": 2, "s": 2, "p": 1, "i": 2, "w": 1, "k": 1}
# Masses of the generator particles by |pdgId| (the rest: 0).
_PDG_MASS = np.zeros(26)
_PDG_MASS[[1, 2, 3, 4, 5, 6, 11, 13, 15, 24]] = [
    *(0.0047, 0.0022, 0.095, 1.27, 4.18, 172.5, 0.000511, 0.10566, 1.777, 80.4),
]


class _WideDraw:
    """Adds the wide layout's branches to a block of events (see :data:`WIDE_BRANCHES`)."""

    def __init__(self, rng: np.random.Generator, block: _Block, physics: _Physics) -> None:
        self.rng = rng
        self.block = block
        self.phys = physics
        self.n = block.n
        self.counts: dict[str, Array] = dict(block.counts)

    # ---------------------------------------------------------------- generic draws

    def draw(
        self,
        kind: str,
        params: Sequence[Any],
        size: int,
        mask: Array | None = None,
        ev: Array | None = None,
    ) -> Array:
        """Values of one generic kind (see _Spec); two parameter sets need ``mask``."""
        rng = self.rng
        if kind in ("c", "x"):
            head, *probs = params
            if len(probs) == 2:
                if mask is None:
                    raise AssertionError(f"kind {kind} with two classes needs a mask")
                first = self.draw(kind, (head, probs[0]), size, ev=ev)
                return np.where(mask, first, self.draw(kind, (head, probs[1]), size, ev=ev))
            if kind == "c":
                return np.asarray(head)[rng.choice(len(head), size, p=probs[0])]
            if ev is None:
                raise AssertionError("kind x needs the objects' events")
            others = self.counts[head][ev]
            hit = (rng.random(size) < probs[0]) & (others > 0)
            pick = (rng.random(size) * others).astype(np.int64)
            return np.where(hit, pick, -1)
        arity = _ARITY[kind]
        if len(params) == 2 * arity:
            if mask is None:
                raise AssertionError(f"kind {kind} with two classes needs a mask")
            first = self.draw(kind, params[:arity], size)
            return np.where(mask, first, self.draw(kind, params[arity:], size))
        if len(params) != arity:
            raise AssertionError(f"kind {kind} takes {arity} parameters, got {params}")
        match kind:
            case "u":
                return rng.uniform(params[0], params[1], size)
            case "n":
                return rng.normal(params[0], params[1], size)
            case "e":
                return rng.exponential(params[0], size)
            case "g":
                return rng.gamma(params[0], params[1], size)
            case "b":
                return rng.beta(params[0], params[1], size)
            case "s":
                score: Array = 2.0 * rng.beta(params[0], params[1], size) - 1.0
                return score
            case "p":
                passed: Array = rng.random(size) < params[0]
                return passed
            case "i":
                return rng.integers(params[0], params[1], size, endpoint=True)
            case "w":
                return _bitmask(rng.integers(0, params[0], size, endpoint=True))
            case _:  # "k"
                return np.full(size, params[0])

    def fill(
        self,
        specs: Mapping[str, _Field],
        computed: Mapping[str, Array],
        size: int,
        *,
        mask: Array | None = None,
        ev: Array | None = None,
    ) -> dict[str, Array]:
        """All fields of ``specs``: the computed ones and generic draws, in their dtypes."""
        missing = {f for f, (_, kind, _) in specs.items() if kind == "="} - set(computed)
        if missing:
            raise AssertionError(f"fields not computed: {sorted(missing)}")
        out: dict[str, Array] = {}
        for name, (dtype, kind, params) in specs.items():
            if kind == "=":
                values = np.asarray(computed[name])
            else:
                values = self.draw(kind, params, size, mask, ev)
            if dtype == _F4:
                bits = 12 if name.rpartition("_")[2] in ("eta", "phi") else 10
                out[name] = _truncate(values, bits)
            else:
                out[name] = values.astype(dtype)
        return out

    def add(self, name: str, computed: Mapping[str, Array], mask: Array | None = None) -> None:
        """Store the fields of collection ``name`` (extra fields of a base collection)."""
        counts = self.counts[name]
        ev = _event_index(counts)
        cols = self.fill(_WIDE_SPECS[name], computed, ev.size, mask=mask, ev=ev)
        if name in self.block.flats:
            self.block.flats[name].update(cols)
        else:
            self.block.counts[name] = counts.astype(np.int32)
            self.block.flats[name] = cols

    def kinematics(
        self, counts: Array, threshold: float, index: float, eta_sigma: float, eta_max: float
    ) -> dict[str, Array]:
        """pt (power law, decreasing within events), eta and phi of new objects."""
        ev = _event_index(counts)
        size = ev.size
        pt = _sort_descending(ev, _pareto(self.rng, size, threshold, index))
        eta = _bounded_normal(self.rng, size, eta_sigma, eta_max)
        return {"pt": pt, "eta": eta, "phi": _to_phi32(_phi(self.rng, size))}

    def substructure(self, size: int) -> dict[str, Array]:
        """N-subjettiness tau1 > tau2 > tau3 > tau4."""
        tau1 = 0.6 * self.rng.beta(3.0, 4.0, size)
        tau2 = tau1 * self.rng.beta(4.0, 2.0, size)
        tau3 = tau2 * self.rng.beta(5.0, 2.0, size)
        return {"tau1": tau1, "tau2": tau2, "tau3": tau3, "tau4": tau3 * self.rng.beta(6, 2, size)}

    # ---------------------------------------------------------------- the layout

    def run(self) -> None:
        rng, n, phys, c = self.rng, self.n, self.phys, self.counts
        n_jet = c["Jet"]
        jet_ev = _event_index(n_jet)
        n_b = np.bincount(jet_ev, weights=phys.jet_flavour == 5, minlength=n).astype(np.int64)
        genjet_index = self.genjets()
        c["Tau"] = np.minimum(rng.poisson(0.15 + 0.08 * n_jet), 5)
        c["Photon"] = np.minimum(rng.poisson(0.3 + 0.01 * phys.npv), 5)
        c["FatJet"] = np.minimum(rng.poisson(0.0015 * phys.ht), 4)
        c["SubJet"] = 2 * c["FatJet"]
        c["IsoTrack"] = np.minimum(rng.poisson(0.2, n), 3)
        c["SV"] = np.minimum(rng.binomial(n_b, 0.65) + rng.poisson(0.3, n), 8)
        c["GenPart"] = np.minimum(8 + rng.poisson(4.0 + 1.5 * n_jet), 80)
        c["TrigObj"] = np.minimum(1 + rng.poisson(0.5 + 0.4 * n_jet), 20)
        c["OtherPV"] = np.minimum(phys.npv - 1, 3)
        c["SoftActivityJet"] = np.minimum(rng.poisson(2.0 + 0.08 * phys.npv), 6)
        c["CorrT1METJet"] = np.minimum(rng.poisson(0.15 * phys.npv), 12)
        c["GenDressedLepton"] = np.ones(n, dtype=np.int64)
        c["FsrPhoton"] = np.minimum(rng.poisson(0.03, n), 2)
        c["GenVisTau"] = np.minimum(rng.poisson(0.05, n), 2)
        c["GenJetAK8"] = np.minimum(c["FatJet"] + rng.poisson(0.1, n), 4)
        c["SubGenJetAK8"] = 2 * c["GenJetAK8"]

        # the primary vertex (beam spot at x, y ~ (-0.024, 0.07) cm)
        self.pv_x = rng.normal(-0.024, 0.002, n)
        self.pv_y = rng.normal(0.070, 0.002, n)
        self.pv_z = rng.normal(0.0, 3.5, n)

        self.jets(genjet_index)
        lepton = self.leptons()
        self.taus()
        self.photons()
        self.fatjets()
        for name, store, (threshold, index, eta_sigma, eta_max) in (
            ("IsoTrack", self.isotracks, (5.0, 2.0, 1.2, 2.4)),
            ("SV", self.secondary_vertices, (5.0, 2.0, 1.2, 2.4)),
            ("TrigObj", self.trigger_objects, (10.0, 2.0, 1.3, 2.5)),
            ("FsrPhoton", self.fsr_photons, (2.0, 2.5, 1.3, 2.4)),
            ("GenVisTau", self.gen_taus, (15.0, 2.5, 1.3, 2.5)),
            ("GenJetAK8", self.gen_fatjets, (150.0, 3.0, 1.0, 2.4)),
        ):
            store(self.kinematics(c[name], threshold, index, eta_sigma, eta_max))
        self.generator(lepton)
        self.soft_jets()
        self.add("OtherPV", {})
        self.flat(lepton)

    def genjets(self) -> Array:
        """GenJets: the jets at generator level (95 %) plus soft ones; index per jet."""
        rng, phys = self.rng, self.phys
        jets = self.block.flats["Jet"]
        ev = _event_index(self.counts["Jet"])
        matched = rng.random(ev.size) < 0.95
        m = int(matched.sum())
        n_soft = rng.poisson(1.0, self.n)
        soft_ev = _event_index(n_soft)
        k = soft_ev.size
        parts = _Parts(
            np.concatenate([ev[matched], soft_ev]),
            {
                "pt": np.concatenate(
                    [
                        jets["pt"][matched] * np.abs(rng.normal(1.0, 0.1, m)),
                        10.0 + rng.exponential(5.0, k),
                    ]
                ),
                "eta": np.concatenate(
                    [jets["eta"][matched] + rng.normal(0, 0.03, m), _bounded_normal(rng, k, 2, 4.7)]
                ),
                "phi": np.concatenate(
                    [_wrap_phi(jets["phi"][matched] + rng.normal(0, 0.03, m)), _phi(rng, k)]
                ),
                "flavour": np.concatenate([phys.jet_flavour[matched], np.zeros(k, np.int8)]),
                "source": np.concatenate([np.arange(m), np.full(k, -1)]),
            },
        )
        counts, gen = parts.sorted_by_pt(self.n)
        self.counts["GenJet"] = counts
        # where each matched jet ended up: its GenJet's index within the event
        position = np.empty(m, dtype=np.int64)
        is_matched = gen["source"] >= 0
        position[gen["source"][is_matched]] = np.flatnonzero(is_matched)
        gen_ev = _event_index(counts)
        index = np.full(ev.size, -1, dtype=np.int64)
        index[matched] = position - _offsets(counts)[:-1][gen_ev[position]]
        self.parton = self.parton_flavour(phys.jet_flavour)
        gen_parton = np.zeros(gen_ev.size, dtype=np.int64)
        gen_parton[position] = self.parton[matched]
        eta = np.clip(gen["eta"], -5.19, 5.19)
        self.add(
            "GenJet",
            {
                "pt": gen["pt"],
                "eta": eta,
                "phi": _to_phi32(_wrap_phi(gen["phi"])),
                "mass": gen["pt"] * rng.gamma(4.0, 0.035, gen_ev.size),
                "partonFlavour": gen_parton,
                "hadronFlavour": gen["flavour"],
            },
        )
        return index

    def parton_flavour(self, flavour: Array) -> Array:
        """±5 / ±4 for b / c jets; gluons (21) and light quarks for the rest."""
        size = flavour.size
        sign = np.where(self.rng.random(size) < 0.5, -1, 1)
        light = np.where(self.rng.random(size) < 0.55, 21, sign * self.rng.integers(1, 4, size))
        return np.where(flavour > 0, sign * flavour, light)

    def jets(self, genjet_index: Array) -> None:
        rng = self.rng
        jets = self.block.flats["Jet"]
        flavour = self.phys.jet_flavour
        ev = _event_index(self.counts["Jet"])
        size = ev.size
        pt = jets["pt"].astype(np.float64)
        deep_b = jets["btagDeepB"].astype(np.float64)
        is_b = flavour == 5
        central = np.abs(jets["eta"]) <= 2.5
        deep_c = np.where(
            is_b,
            rng.beta(1.5, 4.0, size),
            np.where(flavour == 4, rng.beta(2.5, 2.5, size), rng.beta(0.8, 8.0, size)),
        )
        csv = np.clip(0.9 * deep_b + rng.normal(0.05, 0.1, size), 0.0, 1.0)
        # energy fractions: charged ones need the tracker (|eta| < 2.5); they add up to 1
        shapes = np.array([0.3, 6.0, 0.05, 2.5, 2.5])[:, None]  # chEm chH mu neEm neH
        frac = rng.gamma(shapes, 1.0, (5, size))
        frac[[0, 1, 2]] *= central
        frac /= frac.sum(axis=0)
        muon_idx = self.draw("x", ("Muon", 0.15, 0.03), size, is_b, ev)
        electron_idx = self.draw("x", ("Electron", 0.05, 0.02), size, is_b, ev)
        self.add(
            "Jet",
            {
                "btagCMVA": np.clip(2 * deep_b - 1 + rng.normal(0, 0.15, size), -1, 1),
                "btagCSVV2": np.where(central, csv, -10.0),
                "btagDeepC": deep_c,
                "btagDeepFlavB": np.clip(deep_b + rng.normal(0, 0.06, size), 0, 1),
                "btagDeepFlavC": np.clip(deep_c + rng.normal(0, 0.06, size), 0, 1),
                **dict(zip(("chEmEF", "chHEF", "muEF", "neEmEF", "neHEF"), frac, strict=True)),
                "electronIdx1": electron_idx,
                "muonIdx1": muon_idx,
                "nConstituents": 2 + rng.poisson(4.0 + 0.12 * pt),
                "nElectrons": electron_idx >= 0,
                "nMuons": muon_idx >= 0,
                "puId": np.where(
                    pt > 50, 7, self.draw("c", ((0, 4, 6, 7), (0.15, 0.1, 0.15, 0.6)), size)
                ),
                "genJetIdx": genjet_index,
                "hadronFlavour": flavour,
                "partonFlavour": self.parton,
            },
            mask=is_b,
        )

    def impact(self, prompt: Array, eta: Array) -> dict[str, Array]:
        """Impact parameters (cm): small for prompt leptons, larger for the others."""
        rng, size = self.rng, prompt.size
        dxy = rng.normal(0.0, np.where(prompt, 0.002, 0.02))
        dz = rng.normal(0.0, np.where(prompt, 0.004, 0.04))
        dxy_err = rng.gamma(4.0, 0.0005, size)
        dz_err = rng.gamma(4.0, 0.0008, size)
        ip3d = np.hypot(dxy, dz / np.cosh(eta))
        return {
            "dxy": dxy,
            "dxyErr": dxy_err,
            "dz": dz,
            "dzErr": dz_err,
            "ip3d": ip3d,
            "sip3d": ip3d / np.hypot(dxy_err, dz_err / np.cosh(eta)),
        }

    def leptons(self) -> dict[str, Array]:
        """Muon and Electron extra fields; returns the isolated lepton of each event."""
        rng, n = self.rng, self.n
        lepton = {"eta": np.zeros(n), "pdgId": np.zeros(n, dtype=np.int64), "mass": np.zeros(n)}
        lepton |= {"mu_pt": np.zeros(n), "el_pt": np.zeros(n)}
        for name, iso_name, pdg, mass in (
            ("Muon", "pfRelIso04_all", 13, _MUON_MASS),
            ("Electron", "pfRelIso03_all", 11, _ELECTRON_MASS),
        ):
            cols = self.block.flats[name]
            ev = _event_index(self.counts[name])
            size = ev.size
            iso = cols[iso_name].astype(np.float64)
            eta = cols["eta"].astype(np.float64)
            prompt = iso < 0.15  # the isolated lepton from the W; soft leptons are above 0.2
            pdg_id = -pdg * cols["charge"].astype(np.int64)
            lepton["eta"][ev[prompt]] = eta[prompt]
            lepton["pdgId"][ev[prompt]] = pdg_id[prompt]
            lepton["mass"][ev[prompt]] = mass
            lepton["mu_pt" if pdg == 13 else "el_pt"][ev[prompt]] = cols["pt"][prompt]
            flav = np.where(prompt, 1, self.draw("c", _LEPTON_FLAV, size))
            mini = iso * rng.gamma(8.0, 0.09, size)
            common = {
                **self.impact(prompt, eta),
                "miniPFRelIso_all": mini,
                "miniPFRelIso_chg": mini * rng.beta(4.0, 2.0, size),
                "pdgId": pdg_id,
                "genPartFlav": flav,
            }
            if name == "Muon":
                iso03 = iso * rng.beta(8.0, 2.0, size)
                tk_iso = iso * rng.beta(2.0, 3.0, size)
                u = rng.random(size)  # one draw: tight ⊂ medium ⊂ loose
                self.add(
                    name,
                    {
                        **common,
                        "pfRelIso03_all": iso03,
                        "pfRelIso03_chg": iso03 * rng.beta(4.0, 2.0, size),
                        "ptErr": cols["pt"] * rng.gamma(8.0, 0.002, size),
                        "tkRelIso": tk_iso,
                        "miniIsoId": _id_level(mini, (0.4, 0.2, 0.1, 0.05), below=True),
                        "pfIsoId": _id_level(iso, (0.4, 0.25, 0.2, 0.15, 0.1, 0.05), below=True),
                        "tkIsoId": _id_level(tk_iso, (0.1, 0.05), below=True),
                        "looseId": u < np.where(prompt, 0.995, 0.95),
                        "mediumId": u < np.where(prompt, 0.98, 0.7),
                        "mediumPromptId": u < np.where(prompt, 0.97, 0.3),
                        "tightId": u < np.where(prompt, 0.96, 0.55),
                    },
                    mask=prompt,
                )
            else:
                score = np.where(prompt, rng.beta(8.0, 1.5, size), rng.beta(1.5, 3.0, size))
                mvas: dict[str, Array] = {}
                for version in ("V1", "V2"):
                    for kind in ("Iso", "noIso"):
                        mva = np.clip(2 * score - 1 + rng.normal(0, 0.05, size), -1, 1)
                        mvas[f"mvaFall17{version}{kind}"] = mva
                        for wp, cut in (("WP80", 0.8), ("WP90", 0.5), ("WPL", -0.5)):
                            mvas[f"mvaFall17{version}{kind}_{wp}"] = mva > cut
                energy = cols["pt"] * np.cosh(eta)
                self.add(
                    name,
                    {
                        **common,
                        **mvas,
                        "energyErr": energy * rng.gamma(10.0, 0.003, size),
                        "pfRelIso03_chg": iso * rng.beta(4.0, 2.0, size),
                    },
                    mask=prompt,
                )
        return lepton

    def taus(self) -> None:
        rng = self.rng
        kin = self.kinematics(self.counts["Tau"], 20.0, 2.5, 1.2, 2.3)
        size = kin["pt"].size
        mode = self.draw("c", ((0, 1, 2, 10, 11), (0.3, 0.45, 0.05, 0.15, 0.05)), size)
        mass = np.where(mode == 0, _PION_MASS, 0.3 + 1.4 * rng.beta(2.0, 3.0, size))
        vs_e, vs_jet, vs_mu = (
            rng.beta(3.0, 1.0, size),
            rng.beta(1.0, 3.0, size),
            rng.beta(5, 1, size),
        )
        self.add(
            "Tau",
            {
                **kin,
                "mass": mass,
                "decayMode": mode,
                "rawDeepTau2017v2p1VSe": vs_e,
                "rawDeepTau2017v2p1VSjet": vs_jet,
                "rawDeepTau2017v2p1VSmu": vs_mu,
                "idDeepTau2017v2p1VSe": _bitmask(_id_level(vs_e, np.linspace(0.1, 0.95, 8))),
                "idDeepTau2017v2p1VSjet": _bitmask(_id_level(vs_jet, np.linspace(0.1, 0.9, 8))),
                "idDeepTau2017v2p1VSmu": _bitmask(_id_level(vs_mu, (0.3, 0.5, 0.7, 0.9))),
            },
        )

    def photons(self) -> None:
        rng = self.rng
        kin = self.kinematics(self.counts["Photon"], 5.0, 2.0, 1.4, 2.5)
        size = kin["pt"].size
        mva = 2.0 * rng.beta(4.0, 2.0, size) - 1.0
        iso = rng.exponential(0.3, size)
        abs_eta = np.abs(kin["eta"])
        self.add(
            "Photon",
            {
                **kin,
                "mass": np.zeros(size),
                "mvaID": mva,
                "pfRelIso03_all": iso,
                "pfRelIso03_chg": iso * rng.beta(2.0, 2.0, size),
                "isScEtaEB": abs_eta < 1.4442,
                "isScEtaEE": abs_eta > 1.566,
                "mvaID_WP80": mva > 0.42,
                "mvaID_WP90": mva > -0.02,
            },
        )

    def fatjets(self) -> None:
        """AK8 jets and their two subjets each (stored pairwise, fat jet by fat jet)."""
        rng, c = self.rng, self.counts
        kin = self.kinematics(c["FatJet"], 170.0, 3.0, 1.0, 2.4)
        size = kin["pt"].size
        mass = kin["pt"] * rng.gamma(4.0, 0.05, size)
        local = _local_index(c["FatJet"])
        self.add(
            "FatJet",
            {
                **kin,
                "mass": mass,
                "msoftdrop": mass * rng.beta(6.0, 2.0, size),
                **self.substructure(size),
                "subJetIdx1": 2 * local,
                "subJetIdx2": 2 * local + 1,
            },
        )
        # the harder subjet first, sharing the fat jet's pt with the softer one
        parent = np.arange(2 * size) // 2
        z = rng.beta(3.0, 3.0, size)
        hard = np.maximum(z, 1.0 - z)[parent]
        pt = kin["pt"][parent] * np.where(np.arange(2 * size) % 2 == 0, hard, 1.0 - hard)
        self.add(
            "SubJet",
            {
                "pt": pt,
                "eta": np.clip(kin["eta"][parent] + rng.normal(0, 0.2, 2 * size), -2.6, 2.6),
                "phi": _to_phi32(_wrap_phi(kin["phi"][parent] + rng.normal(0, 0.2, 2 * size))),
                "mass": pt * rng.gamma(3.0, 0.04, 2 * size),
                **self.substructure(2 * size),
            },
        )

    def isotracks(self, kin: dict[str, Array]) -> None:
        rng, size = self.rng, kin["pt"].size
        iso = rng.exponential(0.1, size)
        mini = rng.exponential(0.1, size)
        self.add(
            "IsoTrack",
            {
                **kin,
                "pfRelIso03_all": iso,
                "pfRelIso03_chg": iso * rng.beta(4.0, 2.0, size),
                "miniPFRelIso_all": mini,
                "miniPFRelIso_chg": mini * rng.beta(4.0, 2.0, size),
            },
        )

    def secondary_vertices(self, kin: dict[str, Array]) -> None:
        """Secondary vertices (b-hadron decays): flight distance from the primary vertex."""
        rng, size = self.rng, kin["pt"].size
        ev = _event_index(self.counts["SV"])
        dlen = rng.exponential(0.3, size)
        sigma = rng.gamma(4.0, 0.005, size)
        transverse = dlen / np.cosh(kin["eta"])
        phi = kin["phi"].astype(np.float64)
        self.add(
            "SV",
            {
                **kin,
                "mass": rng.gamma(2.0, 0.8, size),
                "dlen": dlen,
                "dlenSig": dlen / sigma,
                "dxy": transverse,
                "dxySig": transverse / sigma,
                "x": self.pv_x[ev] + transverse * np.cos(phi),
                "y": self.pv_y[ev] + transverse * np.sin(phi),
                "z": self.pv_z[ev] + dlen * np.tanh(kin["eta"]),
            },
        )

    def trigger_objects(self, kin: dict[str, Array]) -> None:
        rng, size = self.rng, kin["pt"].size
        pt = kin["pt"]
        self.add(
            "TrigObj",
            {
                **kin,
                "l1pt": pt * np.abs(rng.normal(1.0, 0.15, size)),
                "l1pt_2": np.where(rng.random(size) < 0.7, 0.0, pt * rng.beta(2, 3, size)),
                "l2pt": np.where(rng.random(size) < 0.8, 0.0, pt * rng.normal(1.0, 0.1, size)),
            },
        )

    def fsr_photons(self, kin: dict[str, Array]) -> None:
        self.add("FsrPhoton", kin)

    def gen_taus(self, kin: dict[str, Array]) -> None:
        self.add("GenVisTau", {**kin, "mass": 1.7 * self.rng.beta(2.0, 2.0, kin["pt"].size)})

    def gen_fatjets(self, kin: dict[str, Array]) -> None:
        rng, size = self.rng, kin["pt"].size
        self.add("GenJetAK8", {**kin, "mass": kin["pt"] * rng.gamma(4.0, 0.05, size)})
        sub = self.kinematics(self.counts["SubGenJetAK8"], 20.0, 2.0, 1.0, 2.4)
        sub["mass"] = sub["pt"] * rng.gamma(3.0, 0.04, sub["pt"].size)
        self.add("SubGenJetAK8", sub)

    def generator(self, lepton: Mapping[str, Array]) -> None:
        """GenPart (a toy decay history) and the dressed lepton from the W."""
        rng, n = self.rng, self.n
        counts = self.counts["GenPart"]
        size = int(counts.sum())
        pdg = self.draw("c", _GEN_PDG, size)
        local = _local_index(counts)
        # the first two are the incoming partons; the others come from an earlier particle
        mother = np.where(local < 2, -1, (rng.random(size) * local).astype(np.int64))
        self.add(
            "GenPart",
            {
                "pt": np.minimum(_pareto(rng, size, 1.0, 1.5), 3000.0),
                "eta": _bounded_normal(rng, size, 2.5, 8.0),
                "phi": _to_phi32(_phi(rng, size)),
                "mass": _PDG_MASS[np.minimum(np.abs(pdg), _PDG_MASS.size - 1)],
                "genPartIdxMother": mother,
                "pdgId": pdg,
            },
        )
        self.add(
            "GenDressedLepton",
            {
                "pt": self.phys.lep_pt * np.abs(rng.normal(1.0, 0.02, n)),
                "eta": lepton["eta"] + rng.normal(0.0, 0.005, n),
                "phi": _to_phi32(self.phys.lep_phi),
                "mass": lepton["mass"],
                "pdgId": lepton["pdgId"],
            },
        )

    def soft_jets(self) -> None:
        rng, counts = self.rng, self.counts
        soft = counts["SoftActivityJet"]
        ev = _event_index(soft)
        self.soft_pt = _sort_descending(ev, 1.0 + rng.exponential(5.0, ev.size))
        self.add(
            "SoftActivityJet",
            {
                "pt": self.soft_pt,
                "eta": _bounded_normal(rng, ev.size, 2.5, 4.7),
                "phi": _to_phi32(_phi(rng, ev.size)),
            },
        )
        ev = _event_index(counts["CorrT1METJet"])
        self.add(
            "CorrT1METJet",
            {
                "rawPt": _sort_descending(ev, rng.uniform(5.0, 15.0, ev.size)),
                "eta": _bounded_normal(rng, ev.size, 2.5, 5.0),
                "phi": _to_phi32(_phi(rng, ev.size)),
            },
        )

    def flat(self, lepton: Mapping[str, Array]) -> None:
        """Event-level branches: MET flavours, pile-up, generator info, filters, triggers."""
        rng, n, phys, c = self.rng, self.n, self.phys, self.counts
        npv = phys.npv.astype(np.float64)
        ht = phys.ht
        met = np.hypot(phys.met_x, phys.met_y)
        sigma2 = phys.met_sigma**2
        sum_et = ht + 15.0 * npv + rng.exponential(50.0, n)
        computed: dict[str, Array] = {
            "MET_covXX": sigma2 * rng.normal(1.0, 0.05, n),
            "MET_covXY": sigma2 * rng.normal(0.0, 0.05, n),
            "MET_covYY": sigma2 * rng.normal(1.0, 0.05, n),
            "MET_significance": met**2 / sigma2,
            "MET_sumEt": sum_et,
            "MET_fiducialGenPhi": _to_phi32(phys.nu_phi),
            "MET_fiducialGenPt": phys.nu_pt,
            "GenMET_phi": _to_phi32(phys.nu_phi),
            "GenMET_pt": phys.nu_pt,
        }
        # the other MET flavours: (response, resolution, sum Et) relative to MET
        for name, (scale, spread, et) in {
            "CaloMET": (1.0, 1.5, 0.9),
            "ChsMET": (1.0, 1.1, 1.0),
            "PuppiMET": (1.0, 0.8, 0.8),
            "RawMET": (0.95, 1.0, 0.95),
            "TkMET": (0.7, 1.8, 0.6),
        }.items():
            x = scale * phys.met_x + rng.normal(0.0, 1.0, n) * spread * phys.met_sigma
            y = scale * phys.met_y + rng.normal(0.0, 1.0, n) * spread * phys.met_sigma
            computed[f"{name}_pt"] = np.hypot(x, y)
            computed[f"{name}_phi"] = _to_phi32(np.arctan2(y, x))
            computed[f"{name}_sumEt"] = et * sum_et * rng.normal(1.0, 0.03, n)
        for name, slope in {
            "All": 0.6,
            "Central": 0.57,
            "CentralCalo": 0.4,
            "CentralChargedPileUp": 0.35,
            "CentralNeutral": 0.1,
        }.items():
            computed[f"fixedGridRhoFastjet{name}"] = slope * npv + rng.gamma(2.0, 0.25, n)
        n_tracks = rng.poisson(20.0 + 0.1 * ht)
        ndof = 2.0 * n_tracks - 3.0
        true_int = np.maximum(npv / 0.7 + rng.normal(0.0, 2.0, n), 0.5)
        soft = c["SoftActivityJet"]
        soft_ev = _event_index(soft)
        weight = np.where(rng.random(n) < 0.1, -1.0, 1.0)  # NLO-like negative weights
        flavour = phys.jet_flavour
        jet_ev = _event_index(c["Jet"])
        n_b = np.bincount(jet_ev, weights=flavour == 5, minlength=n)
        n_c = np.bincount(jet_ev, weights=flavour == 4, minlength=n)
        n_light = np.minimum(c["Jet"] - n_b - n_c, 4)
        n_glu = n_light // 2
        w_x = phys.lep_pt * np.cos(phys.lep_phi) + phys.nu_pt * np.cos(phys.nu_phi)
        w_y = phys.lep_pt * np.sin(phys.lep_phi) + phys.nu_pt * np.sin(phys.nu_phi)
        lhe_ht = ht * np.abs(rng.normal(1.0, 0.1, n))
        computed |= {
            "PV_ndof": ndof,
            "PV_x": self.pv_x,
            "PV_y": self.pv_y,
            "PV_z": self.pv_z,
            "PV_chi2": ndof * rng.gamma(50.0, 0.02, n),
            "PV_score": (ht**2 + phys.lep_pt**2) * rng.gamma(10.0, 0.1, n),
            "PV_npvsGood": phys.npv - rng.binomial(phys.npv, 0.03),
            "Pileup_nTrueInt": true_int,
            "Pileup_nPU": rng.poisson(true_int),
            "Pileup_sumEOOT": rng.poisson(4.0 * true_int),
            "Pileup_sumLOOT": rng.poisson(4.0 * true_int),
            "SoftActivityJetHT": _event_sum(soft, self.soft_pt),
            "genWeight": weight,
            "Generator_weight": weight,
            "LHEWeight_originalXWGTUP": weight,
            "LHE_HT": lhe_ht,
            "LHE_HTIncoming": lhe_ht * rng.beta(9.0, 1.0, n),
            "LHE_Vpt": np.hypot(w_x, w_y),
            "LHE_Njets": np.minimum(c["Jet"], 4),
            "LHE_Nb": np.minimum(n_b, 4),
            "LHE_Nc": np.minimum(n_c, 4),
            "LHE_Nuds": n_light - n_glu,
            "LHE_Nglu": n_glu,
            "LHE_NpNLO": np.minimum(c["Jet"], 4),
            "LHE_NpLO": np.zeros(n),
            "genTtbarId": (
                self.draw("c", ((0, 51, 52, 53, 54, 55), (0.9, 0.02, 0.02, 0.02, 0.02, 0.02)), n)
                if phys.signal
                else np.zeros(n)
            ),
        }
        for cut in (2, 5, 10):
            above = self.soft_pt > cut
            computed[f"SoftActivityJetHT{cut}"] = np.bincount(
                soft_ev, weights=self.soft_pt * above, minlength=n
            )
            computed[f"SoftActivityJetNjets{cut}"] = np.bincount(soft_ev[above], minlength=n)
        self.block.scalars.update(self.fill(_FLAT_SPECS, computed, n))
        self.trigger_bits(lepton)

    def trigger_bits(self, lepton: Mapping[str, Array]) -> None:
        """Filters, HLT paths and L1 seeds: one 2-D draw, then the physics triggers."""
        n, c, phys = self.n, self.counts, self.phys
        flats = self.block.flats
        u = self.rng.integers(0, 65536, (len(_TRIGGER_BITS), n), dtype=np.uint16)
        bits = u < _TRIGGER_THRESHOLDS[:, None]
        # one smearing and one efficiency draw per event and observable: a path with a
        # higher threshold fires on a subset of the events of one with a lower threshold
        observables = {
            "iso_mu": lepton["mu_pt"],
            "iso_el": lepton["el_pt"],
            "mu": _leading(c["Muon"], flats["Muon"]["pt"]),
            "el": _leading(c["Electron"], flats["Electron"]["pt"]),
            "jet": _leading(c["Jet"], flats["Jet"]["pt"]),
            "ht": phys.ht,
            "met": np.hypot(phys.met_x, phys.met_y),
        }
        smear = self.rng.normal(1.0, 0.04, (len(observables), n))
        seen = {k: v * s for (k, v), s in zip(observables.items(), smear, strict=True)}
        luck = dict(zip(observables, self.rng.random((len(observables), n)), strict=True))
        for row, observable, cut, efficiency, prescale in _TRIGGER_PHYSICS:
            bits[row] = (seen[observable] > cut) & (luck[observable] < efficiency * prescale)
        names = {name: row for row, name in enumerate(_TRIGGER_BITS)}
        bits[names["Flag_METFilters"]] = np.logical_and.reduce(
            [bits[names[f"Flag_{f}"]] for f in _MET_FILTERS]
        )
        self.block.scalars.update(zip(_TRIGGER_BITS, bits, strict=True))


def _sample_code(sample: str) -> int:
    return zlib.crc32(sample.encode())


def _draw_block(sample: str, seed: int, block: int, wide: bool = False) -> _Block:
    """The ``RNG_BLOCK`` events of block number ``block`` of a sample."""
    entropy = [seed, _sample_code(sample), block]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
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
    flavour = jets.pop("flavour")

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
    out = _Block(
        n,
        scalars,
        {"Jet": jet_counts, "Muon": muon_counts, "Electron": electron_counts, "PFCands": pf_counts},
        {"Jet": jets, "Muon": muons, "Electron": electrons, "PFCands": pfcands},
    )
    if wide:
        # a generator of its own: the default layout's branches keep their values
        wide_rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(1,)))
        physics = _Physics(
            signal=sample == "signal",
            npv=npv,
            ht=ht,
            jet_flavour=flavour,
            lep_pt=lep_pt,
            lep_phi=lep_phi,
            nu_pt=nu_pt,
            nu_phi=nu_phi,
            met_x=met_x,
            met_y=met_y,
            met_sigma=sigma,
        )
        _WideDraw(wide_rng, out, physics).run()
    return out


def _generate_block(
    sample: str, seed: int, first_event: int, n_events: int, wide: bool = False
) -> _Block:
    stop = first_event + n_events
    numbers = range(first_event // RNG_BLOCK, -(-stop // RNG_BLOCK))

    def draw(b: int) -> _Block:
        lo = max(first_event - b * RNG_BLOCK, 0)
        hi = min(stop - b * RNG_BLOCK, RNG_BLOCK)
        block = _draw_block(sample, seed, b, wide)
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
        blocks = [_draw_block(sample, seed, 0, wide).slice(0, 0)]
    out = _Block.concat(blocks)
    index = np.arange(first_event, stop, dtype=np.uint64)
    out.scalars["run"] = np.ones(n_events, dtype=np.uint32)
    out.scalars["luminosityBlock"] = (1 + index // _LUMI_EVENTS).astype(np.uint32)
    out.scalars["event"] = index + np.uint64(1)
    return out


def generate_events(
    sample: str, n_events: int, seed: int, *, first_event: int = 0, wide: bool = False
) -> EventArrays:
    """Draw ``n_events`` NanoAOD-like events of one sample, in memory.

    Args:
        sample: ``"signal"`` (ttbar-like) or ``"background"`` (W+jets-like).
        n_events: number of events (≥ 0).
        seed: random seed (≥ 0); same seed, same events.
        first_event: index of the first event within the sample; the events are
            numbered ``first_event + 1``, ... in the ``event`` branch. Event ``k`` is
            the same whatever range it is drawn in.
        wide: also draw the ~870 further branches of :data:`WIDE_BRANCHES` (more jet and
            lepton fields, taus, photons, AK8 jets, secondary vertices, generator objects,
            MET flavours, filters, HLT and L1 bits), as in real NanoAOD; the branches of
            :data:`BRANCHES` keep the values they have without it.

    Returns:
        Branch name → array, in :data:`BRANCHES` (or :data:`WIDE_BRANCHES`) order: numpy
        arrays for flat branches, awkward ``var * dtype`` arrays for the jagged ones. Jets,
        muons, electrons, PF candidates and most new collections are sorted by decreasing
        pt within each event.

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
    block = _generate_block(sample, seed, first_event, n_events, wide)
    return block.to_events(WIDE_BRANCHES if wide else BRANCHES)


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


def _chunks(
    sample: str, seed: int, first: int, size: int, wide: bool = False
) -> Iterator[EventArrays]:
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
        block = _generate_block(sample, seed, bound[0], bound[1] - bound[0], wide)
        return block.to_events(WIDE_BRANCHES if wide else BRANCHES)

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
    wide: bool = False,
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
        wide: write the ~900 branches of :data:`WIDE_BRANCHES` (real NanoAOD names and
            dtypes: more jet and lepton fields, more collections, HLT / L1 / filter bits)
            instead of the 35 of :data:`BRANCHES`; those 35 have the same values either way.

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
        chunks = _chunks(sample, seed, first, size, wide)
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
