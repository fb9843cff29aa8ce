"""Opening ROOT files, local or remote, with retries, backoff and a timeout.

Remote URLs (``root://``, ``http(s)://``, ``s3://``, any fsspec protocol) are
opened through uproot, which hands ``root://`` to fsspec-xrootd. Transient
failures (network errors, timeouts, a server that went away) are retried with
exponential backoff; anything else, and the last failure, becomes a
:class:`~mlaas4hep.errors.DataError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import uproot

from mlaas4hep.data.pruned_tree import ChooseBranches, read_pruned_tree
from mlaas4hep.data.rntuple_fields import index_fields
from mlaas4hep.errors import ConfigError, DataError

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_remote(url: str) -> bool:
    """Whether ``url`` names a file that is read over the network."""
    return "://" in url and not url.startswith("file://")


@dataclass(frozen=True)
class RetryPolicy:
    """How remote reads are retried.

    ``attempts`` counts the first try; the wait before try ``k`` (k ≥ 1) is
    ``backoff * 2**(k-1)`` seconds, capped at ``max_backoff``. ``timeout`` is
    the per-request timeout in seconds passed to the remote source.
    """

    attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    timeout: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))


NO_RETRY = RetryPolicy(attempts=1)


def describe_exception(exc: BaseException) -> str:
    """A one-line, human description of an exception (type and message)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _is_transient(exc: BaseException) -> bool:
    """Network-ish failures worth retrying; missing files and bad data are not."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        text = str(exc).lower()
        # XRootD reports a missing file as an OSError with "no such file".
        return not ("no such file" in text or "not found" in text or "[3011]" in text)
    return False


def with_retries(
    action: Callable[[], T], *, what: str, path: str, policy: RetryPolicy = NO_RETRY
) -> T:
    """Run ``action``; retry transient failures per ``policy``.

    ``what`` describes the action for the error message ("open", "read entries
    0-1000 of"). The raised :class:`DataError` names ``path`` and the last
    reason.
    """
    attempt = 0
    while True:
        try:
            return action()
        except DataError:
            raise
        except Exception as exc:
            attempt += 1
            if not _is_transient(exc) or attempt >= policy.attempts:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise DataError(
                    f"cannot {what} {path}{tries}: {describe_exception(exc)}", path=path
                ) from exc
            delay = policy.delay(attempt)
            log.warning(
                "%s %s failed (%s); retry %d/%d in %.1fs",
                what,
                path,
                describe_exception(exc),
                attempt,
                policy.attempts - 1,
                delay,
            )
            time.sleep(delay)


def uproot_options(url: str, policy: RetryPolicy) -> dict[str, Any]:
    """Keyword arguments for :func:`uproot.open` that set ``url``'s request timeout.

    Each fsspec file system spells its timeout differently; protocols not
    listed here keep their own defaults.
    """
    if url.startswith(("root://", "xroot://")):
        # The XRootD bindings accept whole seconds only.
        return {"timeout": max(1, round(policy.timeout))}
    if url.startswith(("http://", "https://")):
        try:
            import aiohttp  # noqa: PLC0415 - only needed, and only installed, for http(s)
        except ImportError:
            raise ConfigError(
                f"reading {url} needs aiohttp: pip install 'mlaas4hep[http]'"
            ) from None
        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=policy.timeout)}}
    if url.startswith(("s3://", "s3a://")):
        timeouts = {"connect_timeout": policy.timeout, "read_timeout": policy.timeout}
        return {"config_kwargs": timeouts}
    return {}


def _open_once(url: str, options: dict[str, Any]) -> Any:
    if not is_remote(url):
        local = Path(url.removeprefix("file://"))
        if not local.exists():
            raise DataError(f"file not found: {url}", path=url)
        if local.is_dir():
            raise DataError(f"expected a ROOT file, got a directory: {url}", path=url)
    return uproot.open(url, **options)


def open_root(url: str, *, policy: RetryPolicy | None = None) -> Any:
    """Open a ROOT file (local path or URL) and return uproot's directory object.

    Local files that do not exist fail at once with a clear message; remote
    opens are retried per ``policy`` (default: 3 attempts for remote URLs;
    ``NO_RETRY`` makes failures raise the underlying exception unchanged, for
    callers that retry a larger action themselves).
    """
    if policy is None:
        policy = RetryPolicy() if is_remote(url) else NO_RETRY
    options = uproot_options(url, policy)
    if policy is NO_RETRY and is_remote(url):
        return _open_once(url, options)
    return with_retries(lambda: _open_once(url, options), what="open", path=url, policy=policy)


def release(file: Any) -> None:
    """Close an uproot file and drop its cached remote handles.

    fsspec-xrootd keeps file handles open in a cache: after a server went away
    a retry would get the same dead handle back, so it is evicted here and the
    next open reconnects.
    """
    source = getattr(file, "source", None)
    fs = getattr(source, "_fs", None)
    path = getattr(source, "_file_path", None)
    invalidate = getattr(fs, "invalidate_cache", None)
    if path is not None and invalidate is not None:
        try:
            invalidate(path)
        except Exception as exc:  # noqa: BLE001 - closing a dead handle may fail; it is dropped anyway
            log.debug("dropping the handle of %s: %s", path, describe_exception(exc))
    try:
        file.close()
    except Exception as exc:  # noqa: BLE001 - as above
        log.debug("closing %s: %s", path, describe_exception(exc))


def tree_names(directory: Any) -> list[str]:
    """Names (without cycle) of the TTrees and RNTuples in an open ROOT file."""
    names = directory.keys(
        filter_classname=["TTree", "ROOT::RNTuple", "ROOT::Experimental::RNTuple"], cycle=False
    )
    return list(dict.fromkeys(names))


def get_tree(
    directory: Any, tree: str | None, *, path: str, branches: ChooseBranches | None = None
) -> Any:
    """The tree (TTree or RNTuple) called ``tree`` in ``directory``.

    With ``tree=None`` the file must hold exactly one tree-like object (or one
    called ``Events``, the NanoAOD name, next to bookkeeping trees).

    ``branches`` picks, from a TTree's top-level branch names, the ones whose
    metadata is read (see :mod:`mlaas4hep.data.pruned_tree`; the names of all
    of them stay available through
    :func:`~mlaas4hep.data.pruned_tree.listed_branch_names`). Without it,
    or where the tree cannot be read that way, every branch is.
    """
    available = tree_names(directory)
    if tree is None:
        if len(available) == 1:
            tree = available[0]
        elif "Events" in available:
            tree = "Events"
        elif not available:
            raise DataError(f"{path} holds no TTree or RNTuple", path=path)
        else:
            raise DataError(
                f"{path} holds several trees ({', '.join(available)}); choose one with --tree",
                path=path,
            )
    if tree not in available:
        listing = ", ".join(available) if available else "none"
        raise DataError(f"tree {tree!r} not found in {path} (trees: {listing})", path=path)
    try:
        return read_tree(directory, tree, branches)
    except Exception as exc:
        raise DataError(
            f"cannot read tree {tree!r} of {path}: {describe_exception(exc)}", path=path
        ) from exc


def read_tree(directory: Any, name: str, branches: ChooseBranches | None = None) -> Any:
    """Tree ``name`` of ``directory``, read the quick way.

    Its metadata is read with the garbage collector paused; a TTree is pruned
    to the ``branches`` chosen where it can be (a layout
    :func:`~mlaas4hep.data.pruned_tree.read_pruned_tree` does not step over is
    read whole), and an RNTuple gets its field tree indexed.
    """
    with collector_paused():
        if branches is not None:
            try:
                return read_pruned_tree(directory, name, branches)
            except Exception as exc:  # noqa: BLE001 - whatever stops the pruned read, uproot reads it all
                log.debug("reading every branch of %s: %s", name, exc)
        found = directory[name]
    if is_rntuple(found):
        index_fields(found)
    return found


@dataclass
class _CollectorPauses:
    """The :func:`collector_paused` blocks running now, in any thread."""

    lock: threading.Lock
    running: int = 0
    collector_was_on: bool = False


_PAUSES = _CollectorPauses(threading.Lock())


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the duration of the block.

    Reading a TTree's metadata builds tens of thousands of small Python objects
    (uproot models of every branch and leaf), which sets off many collections
    that find nothing to free; each one walks the whole heap, so in a process
    holding torch or a model they are a third or more of the time to open a
    file. Blocks may overlap across threads: the collector comes back when the
    last one ends, and only if it was on when the first one began.
    """
    with _PAUSES.lock:
        if _PAUSES.running == 0:
            _PAUSES.collector_was_on = gc.isenabled()
            gc.disable()
        _PAUSES.running += 1
    try:
        yield
    finally:
        with _PAUSES.lock:
            _PAUSES.running -= 1
            if _PAUSES.running == 0 and _PAUSES.collector_was_on:
                gc.enable()


def is_rntuple(tree: Any) -> bool:
    """Whether an uproot tree object is an RNTuple (rather than a TTree)."""
    return "RNTuple" in type(tree).__name__
