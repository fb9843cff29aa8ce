"""Unpacking uploaded archives: the formats, and every way an archive may try to escape."""

from __future__ import annotations

import gzip
import io
import random
import stat
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from mlaas4hep.serve.archive import extract_archive, single_top_directory
from mlaas4hep.serve.errors import BadRequest, PayloadTooLarge, UnsafeArchive

FILES = {"mymodel/model.onnx": b"onnx bytes", "mymodel/sub/features.json": b"{}"}


def make_tar(
    members: dict[str, bytes] | None = None,
    *,
    mode: str = "w:gz",
    extra: Sequence[tarfile.TarInfo] = (),
) -> bytes:
    """A tar archive of ``members`` (name → contents) plus ``extra`` data-less members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in (FILES if members is None else members).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return buffer.getvalue()


def make_zip(members: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in (FILES if members is None else members).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


@pytest.mark.parametrize("mode", ["w:gz", "w", "w:bz2", "w:xz"])
def test_tar_formats(mode: str, dest: Path) -> None:
    assert extract_archive(make_tar(mode=mode), dest) == dest
    assert contents(dest) == FILES
    model = dest / "mymodel" / "model.onnx"
    assert stat.S_IMODE(model.stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "mymodel" / "sub").stat().st_mode) == 0o755


def test_zip(dest: Path) -> None:
    extract_archive(make_zip(), dest)
    assert contents(dest) == FILES
    assert stat.S_IMODE((dest / "mymodel").stat().st_mode) == 0o755


def test_streams_seekable_or_not(dest: Path, tmp_path: Path) -> None:
    path = tmp_path / "bundle.zip"
    path.write_bytes(make_zip())
    with path.open("rb") as stream:
        extract_archive(stream, dest)
    assert contents(dest) == FILES

    class Pipe(io.RawIOBase):
        """A stream that cannot seek, like a request body."""

        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            return self.data.readinto(buffer)

    other = tmp_path / "other"
    other.mkdir()
    extract_archive(io.BufferedReader(Pipe(make_zip())), other)
    assert contents(other) == FILES


def test_directories_and_dot_prefixes(dest: Path) -> None:
    directory = special("./mymodel", tarfile.DIRTYPE)
    extract_archive(make_tar({"./mymodel/./a.txt": b"a"}, extra=[directory]), dest)
    assert contents(dest) == {"mymodel/a.txt": b"a"}


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil.txt", "'..' component"),
        ("mymodel/../../evil.txt", "'..' component"),
        ("/etc/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("mymodel\\..\\evil.txt", "backslash"),
    ],
)
@pytest.mark.parametrize("maker", [make_tar, make_zip])
def test_escaping_names(name: str, why: str, maker: object, dest: Path) -> None:
    data = maker({"mymodel/ok.txt": b"ok", name: b"evil"})  # type: ignore[operator]
    with pytest.raises(UnsafeArchive, match=why) as error:
        extract_archive(data, dest)
    assert repr(name) in str(error.value)
    assert list(dest.iterdir()) == []  # what was written before is removed
    assert not (dest.parent / "evil.txt").exists()


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (special("mymodel/link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (special("mymodel/hard", tarfile.LNKTYPE, "mymodel/model.onnx"), "hard link"),
        (special("mymodel/tty", tarfile.CHRTYPE), "device"),
        (special("mymodel/disk", tarfile.BLKTYPE), "device"),
        (special("mymodel/pipe", tarfile.FIFOTYPE), "fifo"),
    ],
)
def test_links_and_devices(member: tarfile.TarInfo, why: str, dest: Path) -> None:
    with pytest.raises(UnsafeArchive, match=why) as error:
        extract_archive(make_tar(extra=[member]), dest)
    assert member.name in str(error.value)
    assert list(dest.iterdir()) == []


def test_zip_symlink(dest: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("mymodel/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchive, match="'mymodel/link' is a symbolic link"):
        extract_archive(buffer.getvalue(), dest)


def test_duplicates(dest: Path) -> None:
    twice = make_tar(extra=[special("mymodel/model.onnx", tarfile.DIRTYPE)])
    with pytest.raises(UnsafeArchive, match=r"'mymodel/model\.onnx' is a duplicate"):
        extract_archive(twice, dest)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("m/a.txt", b"1")
        with pytest.warns(UserWarning, match="Duplicate"):
            archive.writestr("m/a.txt", b"2")
    with pytest.raises(UnsafeArchive, match="duplicate"):
        extract_archive(buffer.getvalue(), dest)
    with pytest.raises(UnsafeArchive, match="earlier members are inside it"):
        extract_archive(make_tar({"m/a/b.txt": b"1", "m/a": b"2"}), dest)
    with pytest.raises(UnsafeArchive, match="inside the file 'm/a'"):
        extract_archive(make_tar({"m/a": b"2", "m/a/b.txt": b"1"}), dest)
    assert list(dest.iterdir()) == []


def test_too_many_members(dest: Path) -> None:
    many = {f"m/{i}.txt": b"x" for i in range(11)}
    for data in (make_tar(many), make_zip(many)):
        with pytest.raises(PayloadTooLarge, match="more than 10 members"):
            extract_archive(data, dest, max_members=10)
        assert list(dest.iterdir()) == []
    extract_archive(make_tar(many), dest, max_members=11)


def test_gzip_bomb(dest: Path) -> None:
    bomb = make_tar({"m/zeros.bin": bytes(5_000_000)})
    assert len(bomb) < 10_000
    with pytest.raises(PayloadTooLarge, match=r"more than 1000000 bytes .*'m/zeros\.bin'"):
        extract_archive(bomb, dest, max_bytes=1_000_000)
    with pytest.raises(PayloadTooLarge):
        extract_archive(make_zip({"m/zeros.bin": bytes(5_000_000)}), dest, max_bytes=1_000_000)
    assert list(dest.iterdir()) == []


def test_lying_zip_header(dest: Path) -> None:
    """A zip whose central directory understates a member's size is refused, not trusted."""
    data = bytearray(make_zip({"m/zeros.bin": bytes(2_000_000)}))
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("m/zeros.bin")
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")  # uncompressed size: 10
    assert info.file_size == 2_000_000
    with pytest.raises(BadRequest):  # the CRC no longer matches what the header allows
        extract_archive(bytes(data), dest, max_bytes=1_000_000)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a tar.gz, tar or zip"),
        (b"hello world" * 100, "not a tar.gz, tar or zip"),
        (b"\x89PNG\r\n\x1a\n" + bytes(600), "not a tar.gz, tar or zip"),
        (gzip.compress(b"not a tar at all" * 100), "not a readable tar"),
        (
            make_tar({"m/noise": random.Random(0).randbytes(50_000)})[:30_000],
            "corrupt or truncated",
        ),
        (b"PK\x03\x04" + bytes(100), "not a readable zip"),
    ],
)
def test_not_an_archive(data: bytes, match: str, dest: Path) -> None:
    with pytest.raises(BadRequest, match=match):
        extract_archive(data, dest)
    assert list(dest.iterdir()) == []


def test_destination_must_be_an_empty_directory(dest: Path) -> None:
    (dest / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        extract_archive(make_tar(), dest)
    with pytest.raises(NotADirectoryError):
        extract_archive(make_tar(), dest / "missing")


def test_single_top_directory(dest: Path) -> None:
    extract_archive(make_tar({**FILES, "._mymodel": b"", "__MACOSX/x": b""}), dest)
    assert single_top_directory(dest) == ("mymodel", dest / "mymodel")


@pytest.mark.parametrize(
    ("members", "found"),
    [
        ({"model.onnx": b"x", "params.json": b"{}"}, "it holds model.onnx, params.json"),
        ({"a/model.onnx": b"x", "b/model.onnx": b"x"}, "it holds a/, b/"),
        ({"a/model.onnx": b"x", "README": b"x"}, "it holds README, a/"),
        ({}, "it holds nothing"),
    ],
)
def test_single_top_directory_explains_the_layout(
    members: dict[str, bytes], found: str, dest: Path
) -> None:
    extract_archive(make_tar(members), dest)
    with pytest.raises(BadRequest, match="single top-level directory named after the model") as e:
        single_top_directory(dest)
    assert found in str(e.value)
