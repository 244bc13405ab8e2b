"""Safe reading of a dataset's container: a folder, tar or zip archive, member by member.

Members are read straight from the archive, never extracted; unsafe members (absolute,
escaping, links, devices) are refused, and a damaged archive fails with one line.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.common.errors import PipelineError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

Member = tuple[str, Callable[[], bytes]]


def container_kind(path: Path) -> str:
    """How `path` is packaged: 'folder', 'tar' or 'zip' (from its name, else its first bytes)."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise PipelineError(
            f"{path} does not exist or is not a file or folder: fix data.source in params.yaml"
        )
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    # A download URL need not end in a telling suffix: fall back to the magic numbers.
    with path.open("rb") as stream:
        head = stream.read(6)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")) or tarfile.is_tarfile(path):
        return "tar"
    raise PipelineError(
        f"{path} is in an unknown format: data.source must be a folder or a tar, tar.gz or zip "
        "archive of CIFAR-10"
    )


def members(path: Path, kind: str) -> Iterator[Member]:
    """The files of an archive or folder, as (relative posix name, reader)."""
    if kind == "folder":
        return _folder_members(path)
    if kind == "zip":
        return _zip_members(path)
    return _tar_members(path)


@contextlib.contextmanager
def archive_errors(path: Path, kind: str) -> Iterator[None]:
    """Turn the many ways a damaged archive fails into one PipelineError line."""
    try:
        yield
    except (
        tarfile.TarError,
        zipfile.BadZipFile,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        if kind == "folder":
            raise PipelineError(
                f"cannot read {path} ({reason}): fix its permissions or data.source"
            ) from error
        raise PipelineError(
            f"{path} is truncated or corrupt ({reason}): download it again (delete it from "
            "the download cache first) or point data.source at a good copy"
        ) from error


def _folder_members(root: Path) -> Iterator[Member]:
    """Every file under `root` in a stable order, hidden folders skipped."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        for name in sorted(files):
            file = Path(folder, name)
            yield file.relative_to(root).as_posix(), file.read_bytes


def _tar_members(path: Path) -> Iterator[Member]:
    """Regular files of a tar archive, read in one sequential pass without extraction."""
    # Random-access mode still reads sequentially here, and unlike the "r|" stream mode it
    # lets gzip check its CRC and length trailer when drained below.
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            name = _check_tar_member(path, member)
            if member.isfile():
                stream = archive.extractfile(member)
                if stream is not None:
                    yield name, stream.read
        if archive.fileobj is not None:
            while archive.fileobj.read(1 << 20):
                pass


def _check_tar_member(path: Path, member: tarfile.TarInfo) -> str:
    """Refuse what tarfile's "data" filter refuses, and links of any kind; return the name."""
    if member.issym() or member.islnk():
        _refuse(path, member.name, f"it is a link to {member.linkname!r}; links are refused")
    if not (member.isfile() or member.isdir()):
        _refuse(path, member.name, "it is a device, pipe or other special file")
    return _check_member_name(path, member.name)


def _zip_members(path: Path) -> Iterator[Member]:
    """Regular files of a zip archive, each read (and CRC-checked) straight from the zip."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                _refuse(path, info.filename, "it is a symbolic link; links are refused")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                _refuse(path, info.filename, "it is a device, pipe or other special file")
            name = _check_member_name(path, info.filename)
            if not info.is_dir():
                yield name, _zip_reader(archive, info)


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    """A reader of one zip member (binds `info` now, not when the loop has moved on)."""
    return lambda: archive.read(info)


def _check_member_name(path: Path, name: str) -> str:
    """Refuse absolute names and `..` escapes; return the name with '/' separators."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        _refuse(path, name, "it has an absolute path")
    normalized = posixpath.normpath(posix)
    if normalized == ".." or normalized.startswith("../"):
        _refuse(path, name, "its path escapes the extraction folder with '..'")
    return normalized


def _refuse(path: Path, name: str, reason: str) -> None:
    """Raise the error for an unsafe archive member."""
    raise PipelineError(
        f"{path} contains the unsafe member {name!r}: {reason}. Nothing was extracted; "
        "repack the dataset as plain files and folders or use a trusted copy"
    )
