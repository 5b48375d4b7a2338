"""``<package>.sha256`` in ``sha256sum`` format, so ``sha256sum -c`` checks it without expertkit."""

from __future__ import annotations

import re
from pathlib import Path

from expertkit.fsutil import write_text_atomic
from expertkit.models.fingerprint import sha256_file
from expertkit.package.archive import PackageError

# sha256sum's line: 64 hex digits, a space, a mode character (' ' text or '*' binary), the name.
_LINE = re.compile(r"^(?P<digest>[0-9a-fA-F]{64}) [ *](?P<name>.+)$")


def checksum_path(package: Path) -> Path:
    return package.with_name(package.name + ".sha256")


def write_checksum(package: Path) -> tuple[Path, str]:
    """Write ``<package>.sha256`` (``<hex>  <file name>``); returns its path and the digest."""
    digest = sha256_file(package)
    path = checksum_path(package)
    write_text_atomic(path, f"{digest}  {package.name}\n")
    return path, digest


def read_checksum(package: Path) -> str | None:
    """The digest ``<package>.sha256`` records for the package, or ``None`` without the file.

    Raises:
        PackageError: the file exists but has no line for this package.
    """
    path = checksum_path(package)
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _LINE.match(line.strip())
        if match and Path(match["name"]).name == package.name:
            return match["digest"].lower()
    raise PackageError(f"{path} has no sha256sum line for {package.name}", "re-create it with expert-cli package")
