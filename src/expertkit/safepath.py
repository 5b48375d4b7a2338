"""Paths named by untrusted files stay inside their directory, and what is read from them is bounded.

A manifest inside a package or an installed expert directory is untrusted: its ``grammar_file``,
``readme``, ``license_file``, hooks and evaluation data are relative paths that must resolve (after
symlinks) to a regular file inside the expert's directory, and are read with a size bound. The
same check runs when a manifest is validated, packaged and installed, and again where the file is
read (:func:`read_contained`), so a directory changed after its check is still refused.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

from expertkit.errors import ExpertkitError

MAX_SIDE_FILE_BYTES = 4 << 20  # a grammar, README, LICENSE or hook: far below this
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class UnsafePathError(ExpertkitError):
    """A path from an untrusted file leaves its directory, is not a regular file, or is too large."""


def path_problem(relative: str) -> str | None:
    """Why ``relative`` can never name a file inside a directory (absolute, ``..``, NUL), or ``None``."""
    if not relative or "\x00" in relative:
        return "is empty or holds a NUL byte"
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or relative.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", relative):
        return "is an absolute path"
    if ".." in pure.parts:
        return "has a '..' component"
    return None


def contained(root: Path, relative: str, what: str) -> Path:
    """``root / relative`` with symlinks resolved, refused unless it stays inside ``root``.

    Raises:
        UnsafePathError: the path is absolute, has ``..``, or resolves outside ``root``.
    """
    problem = path_problem(relative)
    if problem:
        raise UnsafePathError(f"{what} {relative!r} {problem}", f"give a path inside {root}")
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(
            f"{what} {relative!r} resolves outside {root} (to {target})", "keep every file inside the expert directory"
        )
    return target


def contained_file(root: Path, relative: str, what: str, max_bytes: int = MAX_SIDE_FILE_BYTES) -> Path:
    """:func:`contained`, and a regular file of at most ``max_bytes`` (``FileNotFoundError`` if absent)."""
    target = contained(root, relative, what)
    info = target.stat()  # FileNotFoundError propagates: callers decide whether absence is an error
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(f"{what} {relative!r} is not a regular file", "name a plain file")
    if info.st_size > max_bytes:
        raise UnsafePathError(
            f"{what} {relative!r} is {info.st_size:,} bytes; the limit is {max_bytes:,}", "use a smaller file"
        )
    return target


def read_contained(root: Path, relative: str, what: str, max_bytes: int = MAX_SIDE_FILE_BYTES) -> bytes:
    """The bytes of a file inside ``root``, checked as :func:`contained_file` does, read with a bound
    (a file that grows past ``max_bytes`` between the check and the read is still refused)."""
    target = contained_file(root, relative, what, max_bytes)
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise UnsafePathError(f"{what} {relative!r} is not a regular file", "name a plain file")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafePathError(f"{what} {relative!r} is over {max_bytes:,} bytes", "use a smaller file")
    return data


def read_bounded(path: Path, what: str, max_bytes: int = MAX_SIDE_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most ``max_bytes`` (for the user's own files: any location)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(f"{what} {path} is not a regular file", "name a plain file")
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafePathError(f"{what} {path} is over {max_bytes:,} bytes", "use a smaller file")
    return data


def child_file(directory: Path, name: str, suffix: str, what: str) -> Path:
    """``directory / (name + suffix)`` for a name that becomes a file name (an evaluation set's),
    refused unless it is a plain name (the pattern of expert names) that stays in ``directory``."""
    if not FILE_NAME.match(name):
        raise UnsafePathError(
            f"{what} {name!r} cannot be used as a file name",
            "use letters, digits, '.', '_' and '-' (starting with a letter or digit), at most 100 characters",
        )
    target = directory / f"{name}{suffix}"
    if target.parent != directory:
        raise UnsafePathError(f"{what} {name!r} leaves {directory}", "use a plain name")
    return target
