"""Choosing branches: include / exclude patterns and identifier branches.

A pattern is an exact branch name, a shell wildcard (``Jet_*``, ``Muon_p?``) or
a regular expression written ``re:<regex>`` or ``/<regex>/`` (matched against
the whole name). Patterns come as a list or a comma-separated string.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mlaas4hep.errors import ConfigError, DataError

DEFAULT_IDENTIFIERS = ("run", "event", "luminosityBlock")

Patterns = str | Sequence[str] | None


def parse_patterns(value: Patterns) -> list[str]:
    """Normalise a comma-separated string or a list of patterns to a list."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def _is_regex(pattern: str) -> bool:
    return pattern.startswith("re:") or (len(pattern) > 2 and pattern[0] == pattern[-1] == "/")


def _compile(pattern: str) -> re.Pattern[str]:
    body = pattern[3:] if pattern.startswith("re:") else pattern[1:-1]
    try:
        return re.compile(body)
    except re.error as exc:
        raise ConfigError(f"invalid branch regex {pattern!r}: {exc}") from exc


def _is_wildcard(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def matches(pattern: str, names: Iterable[str]) -> list[str]:
    """The names (in their order) that ``pattern`` selects."""
    if _is_regex(pattern):
        regex = _compile(pattern)
        return [name for name in names if regex.fullmatch(name)]
    if _is_wildcard(pattern):
        return [name for name in names if fnmatch.fnmatchcase(name, pattern)]
    return [name for name in names if name == pattern]


def close_matches(name: str, names: Sequence[str], n: int = 5) -> str:
    """A human hint listing the names closest to ``name`` (or an empty string)."""
    plain = name.strip("/").removeprefix("re:").replace("*", "").replace("?", "")
    lowered = {candidate.lower(): candidate for candidate in names}
    found = difflib.get_close_matches(plain.lower(), list(lowered), n=n, cutoff=0.6)
    return f"; close matches: {', '.join(lowered[f] for f in found)}" if found else ""


def select_branches(
    available: Sequence[str],
    include: Patterns = None,
    exclude: Patterns = None,
    *,
    where: str = "",
    hints: Sequence[str] | None = None,
) -> list[str]:
    """Apply include then exclude patterns to ``available``.

    Without include patterns every branch is taken. The result follows the
    order of the include patterns (each pattern's matches in file order),
    without duplicates. A pattern that selects nothing is an error naming it
    and the closest branch names (among ``hints``, default ``available``);
    ``where`` (a file name) goes into the message.
    """
    location = f" in {where}" if where else ""
    chosen: list[str] = []
    include_patterns = parse_patterns(include)
    if include_patterns:
        for pattern in include_patterns:
            found = matches(pattern, available)
            if not found:
                what = "branch" if pattern == pattern.strip("*?[") else "pattern"
                hint = close_matches(pattern, available if hints is None else hints)
                raise DataError(f"unknown {what} {pattern!r}{location}{hint}", path=where or None)
            chosen.extend(found)
        chosen = list(dict.fromkeys(chosen))
    else:
        chosen = list(available)
    for pattern in parse_patterns(exclude):
        dropped = set(matches(pattern, chosen))
        chosen = [name for name in chosen if name not in dropped]
    return chosen


@dataclass(frozen=True)
class BranchSelection:
    """Which branches a dataset reads, as features and as identifiers.

    ``identifiers`` are read alongside the features but never become
    features. ``None`` means the NanoAOD defaults (``run``, ``event``,
    ``luminosityBlock``), each only where the file has it; names given
    explicitly must exist.
    """

    include: Patterns = None
    exclude: Patterns = None
    identifiers: Patterns = None

    def resolve(
        self, available: Sequence[str], *, where: str = "", hints: Sequence[str] | None = None
    ) -> tuple[list[str], list[str]]:
        """Return ``(features, identifiers)`` chosen among ``available``.

        ``hints`` are the names that messages about a missing branch suggest
        from (default ``available``).
        """
        if self.identifiers is None:
            identifiers = [name for name in DEFAULT_IDENTIFIERS if name in available]
        elif parse_patterns(self.identifiers):
            identifiers = select_branches(available, self.identifiers, where=where, hints=hints)
        else:  # an empty list or string: no identifiers at all
            identifiers = []
        features = select_branches(available, self.include, self.exclude, where=where, hints=hints)
        id_set = set(identifiers)
        features = [name for name in features if name not in id_set]
        if not features:
            raise ConfigError(
                f"the branch selection leaves no feature branch{' in ' + where if where else ''}"
            )
        return features, identifiers

    @property
    def narrows(self) -> bool:
        """Whether the selection names its branches (rather than taking them all)."""
        return bool(parse_patterns(self.include))

    def candidates(self, available: Sequence[str]) -> list[str]:
        """The names in ``available`` that :meth:`resolve` may choose: a superset.

        Used to read the metadata of these branches only; exclusions are left
        to :meth:`resolve`, and a pattern that matches nothing here is reported
        there.
        """
        patterns = [*parse_patterns(self.include)]
        if self.identifiers is None:
            patterns.extend(DEFAULT_IDENTIFIERS)
        else:
            patterns.extend(parse_patterns(self.identifiers))
        # a spec lists hundreds of plain names: look those up at once, match the rest
        plain = {p for p in patterns if not (_is_regex(p) or _is_wildcard(p))}
        chosen = [name for name in available if name in plain]
        for pattern in patterns:
            if pattern not in plain:
                chosen.extend(matches(pattern, available))
        return list(dict.fromkeys(chosen))
