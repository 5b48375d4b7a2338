"""expertkit's native libraries, each compiled once per machine and cached: ``native/decoder.c`` (the
native decoder), ``native/batch_attention.c`` and ``native/delta_rows.c`` (the lean decoder's batch
steps: attention, and experts' deltas in a mixed batch).

A library is built with the system C compiler (``$CC``, else ``cc``) for the CPU it runs on
(``-march=native``: AVX512-VNNI where the CPU has it, portable C otherwise) into
``$EXPERTKIT_HOME/native/<key>/``, where the key hashes the source and the headers beside it, the
compiler's version and the flags: a changed source or compiler builds anew. It is written to a
temporary name and renamed, so a half-built library is never loaded. The sources are expertkit's
own; nothing from an expert, a request or a data file reaches the compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from expertkit.errors import ExpertkitError
from expertkit.home import expertkit_home

SOURCE = Path(__file__).parent / "native" / "decoder.c"
BATCH_ATTENTION = Path(__file__).parent / "native" / "batch_attention.c"
DELTA_ROWS = Path(__file__).parent / "native" / "delta_rows.c"
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-pthread", "-fno-strict-aliasing")
BUILD_TIMEOUT_S = 300
log = logging.getLogger(__name__)


class NativeBuildError(ExpertkitError):
    """A native library could not be compiled here."""


def compiler() -> str:
    return os.environ.get("CC") or "cc"


def _compiler_version(cc: str) -> str:
    try:
        run = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NativeBuildError(
            f"expertkit's native code needs a C compiler and `{cc}` could not run: {exc}",
            "install one (Debian: apt-get install gcc) or set CC, or decode with --decoder lean",
        ) from exc
    return run.stdout.splitlines()[0] if run.stdout else cc


def library_path(source: Path = SOURCE) -> Path:
    """``source`` compiled, built now if this source, compiler and flags have no library yet."""
    cc = compiler()
    key = hashlib.sha256()
    headers = [h.read_bytes() for h in sorted(source.parent.glob("*.h"))]  # what the sources include
    for part in (source.read_bytes(), *headers, _compiler_version(cc).encode(), " ".join(FLAGS).encode()):
        key.update(part)
    target = expertkit_home() / "native" / key.hexdigest()[:16] / f"libexpertkit_{source.stem}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        command = [cc, *FLAGS, "-o", str(built), str(source), "-lm"]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NativeBuildError(f"compiling {source.name} failed: {exc}", "decode with --decoder lean") from exc
        if run.returncode != 0:
            raise NativeBuildError(
                f"compiling {source.name} failed ({' '.join(command)}): {run.stderr.strip()[-600:]}",
                "check the C compiler (set CC to another), or decode with --decoder lean",
            )
        shutil.move(str(built), target)  # same directory: a rename
    return target


@cache
def load_library(source: Path = SOURCE) -> ctypes.CDLL:
    """``source``'s library, loaded once per process (compiled first when needed)."""
    return ctypes.CDLL(str(library_path(source)))


def batch_kernel_library(source: Path, instead: str) -> ctypes.CDLL | None:
    """``source``'s library for a batch-step kernel of the lean decoder, or ``None`` with
    ``EXPERTKIT_BATCH_KERNELS=0`` or where it cannot be built (logged: ``instead`` says what runs)."""
    if os.environ.get("EXPERTKIT_BATCH_KERNELS", "1") == "0":
        return None
    try:
        return load_library(source)
    except (NativeBuildError, OSError) as exc:
        why = exc.message if isinstance(exc, NativeBuildError) else str(exc)
        hint = "install a C compiler (Debian: apt-get install gcc) or set CC"
        log.warning("%s (slower): %s\n  hint: %s", instead, why, hint)
        return None
