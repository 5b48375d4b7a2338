"""Deterministic ``.expert`` archives (gzip-compressed tar), and reading them safely.

Written on ``tarfile`` + ``gzip`` from the standard library: what we need beyond them is policy,
not format. Writing pins everything that would make two builds differ (entry order, mtimes,
owners, modes, the gzip header's timestamp and file name). Reading first *scans* the whole
archive, streaming, and refuses anything other than plain files with safe relative names (no
absolute paths, ``..``, links, devices, sparse members) and any archive over the size or member
limits, checking each header before its data is read. Only a clean scan is ever extracted, and
extraction re-hashes every byte it writes against the scan.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from expertkit.errors import ExpertkitError
from expertkit.fsutil import shareable

FILE_MODE = 0o644
_CHUNK = 1 << 20
KEEP_LIMIT = 4 << 20  # one small member (manifest, lock, adapter config) kept in memory


class PackageError(ExpertkitError):
    """A package cannot be built, read, verified or installed."""


@dataclass(frozen=True)
class Limits:
    """What an archive may hold before it is treated as hostile (zip-bomb guard)."""

    max_members: int = 1024
    max_member_bytes: int = 8 << 30
    max_total_bytes: int = 16 << 30
    max_header_bytes: int = 64 << 10  # one PAX or GNU long-name header: tarfile reads it whole
    max_kept_bytes: int = 8 << 20  # small members held in memory during a scan, all together


class BoundedTarInfo(tarfile.TarInfo):
    """Refuses an extended header (PAX, GNU long name) over :attr:`Limits.max_header_bytes` before
    ``tarfile`` reads it into memory: a 600 KB archive can declare a multi-GB PAX header."""

    max_header_bytes = Limits.max_header_bytes

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME)
        if (self.type in extended or self.type == tarfile.GNUTYPE_LONGLINK) and self.size > self.max_header_bytes:
            raise tarfile.HeaderError(
                f"an extended header of {self.size:,} bytes (the limit is {self.max_header_bytes:,})"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    sha256: str


def write_archive(path: Path, files: dict[str, Path | bytes]) -> None:
    """Write ``name → file or bytes`` as a reproducible tar.gz at ``path`` (atomically).

    Same inputs, same bytes: entries sorted by name, mtime 0, uid/gid 0, no owner names, mode
    0644, and a gzip header without timestamp or file name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    shareable(fd)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as zipped,
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name in sorted(files):
                _add(tar, name, files[name])
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _add(tar: tarfile.TarFile, name: str, source: Path | bytes) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", FILE_MODE
    if isinstance(source, bytes):
        info.size = len(source)
        tar.addfile(info, io.BytesIO(source))
        return
    info.size = source.stat().st_size
    with source.open("rb") as handle:
        tar.addfile(info, handle)


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` may not be extracted, or ``None`` when it is a safe relative path."""
    if not name or "\\" in name or "\x00" in name:
        return "an empty name, a backslash or a NUL byte"
    if name.startswith("/") or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "a '..' component (path traversal)"
    if any(part in ("", ".") for part in name.split("/")):
        return "an empty or '.' path component"
    return None


def _member_problem(info: tarfile.TarInfo) -> str | None:
    if info.issym():
        return f"is a symbolic link (to {info.linkname!r})"
    if info.islnk():
        return f"is a hard link (to {info.linkname!r})"
    if info.isdev() or info.isfifo():
        return "is a device or FIFO"
    if info.issparse():
        return "is a sparse file"
    if not info.isreg():
        return "is not a regular file"
    reason = unsafe_name_reason(info.name)
    return f"has {reason}" if reason else None


def _checked_members(tar: tarfile.TarFile, limits: Limits) -> Iterator[tarfile.TarInfo]:
    seen: set[str] = set()
    total = 0
    for count, info in enumerate(tar, start=1):
        if count > limits.max_members:
            raise PackageError(f"archive has more than {limits.max_members} members", "refusing a possible zip bomb")
        problem = _member_problem(info)
        if problem:
            raise PackageError(f"archive member {info.name!r} {problem}", "refusing an unsafe archive")
        if info.name in seen:
            raise PackageError(f"archive member {info.name!r} appears twice", "refusing an ambiguous archive")
        seen.add(info.name)
        total += info.size
        if info.size > limits.max_member_bytes or total > limits.max_total_bytes:
            raise PackageError(
                f"archive member {info.name!r} declares {info.size:,} bytes (archive total so far {total:,}); "
                f"the limits are {limits.max_member_bytes:,} per member and {limits.max_total_bytes:,} in all",
                "refusing a possible zip bomb",
            )
        yield info


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r|gz", tarinfo=BoundedTarInfo)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PackageError(f"{path} is not a readable .expert archive: {exc}", "re-download or re-package it") from exc


def _read_data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Iterator[bytes]:
    handle = tar.extractfile(info)
    if handle is None:
        raise PackageError(f"archive member {info.name!r} has no data", "refusing the archive")
    while chunk := handle.read(_CHUNK):
        yield chunk


@dataclass(frozen=True)
class ArchiveScan:
    """What a scan found: every member, and the bytes of the small members asked for."""

    members: dict[str, Member]
    contents: dict[str, bytes]


def scan_archive(
    path: Path, keep: Callable[[str], bool] = lambda _: False, limits: Limits = DEFAULT_LIMITS
) -> ArchiveScan:
    """Every member's name, size and sha256, checked for safety; writes nothing.

    Args:
        keep: which small members (manifest, lock, adapter config) to return the bytes of (≤ 4 MiB
            each, ≤ ``limits.max_kept_bytes`` together).

    Raises:
        PackageError: the archive is corrupt or holds anything :func:`_member_problem` refuses.
    """
    members: dict[str, Member] = {}
    contents: dict[str, bytes] = {}
    kept_total = 0
    try:
        with _open(path) as tar:
            for info in _checked_members(tar, limits):
                digest = hashlib.sha256()
                kept = keep(info.name) and info.size <= KEEP_LIMIT
                kept_total += info.size if kept else 0
                if kept_total > limits.max_kept_bytes:
                    raise PackageError(
                        f"{path}: the manifest, lock and adapter configs pass {limits.max_kept_bytes:,} bytes",
                        "refusing a possible memory bomb",
                    )
                chunks = []
                for chunk in _read_data(tar, info):
                    digest.update(chunk)
                    if kept:
                        chunks.append(chunk)
                members[info.name] = Member(info.name, info.size, digest.hexdigest())
                if kept:
                    contents[info.name] = b"".join(chunks)
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise PackageError(f"{path} is corrupt: {exc}", "re-download or re-package it") from exc
    return ArchiveScan(members, contents)


def extract_archive(
    path: Path, destination: Path, expected: dict[str, Member], only: frozenset[str] | None = None
) -> None:
    """Extract into the empty directory ``destination``, re-checking every digest of the scan.

    Call only with the result of :func:`scan_archive` on the same file; a member that differs
    from it (the file changed in between) stops extraction. ``only``: extract just these names.
    """
    try:
        with _open(path) as tar:
            for info in _checked_members(tar, DEFAULT_LIMITS):
                if only is not None and info.name not in only:
                    continue
                target = destination.joinpath(*PurePosixPath(info.name).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                with os.fdopen(os.open(target, flags, FILE_MODE), "wb") as out:
                    for chunk in _read_data(tar, info):
                        digest.update(chunk)
                        out.write(chunk)
                known = expected.get(info.name)
                if known is None or known.sha256 != digest.hexdigest():
                    raise PackageError(f"{path} changed while it was being installed ({info.name})", "try again")
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise PackageError(f"cannot extract {path}: {exc}", "re-download or re-package it") from exc
