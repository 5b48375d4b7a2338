"""Re-check an unpacked or installed expert directory every time it is loaded.

Anyone who can write ``$EXPERTKIT_HOME`` can swap an adapter after ``install`` checked it, so the
install record (``.install.json``) is only a cache of what install saw, never a source of trust.
At load time:

- every file is hashed and compared with the digests the directory must hold (the lock's, or
  for a package just verified, the archive's); a file added, removed or changed is refused;
- the lock must agree with the manifest and the shipped adapter config (what install enforces);
- with trusted keys, the package signature kept at install (``.package.sig``) must verify with
  one of the keys trusted *now*, over exactly these digests.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from expertkit.manifest.model import ManifestV2
from expertkit.package.archive import PackageError
from expertkit.package.consistency import ADAPTER_CONFIG_SUFFIX, lock_problems
from expertkit.package.lock import LOCK_FILE, ExpertLock
from expertkit.package.signing import PublicKey, read_signature
from expertkit.package.verify import digest_problems

INSTALL_RECORD = ".install.json"
SIGNATURE_COPY = ".package.sig"  # the package's signature, kept at install for re-checks at load
BOOKKEEPING = frozenset({INSTALL_RECORD, SIGNATURE_COPY})
MAX_SMALL_MEMBER = 1 << 20  # an adapter_config.json read for the consistency check


def directory_digests(root: Path) -> dict[str, str]:
    """Relative POSIX path → sha256 of every file under ``root`` (bookkeeping files excepted).

    Raises:
        PackageError: a symlink or anything but a regular file or directory is found.
    """
    digests: dict[str, str] = {}
    for current, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs + files):
            path = Path(current) / name
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                continue
            relative = path.relative_to(root).as_posix()
            if not stat.S_ISREG(mode):
                raise PackageError(f"{root}: {relative} is not a regular file (a link?)", "re-install the expert")
            if relative in BOOKKEEPING:
                continue
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            digests[relative] = digest.hexdigest()
    return digests


def _small(root: Path, relative: str) -> bytes:
    path = root / relative
    if path.stat().st_size > MAX_SMALL_MEMBER:
        raise PackageError(f"{path} is over {MAX_SMALL_MEMBER:,} bytes", "re-install the expert")
    return path.read_bytes()


def recheck_directory(
    root: Path,
    manifest: ManifestV2,
    lock: ExpertLock,
    expected: dict[str, str] | None = None,
    keys: list[PublicKey] | None = None,
    require_signature: bool = False,
) -> str | None:
    """Refuse ``root`` unless its files, lock, manifest and (with ``keys``) signature agree; the key id
    of the signer verified just now against ``keys`` (``None`` when no signature was checked).

    Args:
        expected: the digests the files must have (the archive's, just verified); default the lock's
            (the lock itself then is checked by the signature, when there is one).
        keys: keys trusted now; with them a kept signature must verify and cover these files.
        require_signature: refuse a directory without a signature by a trusted key.
    """
    actual = directory_digests(root)
    if expected is None:
        expected = {**lock.files, LOCK_FILE: actual.get(LOCK_FILE, "")}
    problems = digest_problems(expected, actual, "what was installed")
    configs = {n: _small(root, n) for n in actual if n.endswith(ADAPTER_CONFIG_SUFFIX)}
    problems += lock_problems(manifest, lock, configs)
    signer, signature_problems = _signature(root, actual, keys, require_signature)
    problems += signature_problems
    if problems:
        raise PackageError(
            f"{root} fails its load-time checks:\n  " + "\n  ".join(problems),
            "remove it and install the package again (expert-cli remove NAME@VERSION; expert-cli install PACKAGE)",
        )
    return signer


def _signature(
    root: Path, actual: dict[str, str], keys: list[PublicKey] | None, require: bool
) -> tuple[str | None, list[str]]:
    """(the verified signer's key id, problems)."""
    path = root / SIGNATURE_COPY
    if not path.is_file():
        return None, ["no signature was kept at install; a signature is required"] if require else []
    if keys is None:
        return None, ["a signature is required but no trusted key was given"] if require else []
    signature = read_signature(path)
    trusted = next((k for k in keys if k.verifies(signature.signature, signature.payload_bytes)), None)
    if trusted is None:
        return None, [f"signed by {signature.claimed.key_id}, which is not among the keys trusted now"]
    problems = digest_problems(signature.payload["files"], actual, "the signature")
    return (None if problems else trusted.key_id), problems
