"""Turning what the user names into a list of :class:`Source` objects.

An input is a local file, a glob, a directory (every ``*.root`` below it), a
file-list file (``files.txt``: one input a line, ``#`` comments and blank
lines skipped), or a URL (``root://``, ``http(s)://``, ``s3://``, any fsspec
protocol). A CMS logical file name (``/store/...``) is prefixed with the
redirector. Labels and weights are given per input, inline or as a
``labels.txt`` paired line by line with ``files.txt``.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mlaas4hep.data.rootfile import is_remote
from mlaas4hep.errors import ConfigError, DataError

LOGICAL_PREFIX = "/store/"
_TREE_SPEC = re.compile(r"^(?P<file>.+\.root):(?P<tree>[^/:]+)$")


@dataclass(frozen=True)
class Source:
    """One ROOT file of a dataset and what travels with its events.

    ``entry_start`` / ``entry_stop`` restrict the file to an entry range
    (``None``: to the end). ``tree`` overrides the dataset's tree name.
    """

    url: str
    label: float | None = None
    weight: float = 1.0
    tree: str | None = None
    entry_start: int = 0
    entry_stop: int | None = None

    @property
    def name(self) -> str:
        """The file name, for short reports."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def split_tree_spec(target: str) -> tuple[str, str | None]:
    """Split ``file.root:tree`` into ``("file.root", "tree")``; URLs keep their ports."""
    found = _TREE_SPEC.match(target)
    if found:
        return found["file"], found["tree"]
    return target, None


def read_list_file(path: Path) -> list[str]:
    """Lines of a list file, stripped, without blank lines and ``#`` comments."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(
            f"cannot read list file {path}: {exc.strerror or exc}", path=str(path)
        ) from exc
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return [line for line in lines if line]


def _is_list_file(item: str) -> bool:
    return item.endswith((".txt", ".list")) and not is_remote(item)


def _parse_number(text: str, what: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} in {where} is not a number") from None


def _expand_one(item: str, redirector: str | None) -> list[str]:
    """Files named by one (non list-file) input."""
    if item.startswith(LOGICAL_PREFIX) and not Path(item).exists():
        if not redirector:
            raise DataError(
                f"{item} looks like a logical file name but no redirector was given "
                "(e.g. --redirector root://cms-xrd-global.cern.ch/)",
                path=item,
            )
        return [redirector.rstrip("/") + "/" + item]
    if is_remote(item):
        return [item]
    path_text = item.removeprefix("file://")
    if glob.has_magic(path_text):
        found = sorted(glob.glob(path_text, recursive=True))  # noqa: PTH207 - absolute patterns
        if not found:
            raise DataError(f"no file matches {item}", path=item)
        return found
    path = Path(path_text)
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*.root"))
        if not found:
            raise DataError(f"no .root file in directory {item}", path=item)
        return found
    if not path.exists():
        raise DataError(f"file not found: {item}", path=item)
    return [str(path)]


def _per_input(
    values: Sequence[float | str] | str | float | None, count: int, what: str
) -> list[float | None]:
    """Labels or weights, one per input: a list file, a list, or one value for all."""
    if values is None:
        return [None] * count
    if isinstance(values, str) and _is_list_file(values):
        where = values
        lines = read_list_file(Path(values))
        if len(lines) != count:
            raise ConfigError(
                f"{where} has {len(lines)} {what}s but there are {count} inputs: "
                "it must pair line by line with the file list"
            )
        return [_parse_number(line, what, where) for line in lines]
    if isinstance(values, str | float | int):
        return [_parse_number(str(values), what, "the options")] * count
    if len(values) != count:
        raise ConfigError(f"{len(values)} {what}s given for {count} inputs")
    return [_parse_number(str(value), what, "the options") for value in values]


def resolve_sources(
    inputs: str | Sequence[str],
    *,
    labels: Sequence[float | str] | str | float | None = None,
    weights: Sequence[float | str] | str | float | None = None,
    redirector: str | None = None,
) -> list[Source]:
    """Expand inputs (files, globs, directories, list files, URLs) into sources.

    ``labels`` and ``weights`` pair with the inputs *as listed* (a list file
    counts as its lines): a ``labels.txt`` path, a list, or one value for all.
    Every file an input expands to inherits its label and weight. An input
    may name its tree as ``file.root:tree``.
    """
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise ConfigError("no input files given")
    flat: list[str] = []
    for item in items:
        flat.extend(read_list_file(Path(item)) if _is_list_file(item) else [item])
    if not flat:
        raise ConfigError(f"the file list {', '.join(items)} names no file")
    label_of = _per_input(labels, len(flat), "label")
    weight_of = _per_input(weights, len(flat), "weight")
    sources: list[Source] = []
    for item, label, weight in zip(flat, label_of, weight_of, strict=True):
        target, tree = split_tree_spec(item)
        base = Source(url="", label=label, weight=1.0 if weight is None else weight, tree=tree)
        sources.extend(replace(base, url=url) for url in _expand_one(target, redirector))
    return sources
