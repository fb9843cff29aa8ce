"""Safe unpacking of uploaded archives (model bundles, TFaaS tarballs).

:func:`extract_archive` writes every member itself instead of trusting
``tarfile``/``zipfile`` extraction: only regular files and directories are
accepted, every name is checked before anything is written, and both the
declared and the actually written sizes are counted, so that a lying header or
a decompression bomb stops at ``max_bytes``. On any error the destination is
emptied again.
"""

from __future__ import annotations

import contextlib
import functools
import io
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, Literal, TypeVar

from mlaas4hep.serve.errors import BadRequest, PayloadTooLarge, UnsafeArchive

DEFAULT_MAX_BYTES = 2 * 2**30
"""Default limit on the total uncompressed size of an archive (2 GiB)."""

_T = TypeVar("_T")
TarMode = Literal["r:gz", "r:bz2", "r:xz", "r:"]

_CHUNK = 1 << 20
_MAX_NAME_BYTES = 255
_MAX_PATH_BYTES = 4096

# Operating-system litter in archives made on macOS; ignored when looking for
# the single top-level directory.
_JUNK = frozenset({"__MACOSX", ".DS_Store"})

# What reading a corrupt archive can raise, by library.
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,  # gzip.BadGzipFile, bz2's "Invalid data stream"
)


def extract_archive(
    data: bytes | BinaryIO,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = 10_000,
) -> Path:
    """Unpack a tar (plain, gzip, bzip2 or xz) or zip archive into ``dest``.

    The format is found from the first bytes, not from a file name. ``dest``
    must be an existing, empty directory; it is returned. Files are written
    with mode 0o644 and directories with 0o755.

    Raises :class:`UnsafeArchive` (naming the member and why) for absolute
    names, ``..`` components, links, devices, fifos, duplicate names and
    names that would land outside ``dest``; :class:`PayloadTooLarge` when the
    members add up to more than ``max_bytes`` uncompressed bytes or are more
    than ``max_members``; :class:`BadRequest` for anything that is not one of
    the supported formats or is corrupt. After an error ``dest`` is empty.
    """
    dest = Path(dest)
    if not dest.is_dir():
        raise NotADirectoryError(f"archive destination {dest} is not a directory")
    if any(dest.iterdir()):
        raise ValueError(f"archive destination {dest} is not empty")
    with _seekable(data) as source:
        start = source.tell()
        head = source.read(512)
        source.seek(start)
        writer = _Writer(dest.resolve(), max_bytes, max_members)
        try:
            if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                _extract_zip(source, writer)
            else:
                _extract_tar(source, _tar_mode(head), writer)
        except BaseException:
            _empty(dest)
            raise
    return dest


def single_top_directory(root: Path) -> tuple[str, Path]:
    """The one top-level directory of an unpacked bundle: ``(name, path)``.

    Model bundles (TFaaS tarballs, our model packages) hold a single directory
    named after the model. macOS litter (``__MACOSX``, ``.DS_Store``, ``._*``)
    is ignored. Anything else raises :class:`BadRequest` describing the layout
    expected.
    """
    entries = sorted(
        p for p in Path(root).iterdir() if p.name not in _JUNK and not p.name.startswith("._")
    )
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0].name, entries[0]
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:10]) or "nothing"
    if len(entries) > 10:
        found += f", ... ({len(entries)} entries)"
    raise BadRequest(
        "the archive must hold a single top-level directory named after the model "
        f"(e.g. mymodel/model.onnx, mymodel/params.json); it holds {found}"
    )


class _Writer:
    """Checks member names and types, and writes members under ``dest`` within the limits."""

    def __init__(self, dest: Path, max_bytes: int, max_members: int) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.members = 0
        self.declared = 0
        self.written = 0
        self.kinds: dict[PurePosixPath, str] = {}  # "file", "dir" (explicit) or "parent"

    def count(self, total: int | None = None) -> None:
        """One more member (or ``total`` at once, when the format says it upfront)."""
        self.members = total if total is not None else self.members + 1
        if self.members > self.max_members:
            raise PayloadTooLarge(f"the archive has more than {self.max_members} members")

    def target(self, name: str, kind: str, declared: int = 0) -> Path | None:
        """The path to write member ``name`` of ``kind`` ("file"/"dir") to, after all checks.

        None for the archive's root itself (``./``), which is skipped.
        """
        rel = _relative(name)
        if rel is None:
            return None
        self.declared += declared
        if self.declared > self.max_bytes:
            raise PayloadTooLarge(
                f"the archive unpacks to more than {self.max_bytes} bytes (at member {name!r})"
            )
        previous = self.kinds.get(rel)
        if previous in ("file", "dir"):
            raise UnsafeArchive(f"archive member {name!r} is a duplicate of an earlier member")
        if previous == "parent" and kind == "file":
            raise UnsafeArchive(
                f"archive member {name!r} is a file, but earlier members are inside it"
            )
        for parent in rel.parents:
            if self.kinds.get(parent) == "file":
                raise UnsafeArchive(f"archive member {name!r} is inside the file {str(parent)!r}")
            self.kinds.setdefault(parent, "parent")
        self.kinds[rel] = kind
        path = self.dest.joinpath(*rel.parts)
        # Defence in depth: nothing in dest may redirect a write (dest starts empty
        # and no links are ever created, so this only fails if dest is tampered with).
        if not path.resolve().is_relative_to(self.dest):
            raise UnsafeArchive(f"archive member {name!r} would be written outside the archive")
        for parent in reversed(rel.parents[:-1]):
            self._mkdir(self.dest.joinpath(*parent.parts))
        return path

    def mkdir(self, name: str) -> None:
        """Create the directory member ``name``."""
        path = self.target(name, "dir")
        if path is not None:
            self._mkdir(path)

    @staticmethod
    def _mkdir(path: Path) -> None:
        if not path.is_dir():
            path.mkdir()
            path.chmod(0o755)  # whatever the umask

    def write(self, name: str, declared: int, source: IO[bytes]) -> None:
        """Write the file member ``name`` from ``source``, counting the bytes really read."""
        path = self.target(name, "file", declared)
        if path is None:
            raise UnsafeArchive(f"archive member {name!r} is a file without a name")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(path, flags, 0o644), "wb") as out:
            os.fchmod(out.fileno(), 0o644)
            while chunk := _read(source, _CHUNK):
                self.written += len(chunk)
                if self.written > self.max_bytes:
                    raise PayloadTooLarge(
                        f"the archive unpacks to more than {self.max_bytes} bytes "
                        f"(at member {name!r})"
                    )
                out.write(chunk)


def _relative(name: str) -> PurePosixPath | None:
    """``name`` as a safe relative path, None for the root itself; else UnsafeArchive."""
    if not name or "\0" in name:
        raise UnsafeArchive(f"archive member {name!r} has an invalid name")
    if "\\" in name:
        raise UnsafeArchive(f"archive member {name!r} contains a backslash")
    if name.startswith("/") or name[1:3] == ":/":
        raise UnsafeArchive(f"archive member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"archive member {name!r} contains a '..' component")
    if not parts:
        return None
    if len(name.encode()) > _MAX_PATH_BYTES or any(
        len(p.encode()) > _MAX_NAME_BYTES for p in parts
    ):
        raise UnsafeArchive(f"archive member {name[:100]!r}... has a name that is too long")
    return PurePosixPath(*parts)


def _tar_mode(head: bytes) -> TarMode:
    if head.startswith(b"\x1f\x8b"):
        return "r:gz"
    if head.startswith(b"BZh"):
        return "r:bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "r:xz"
    if head[257:262] == b"ustar":
        return "r:"
    raise BadRequest("the upload is not a tar.gz, tar or zip archive")


def _extract_tar(source: IO[bytes], mode: TarMode, writer: _Writer) -> None:
    try:
        archive = tarfile.open(fileobj=source, mode=mode)  # noqa: SIM115 - closed below
    except _CORRUPT as error:
        raise BadRequest(f"the upload is not a readable tar archive ({error})") from None
    with archive:
        for member in _guarded(archive.next):
            writer.count()
            name = member.name
            if member.issym():
                raise UnsafeArchive(f"archive member {name!r} is a symbolic link")
            if member.islnk():
                raise UnsafeArchive(f"archive member {name!r} is a hard link")
            if member.isdir():
                writer.mkdir(name)
            elif member.isreg():
                reader = _guarded_call(functools.partial(archive.extractfile, member))
                if reader is None:
                    raise UnsafeArchive(f"archive member {name!r} has no data")
                with reader:
                    writer.write(name, member.size, reader)
            else:
                raise UnsafeArchive(
                    f"archive member {name!r} is a device, fifo or other special file"
                )


def _extract_zip(source: IO[bytes], writer: _Writer) -> None:
    try:
        archive = zipfile.ZipFile(source)
    except _CORRUPT as error:
        raise BadRequest(f"the upload is not a readable zip archive ({error})") from None
    with archive:
        infos = archive.infolist()
        writer.count(len(infos))
        for info in infos:
            name = info.filename
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise UnsafeArchive(f"archive member {name!r} is a symbolic link")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchive(
                    f"archive member {name!r} is a device, fifo or other special file"
                )
            if info.flag_bits & 0x1:
                raise BadRequest(f"archive member {name!r} is encrypted")
            if info.is_dir():
                writer.mkdir(name)
                continue
            with _guarded_call(functools.partial(archive.open, info)) as reader:
                writer.write(name, info.file_size, reader)


def _guarded(step: Callable[[], _T | None]) -> Iterator[_T]:
    """Call ``step`` until it returns None, turning read errors into BadRequest."""
    while (item := _guarded_call(step)) is not None:
        yield item


def _guarded_call(step: Callable[[], _T]) -> _T:
    try:
        return step()
    except _CORRUPT as error:
        raise BadRequest(f"the archive is corrupt or truncated ({error})") from None


def _read(source: IO[bytes], size: int) -> bytes:
    return _guarded_call(functools.partial(source.read, size))


@contextlib.contextmanager
def _seekable(data: bytes | BinaryIO) -> Iterator[IO[bytes]]:
    """``data`` as a seekable binary file; a stream that cannot seek is spooled
    to a temporary file first (zip needs to seek)."""
    if isinstance(data, bytes | bytearray | memoryview):
        yield io.BytesIO(data)
    elif data.seekable():
        yield data
    else:
        with tempfile.SpooledTemporaryFile(max_size=64 * 2**20) as spool:
            shutil.copyfileobj(data, spool, _CHUNK)
            spool.seek(0)
            yield spool


def _empty(dest: Path) -> None:
    for entry in dest.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
