"""What is in a ROOT file: trees, entries, branches, types, jaggedness, sizes.

:func:`inspect_file` builds a :class:`FileReport` for a local or remote file
(TTree or RNTuple) from metadata only, plus one read of the counter branches
(``nJet``, ``nMuon``, ..., each read once however many branches share it) for
the per-event length statistics of the jagged branches. :func:`print_report`
shows it as tables (a header, one row per jagged collection, one row per
branch); :meth:`FileReport.to_dict` gives a JSON-serialisable view.

Conventions:

* ``kind`` is ``"flat"`` (one number, or a fixed-size array, per event),
  ``"jagged"`` (a variable-length list of numbers per event), ``"other"``
  (strings, records, nested lists, objects) or ``"unsupported"`` (uproot
  cannot interpret the branch).
* ``type`` is the awkward type of one event (``float32``, ``var * float32``);
  ``typename`` is the C++ type stored in the file.
* Length quantiles are lengths that occur in the data: ``q90`` is the
  smallest length ``L`` such that at least 90 % of the events have ``≤ L``
  entries (numpy's ``inverted_cdf`` method), i.e. padding to ``L`` truncates
  at most 10 % of the events.
* RNTuple: only top-level fields are listed; the importer's internal
  ``_collectionN`` fields (whose content the projected ``Jet_pt``-style fields
  show again) and dotted subfields are hidden. Byte sizes come from the page
  list; a projected field counts its own data columns, the cardinality field
  (``nJet``) counts the collection's offsets.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import awkward as ak
import numpy as np
import uproot
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlaas4hep.data.branches import parse_patterns, select_branches
from mlaas4hep.data.rootfile import describe_exception, get_tree, is_rntuple, open_root, tree_names
from mlaas4hep.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = [
    "BranchInfo",
    "FileReport",
    "LengthStats",
    "TreeInfo",
    "classify",
    "compression_name",
    "inspect_file",
    "print_report",
]

QUANTILES = (0.5, 0.9, 0.99)

# ROOT's fCompress = 100 * algorithm + level. Algorithm 0 ("use the global
# default") means zlib; 3 is ROOT's old zlib-like "CS" algorithm.
_ALGORITHMS = {0: "ZLIB", 1: "ZLIB", 2: "LZMA", 3: "OLD", 4: "LZ4", 5: "ZSTD"}

_NUMERIC = frozenset(
    [
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
    ]
)

# C++ type names in RNTuple field records → numpy names.
_CPP_TYPES = {
    "bool": "bool",
    "char": "int8",
    "std::byte": "uint8",
    "std::int8_t": "int8",
    "std::uint8_t": "uint8",
    "std::int16_t": "int16",
    "std::uint16_t": "uint16",
    "std::int32_t": "int32",
    "std::uint32_t": "uint32",
    "std::int64_t": "int64",
    "std::uint64_t": "uint64",
    "float": "float32",
    "double": "float64",
    "Double32_t": "float64",
    "std::string": "string",
}
_VECTOR = re.compile(r"^(?:std::vector|ROOT::VecOps::RVec|ROOT::RVec)<\s*(.+?)\s*>$")
_ARRAY = re.compile(r"^std::array<\s*(.+?)\s*,\s*(\d+)\s*>$")
_CARDINALITY = re.compile(r"^ROOT::(?:Experimental::)?RNTupleCardinality<.+>$")
_HIDDEN_FIELD = re.compile(r"^_collection\d+$")

# RNTuple field roles and flags (uproot.const.RNTupleFieldRole / RNTupleFieldFlags).
_ROLE_COLLECTION = 1
_FLAG_PROJECTED = 2


# --------------------------------------------------------------------- report


@dataclass(frozen=True)
class LengthStats:
    """Per-event lengths of a jagged branch over the first ``entries`` events."""

    entries: int
    min: int
    mean: float
    max: int
    q50: int
    q90: int
    q99: int

    @classmethod
    def from_lengths(cls, lengths: np.ndarray[Any, Any]) -> LengthStats | None:
        """Statistics of an array of per-event lengths (``None`` when empty)."""
        if len(lengths) == 0:
            return None
        values = np.asarray(lengths, dtype=np.int64)
        q50, q90, q99 = np.quantile(values, QUANTILES, method="inverted_cdf")
        return cls(
            entries=len(values),
            min=int(values.min()),
            mean=float(values.mean()),
            max=int(values.max()),
            q50=int(q50),
            q90=int(q90),
            q99=int(q99),
        )


@dataclass(frozen=True)
class BranchInfo:
    """One branch (TTree) or top-level field (RNTuple)."""

    name: str
    type: str
    typename: str
    kind: str
    counter: str | None = None
    compressed_bytes: int | None = None
    uncompressed_bytes: int | None = None
    lengths: LengthStats | None = None


@dataclass(frozen=True)
class TreeInfo:
    """One TTree or RNTuple of the file."""

    name: str
    classname: str
    entries: int


@dataclass(frozen=True)
class FileReport:
    """Everything :func:`inspect_file` found; ``to_dict`` gives a JSON view.

    ``size`` is the file size in bytes; ``compression`` the setting the data
    of the shown tree is compressed with (the most common one among its
    branches, or among its RNTuple pages), ``file_compression`` the file's own
    default (``fCompress``), both as ``"ZLIB(1)"``, ``"LZ4(4)"``, ``"none"``.
    ``trees`` lists every TTree/RNTuple; ``tree`` (a ``classname``, with
    ``entries``) is the one whose ``branches`` are shown: all of its
    ``total_branches`` or those chosen by the ``selection`` patterns.
    ``stats_entries`` is how many entries the length statistics used.
    """

    url: str
    size: int | None
    compression: str | None
    file_compression: str | None
    trees: list[TreeInfo]
    tree: str
    classname: str
    entries: int
    total_branches: int
    branches: list[BranchInfo] = field(default_factory=list)
    selection: list[str] | None = None
    stats_entries: int = 0

    def branch(self, name: str) -> BranchInfo:
        """The reported branch called ``name``."""
        for info in self.branches:
            if info.name == name:
                return info
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary (plain str / int / float / None / list / dict)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileReport:
        """The inverse of :meth:`to_dict`."""
        values = dict(data)
        values["trees"] = [TreeInfo(**tree) for tree in data["trees"]]
        values["branches"] = [
            BranchInfo(
                **{
                    **branch,
                    "lengths": LengthStats(**branch["lengths"]) if branch["lengths"] else None,
                }
            )
            for branch in data["branches"]
        ]
        return cls(**values)


# ------------------------------------------------------------------- helpers


def compression_name(code: int | None) -> str | None:
    """ROOT's ``fCompress`` code as ``"ZLIB(1)"``, ``"LZ4(4)"``, ... or ``"none"``."""
    if code is None:
        return None
    algorithm, level = divmod(int(code), 100)
    if level == 0:
        return "none"
    return f"{_ALGORITHMS.get(algorithm, f'algorithm{algorithm}')}({level})"


def _shrunk(infos: Iterable[BranchInfo]) -> bool:
    """Whether the branches' baskets take less space on disk than in memory."""
    pairs = [(b.compressed_bytes, b.uncompressed_bytes) for b in infos]
    compressed = sum(c for c, u in pairs if c and u)
    uncompressed = sum(u for c, u in pairs if c and u)
    return 0 < compressed < uncompressed


def _dominant(codes: Iterable[int]) -> str | None:
    counts = Counter(codes)
    if not counts:
        return None
    return compression_name(counts.most_common(1)[0][0])


def classify(type_string: str) -> str:
    """``flat`` / ``jagged`` / ``other`` / ``unsupported`` for an awkward type string."""
    if type_string == "unsupported":
        return "unsupported"
    parts = [part.strip() for part in type_string.split(" * ")]
    if parts[-1] not in _NUMERIC:
        return "other"
    dims = parts[:-1]
    if all(dim.isdigit() for dim in dims):
        return "flat"
    if dims[0] == "var" and all(dim.isdigit() for dim in dims[1:]):
        return "jagged"
    return "other"


def _dtype_string(dtype: np.dtype[Any]) -> str:
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return " * ".join([*(str(n) for n in shape), base.newbyteorder("=").name])
    if dtype.names:
        return str(dtype)
    return dtype.newbyteorder("=").name


def _interpretation_type(interpretation: Any, branch: Any) -> str:
    """The awkward type string of one event of a TTree branch."""
    if isinstance(interpretation, uproot.interpretation.identify.UnknownInterpretation):
        return "unsupported"
    if isinstance(interpretation, uproot.AsDtype):
        return _dtype_string(interpretation.to_dtype)
    if isinstance(interpretation, uproot.AsJagged):
        return f"var * {_interpretation_type(interpretation.content, branch)}"
    if isinstance(interpretation, uproot.AsStrings):
        return "string"
    if isinstance(interpretation, uproot.AsGrouped):
        return "group"
    return str(interpretation.awkward_form(branch.file).type)


def _human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _entry_stop(stats_entries: int, entries: int) -> int:
    return entries if stats_entries < 0 else min(stats_entries, entries)


def _file_size(directory: Any) -> int | None:
    try:
        size = directory.file.source.num_bytes
    except (OSError, AttributeError, TypeError):
        size = None
    if size is None:
        size = getattr(directory.file, "fEND", None)
    return int(size) if size is not None else None


# ---------------------------------------------------------------------- TTree


def _ttree_branches(tree: Any) -> list[tuple[str, Any]]:
    return list(tree.iteritems(recursive=True, full_paths=True))


def _ttree_info(name: str, branch: Any) -> BranchInfo:
    try:
        interpretation = branch.interpretation
        type_string = _interpretation_type(interpretation, branch)
        typename = str(branch.typename)
    except Exception as exc:  # noqa: BLE001 - uproot fails on odd branches in many ways
        log.debug("cannot interpret branch %s: %s", name, describe_exception(exc))
        type_string, typename = "unsupported", ""
    if type_string == "unsupported" or typename in {"", "unknown"}:
        # The stored class (TBranchElement) or the branch's own class (TBranch).
        stored = branch.member("fClassName") if branch.has_member("fClassName") else ""
        typename = str(stored or branch.classname)
    kind = "other" if type_string == "group" else classify(type_string)
    counter = None
    if kind == "jagged":
        count_branch = branch.count_branch
        counter = None if count_branch is None else str(count_branch.name)
    compressed, uncompressed = _ttree_bytes(branch)
    return BranchInfo(
        name=name,
        type=type_string,
        typename=typename,
        kind=kind,
        counter=counter,
        compressed_bytes=compressed,
        uncompressed_bytes=uncompressed,
    )


def _ttree_bytes(branch: Any) -> tuple[int | None, int]:
    """Compressed and uncompressed bytes of a branch's baskets (with their key headers).

    Baskets that were never flushed live inside the TTree's own metadata
    ("embedded" baskets, common in small files): they count towards the
    uncompressed size, but their compressed size cannot be told apart from the
    TTree's, so the compressed size is then unknown (``None``).
    """
    compressed: int | None = int(branch.compressed_bytes)
    uncompressed = int(branch.uncompressed_bytes)
    for basket in branch.embedded_baskets or ():
        used = int(basket.member("fLast"))
        if used > int(basket.member("fKeylen")):
            uncompressed += used
            compressed = None
    return compressed, uncompressed


def _ttree_lengths(
    tree: Any, infos: list[BranchInfo], stop: int, path: str
) -> dict[str, np.ndarray[Any, Any]]:
    """Per-event lengths for every jagged branch, reading each counter once."""
    lengths: dict[str, np.ndarray[Any, Any]] = {}
    jagged = [info for info in infos if info.kind == "jagged"]
    counters = list(dict.fromkeys(info.counter for info in jagged if info.counter is not None))
    counters = [name for name in counters if name in tree]
    if counters:
        try:
            arrays = tree.arrays(counters, entry_stop=stop, library="np")
        except Exception as exc:
            raise DataError(
                f"cannot read counter branches {', '.join(counters)} of {path}: "
                f"{describe_exception(exc)}",
                path=path,
            ) from exc
        by_counter = {name: np.asarray(arrays[name]) for name in counters}
    else:
        by_counter = {}
    for info in jagged:
        if info.counter in by_counter:
            lengths[info.name] = by_counter[info.counter]
            continue
        try:  # no counter branch (std::vector<...>): read the branch itself
            array = tree[info.name].array(entry_stop=stop)
            lengths[info.name] = np.asarray(ak.num(array, axis=1))
        except Exception as exc:  # noqa: BLE001 - report the branch without statistics
            log.warning("no length statistics for %s: %s", info.name, describe_exception(exc))
    return lengths


def _inspect_ttree(
    tree: Any, branches: str | list[str] | None, stats_entries: int, path: str
) -> tuple[list[BranchInfo], int, list[str] | None, int]:
    items = _ttree_branches(tree)
    names = [name for name, _ in items]
    chosen = names if branches is None else select_branches(names, branches, where=path)
    lookup = dict(items)
    infos = [_ttree_info(name, lookup[name]) for name in chosen]
    stop = _entry_stop(stats_entries, int(tree.num_entries))
    if stop > 0:
        lengths = _ttree_lengths(tree, infos, stop, path)
        infos = [_with_lengths(info, lengths.get(info.name)) for info in infos]
    return infos, len(names), None if branches is None else parse_patterns(branches), stop


def _with_lengths(info: BranchInfo, lengths: np.ndarray[Any, Any] | None) -> BranchInfo:
    if lengths is None:
        return info
    return replace(info, lengths=LengthStats.from_lengths(lengths))


# -------------------------------------------------------------------- RNTuple


def _cpp_type(typename: str) -> str | None:
    """The awkward type string for a C++ RNTuple type name, when it is a simple one."""
    typename = typename.strip()
    if typename in _CPP_TYPES:
        return _CPP_TYPES[typename]
    if _CARDINALITY.match(typename):
        return "int64"  # uproot reads cardinalities as int64
    vector = _VECTOR.match(typename)
    if vector:
        inner = _cpp_type(vector.group(1))
        return None if inner is None else f"var * {inner}"
    array = _ARRAY.match(typename)
    if array:
        inner = _cpp_type(array.group(1))
        return None if inner is None else f"{array.group(2)} * {inner}"
    return None


@dataclass
class _RNTupleLayout:
    """Field tree, columns and page sizes of an RNTuple, indexed once."""

    records: list[Any]
    children: dict[int, list[int]]
    physical: dict[int, list[int]]  # field id → physical column ids it owns
    alias: dict[int, list[int]]  # field id → physical column ids it aliases
    compressed: dict[int, int]  # physical column id → bytes on disk
    uncompressed: dict[int, int]  # physical column id → page bytes before compression
    codes: list[int]
    offsets: frozenset[int] = frozenset()  # physical columns owned by collection fields

    @classmethod
    def of(cls, ntuple: Any) -> _RNTupleLayout:
        records = list(ntuple.field_records)
        children: dict[int, list[int]] = {}
        for index, record in enumerate(records):
            if record.parent_field_id != index:
                children.setdefault(record.parent_field_id, []).append(index)
        physical: dict[int, list[int]] = {}
        nbits: dict[int, int] = {}
        for index, column in enumerate(ntuple.column_records):
            physical.setdefault(column.field_id, []).append(index)
            nbits[index] = int(column.nbits)
        alias: dict[int, list[int]] = {}
        for column in ntuple.alias_column_records:
            alias.setdefault(column.field_id, []).append(int(column.physical_id))
        compressed: dict[int, int] = dict.fromkeys(nbits, 0)
        elements: dict[int, int] = dict.fromkeys(nbits, 0)
        codes: list[int] = []
        for cluster in ntuple.page_link_list:
            for index, pages in enumerate(cluster):
                if getattr(pages, "suppressed", False) or not pages.pages:
                    continue
                codes.append(int(pages.compression_settings))
                for page in pages.pages:
                    compressed[index] = compressed.get(index, 0) + int(page.locator.num_bytes)
                    elements[index] = elements.get(index, 0) + abs(int(page.num_elements))
        uncompressed = {
            index: (elements.get(index, 0) * bits + 7) // 8 for index, bits in nbits.items()
        }
        offsets = frozenset(
            column
            for owner, owned in physical.items()
            if int(records[owner].struct_role) == _ROLE_COLLECTION
            for column in owned
        )
        return cls(records, children, physical, alias, compressed, uncompressed, codes, offsets)

    def subtree(self, index: int) -> list[int]:
        found = [index]
        for child in self.children.get(index, []):
            found.extend(self.subtree(child))
        return found

    def columns(self, index: int, *, cardinality: bool) -> list[int]:
        """Physical columns whose bytes a top-level field accounts for."""
        record = self.records[index]
        projected = bool(int(record.flags) & _FLAG_PROJECTED)
        columns: list[int] = []
        for member in self.subtree(index):
            columns.extend(self.physical.get(member, []))
            columns.extend(self.alias.get(member, []))
        if projected and not cardinality:
            # The collection's offsets are shared by all its projections and
            # accounted for by the cardinality field (nJet), like a TTree counter.
            columns = [column for column in columns if column not in self.offsets]
        return list(dict.fromkeys(columns))


def _rntuple_type(ntuple: Any, name: str, typename: str) -> str:
    simple = _cpp_type(typename)
    if simple is not None:
        return simple
    try:
        form = ntuple[name].to_akform()[0]
        return str(form.contents[0].type)
    except Exception as exc:  # noqa: BLE001 - uproot fails on odd fields in many ways
        log.debug("cannot interpret field %s: %s", name, describe_exception(exc))
        return "unsupported"


def _inspect_rntuple(
    ntuple: Any, branches: str | list[str] | None, stats_entries: int, path: str
) -> tuple[list[BranchInfo], int, list[str] | None, int, str | None]:
    layout = _RNTupleLayout.of(ntuple)
    records = layout.records
    top = [
        index
        for index, record in enumerate(records)
        if record.parent_field_id == index
        and not (
            _HIDDEN_FIELD.match(record.field_name) and int(record.struct_role) == _ROLE_COLLECTION
        )
    ]
    # Cardinality fields (nJet) by the collection they count.
    cardinality_of: dict[int, str] = {}
    for index in top:
        record = records[index]
        if _CARDINALITY.match(record.type_name) and record.source_field_id is not None:
            cardinality_of.setdefault(int(record.source_field_id), record.field_name)
    by_name = {records[index].field_name: index for index in top}
    names = list(by_name)
    chosen = names if branches is None else select_branches(names, branches, where=path)

    infos: list[BranchInfo] = []
    for name in chosen:
        index = by_name[name]
        record = records[index]
        typename = str(record.type_name)
        type_string = _rntuple_type(ntuple, name, typename)
        kind = classify(type_string)
        is_cardinality = bool(_CARDINALITY.match(typename))
        counter = None
        if kind == "jagged" and record.source_field_id is not None:
            source = int(record.source_field_id)
            counter = cardinality_of.get(source, records[source].field_name)
        columns = layout.columns(index, cardinality=is_cardinality)
        infos.append(
            BranchInfo(
                name=name,
                type=type_string,
                typename=typename or type_string,
                kind=kind,
                counter=counter,
                compressed_bytes=sum(layout.compressed.get(c, 0) for c in columns),
                uncompressed_bytes=sum(layout.uncompressed.get(c, 0) for c in columns),
            )
        )

    stop = _entry_stop(stats_entries, int(ntuple.num_entries))
    if stop > 0:
        lengths: dict[str, np.ndarray[Any, Any]] = {}
        jagged = [info for info in infos if info.kind == "jagged"]
        counters = list(
            dict.fromkeys(
                info.counter for info in jagged if info.counter in by_name and info.counter
            )
        )
        counters = [c for c in counters if _CARDINALITY.match(records[by_name[c]].type_name)]
        # One field at a time: RNTuple.arrays builds the form of every field,
        # which takes seconds on a 1000-field NanoAOD RNTuple.
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for counter in counters:
            try:
                arrays[counter] = np.asarray(ntuple[counter].array(entry_stop=stop, library="np"))
            except Exception as exc:
                raise DataError(
                    f"cannot read cardinality field {counter!r} of {path}: "
                    f"{describe_exception(exc)}",
                    path=path,
                ) from exc
        for info in jagged:
            if info.counter in arrays:
                lengths[info.name] = arrays[info.counter]
                continue
            try:  # a plain std::vector field: its lengths come with its data
                array = ntuple[info.name].array(entry_stop=stop)
                lengths[info.name] = np.asarray(ak.num(array, axis=1))
            except Exception as exc:  # noqa: BLE001 - report the field without statistics
                log.warning("no length statistics for %s: %s", info.name, describe_exception(exc))
        infos = [_with_lengths(info, lengths.get(info.name)) for info in infos]
    return (
        infos,
        len(names),
        None if branches is None else parse_patterns(branches),
        stop,
        _dominant(layout.codes),
    )


# ------------------------------------------------------------------ inspect


class _CachedDirectory:
    """A ROOT directory that reads each tree's metadata only once."""

    def __init__(self, directory: Any) -> None:
        self.directory = directory
        self.objects: dict[str, Any] = {}

    def keys(self, **options: Any) -> Any:
        return self.directory.keys(**options)

    def classnames(self) -> dict[str, str]:
        return {key.rsplit(";", 1)[0]: value for key, value in self.directory.classnames().items()}

    def __getitem__(self, name: str) -> Any:
        if name not in self.objects:
            self.objects[name] = self.directory[name]
        return self.objects[name]


def _tree_infos(directory: _CachedDirectory, names: Sequence[str], path: str) -> list[TreeInfo]:
    classnames = directory.classnames()
    infos = []
    for name in names:
        classname = "RNTuple" if "RNTuple" in classnames.get(name, "") else "TTree"
        try:
            entries = int(directory[name].num_entries)
        except Exception as exc:
            raise DataError(
                f"cannot read {classname} {name!r} of {path}: {describe_exception(exc)}",
                path=path,
            ) from exc
        infos.append(TreeInfo(name=name, classname=classname, entries=entries))
    return infos


def inspect_file(
    url: str,
    tree: str | None = None,
    *,
    branches: str | list[str] | None = None,
    stats_entries: int = 100_000,
) -> FileReport:
    """Describe the ROOT file at ``url`` (local path or URL) and one of its trees.

    ``tree=None`` picks the only tree, or ``Events``. ``branches`` restricts
    the branch table (comma list or list of names, wildcards, ``re:regex``).
    Length statistics of jagged branches use the first ``stats_entries``
    entries (``-1``: all, ``0``: none).
    """
    if stats_entries < -1:
        raise ConfigError(f"stats_entries must be -1 (all), 0 or positive, got {stats_entries}")
    if isinstance(branches, str) and not branches.strip():
        branches = None
    with open_root(url) as opened:
        directory = _CachedDirectory(opened)
        try:
            chosen = get_tree(directory, tree, path=url)
            trees = _tree_infos(directory, tree_names(directory), url)
            file_code = getattr(opened.file, "fCompress", None)
            if is_rntuple(chosen):
                infos, total, selection, stop, compression = _inspect_rntuple(
                    chosen, branches, stats_entries, url
                )
                classname = "RNTuple"
            else:
                infos, total, selection, stop = _inspect_ttree(chosen, branches, stats_entries, url)
                codes = [int(branch.member("fCompress")) for _, branch in _ttree_branches(chosen)]
                compression = _dominant(codes)
                if compression == "none" and _shrunk(infos):
                    # uproot writes fCompress = 0 on branches whose baskets it
                    # compresses with the file's setting: trust the bytes.
                    compression = None
                classname = "TTree"
            size = _file_size(opened)
        except (DataError, ConfigError):
            raise
        except Exception as exc:
            raise DataError(f"cannot inspect {url}: {describe_exception(exc)}", path=url) from exc
    name = next(key for key, value in directory.objects.items() if value is chosen)
    entries = next((info.entries for info in trees if info.name == name), None)
    return FileReport(
        url=url,
        size=size,
        compression=compression if compression is not None else compression_name(file_code),
        file_compression=compression_name(file_code),
        trees=trees,
        tree=name,
        classname=classname,
        entries=int(chosen.num_entries) if entries is None else entries,
        total_branches=total,
        branches=infos,
        selection=selection,
        stats_entries=stop,
    )


# -------------------------------------------------------------------- print


def _format_lengths(stats: LengthStats | None) -> tuple[str, str]:
    if stats is None:
        return "", ""
    return (
        f"{stats.min} / {stats.mean:.2f} / {stats.max}",
        f"{stats.q50} / {stats.q90} / {stats.q99}",
    )


def print_report(report: FileReport, console: Console) -> None:
    """Show ``report``: a header, the jagged collections, then one line per branch.

    On a terminal, lines are fitted to its width; into a file or a pipe they
    are printed whole (nothing wrapped or cut), so ``grep`` sees every row.
    """
    if not console.is_terminal:
        # rich never prints wider than the console (80 columns into a pipe).
        console = Console(
            file=console.file,
            width=_UNLIMITED,
            color_system=console.color_system,  # type: ignore[arg-type]
            no_color=console.no_color,
            highlight=False,
        )
    width = console.width
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold", no_wrap=True)
    header.add_column()
    header.add_row("file", Text(report.url))
    header.add_row("size", _human_bytes(report.size))
    compression = report.compression or "-"
    if report.file_compression and report.file_compression != report.compression:
        compression += f" (file default {report.file_compression})"
    header.add_row("compression", compression)
    for number, tree in enumerate(report.trees):
        line = Text(tree.name)
        line.append(f"  {tree.classname}", style="dim")
        line.append(f"  {tree.entries:,} entries")
        if tree.name == report.tree:
            line.append("  ◀ shown", style="bold")
        header.add_row("trees" if number == 0 else "", line)
    header.add_row("branches", _branch_summary(report))
    if report.stats_entries:
        header.add_row(
            "lengths", f"of jagged branches, from the first {report.stats_entries:,} entries"
        )
    console.print(header)

    if not report.branches:
        return
    collections = _collection_table(report)
    if collections is not None:
        console.print(collections)
    console.print(Text(f"{report.tree} ({report.classname}) branches", style="italic"))
    table = _branch_table(report, width)
    console.print(table, no_wrap=True, overflow="ellipsis")


_UNLIMITED = 10_000
_KIND_STYLE = {"jagged": "cyan", "other": "yellow", "unsupported": "red"}


def _collection_table(report: FileReport) -> Table | None:
    """One row per counter (collection) of the jagged branches: the short overview."""
    groups: dict[str, list[BranchInfo]] = {}
    for info in report.branches:
        if info.kind == "jagged":
            groups.setdefault(info.counter or info.name, []).append(info)
    if not groups:
        return None
    table = Table(
        title="jagged collections",
        title_justify="left",
        title_style="italic",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("counter", no_wrap=True, overflow="ellipsis")
    for name in ("branches", "compressed", "uncompressed", *_LENGTH_HEADERS):
        table.add_column(name, justify="right", no_wrap=True)
    for counter, members in groups.items():
        span, quantiles = _format_lengths(members[0].lengths)
        compressed = [m.compressed_bytes for m in members]
        table.add_row(
            Text(counter),
            str(len(members)),
            "-" if None in compressed else _human_bytes(sum(c or 0 for c in compressed)),
            _human_bytes(sum(m.uncompressed_bytes or 0 for m in members)),
            span,
            quantiles,
        )
    return table


_LENGTH_HEADERS = ("len min/mean/max", "len q50/q90/q99")


def _branch_table(report: FileReport, width: int) -> Text:
    """The per-branch table, laid out by hand: rich's Table takes ~1 s for 1500 rows.

    The name column is as wide as most names; a longer name gets a line of
    its own, with its values on the next line.
    """
    headers = ["branch", "type", "kind", "counter", "compressed", "uncompressed"]
    headers += _LENGTH_HEADERS
    right = {4, 5, 6, 7}
    rows = []
    for info in report.branches:
        span, quantiles = _format_lengths(info.lengths)
        type_text = info.type if info.type != "unsupported" else f"unsupported ({info.typename})"
        rows.append(
            [
                info.name,
                type_text,
                info.kind,
                info.counter or "",
                _human_bytes(info.compressed_bytes),
                _human_bytes(info.uncompressed_bytes),
                span,
                quantiles,
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    names = sorted(len(row[0]) for row in rows)
    widths[0] = max(len(headers[0]), min(widths[0], max(24, names[int(0.9 * (len(names) - 1))])))
    # Leave room for the values on a narrow terminal: names wrap first.
    others = sum(widths[1:]) + 2 * (len(widths) - 1)
    widths[0] = max(min(widths[0], width - others), min(widths[0], 16))
    # Too wide for the console: shorten long types (what still does not fit
    # is cut at the right edge of a terminal).
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    if excess > 0:
        widths[1] -= min(excess, max(0, widths[1] - len("var * float32")))

    def cell(value: str, column: int) -> str:
        size = widths[column]
        if column > 0 and len(value) > size:
            value = value[: size - 1] + "…"
        return value.rjust(size) if column in right else value.ljust(size)

    text = Text()
    text.append("  ".join(cell(h, i) for i, h in enumerate(headers)).rstrip(), style="bold")
    text.append("\n" + "─" * min(width, sum(widths) + 2 * (len(widths) - 1)) + "\n")
    for row in rows:
        if len(row[0]) > widths[0]:
            text.append(row[0] + "\n" + " " * widths[0] + "  ")
        else:
            text.append(cell(row[0], 0) + "  ")
        text.append(cell(row[1], 1) + "  ")
        text.append(cell(row[2], 2), style=_KIND_STYLE.get(row[2], ""))
        text.append("  " + "  ".join(cell(row[i], i) for i in range(3, len(row))).rstrip())
        text.append("\n")
    text.rstrip()
    return text


def _branch_summary(report: FileReport) -> str:
    branches = report.branches
    kinds = Counter(b.kind for b in branches)
    shown = (
        f"{len(branches)} of {report.total_branches} shown"
        if report.selection is not None
        else f"{report.total_branches}"
    )
    text = f"{shown} ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))})"
    if not branches:
        return text
    uncompressed = sum(b.uncompressed_bytes or 0 for b in branches)
    known = [b.compressed_bytes for b in branches if b.compressed_bytes is not None]
    text += f"; {_human_bytes(uncompressed)} uncompressed"
    if known:
        compressed = sum(known)
        text += f", {_human_bytes(compressed)} compressed"
        if compressed and len(known) == len(branches):
            text += f" (ratio {uncompressed / compressed:.2f})"
    unknown = len(branches) - len(known)
    if unknown:
        text += (
            f"; {unknown} branches keep baskets inside the {report.classname} metadata"
            " (never flushed), their compressed size is unknown"
        )
    return text
