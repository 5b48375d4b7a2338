"""Atomic writes: nothing half-written is ever left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shareable(fd: int) -> None:
    """Give a temp file (``mkstemp`` makes 0600) the mode an ordinary new file gets: 0666 minus the
    umask. Packages, checksums, signatures and public keys are meant to be shared; only a private
    key is written 0600 (by its own writer)."""
    os.fchmod(fd, 0o666 & ~current_umask())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    shareable(fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure_atomic(figure: Any, path: Path) -> Path:
    """Save a matplotlib ``figure`` as ``path`` (the format from its suffix) through a temp file, then
    rename; the figure is closed and the temp file removed whatever happens."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    shareable(fd)
    os.close(fd)
    try:
        figure.savefig(tmp)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    return path


@contextlib.contextmanager
def atomic_directory(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; rename it to ``final`` only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temp directory is removed, so an
    interrupted job never leaves a partial ``final`` behind.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; the final directory gets ordinary permissions
    try:
        yield tmp
        if final.exists() and replace:
            shutil.rmtree(final)
        tmp.replace(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
