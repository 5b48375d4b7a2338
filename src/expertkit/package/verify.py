"""``verify_package``: checksum, member digests against the lock, and the signature.

Every problem is collected, so one run says everything that is wrong: which member changed,
which was added or removed, whether the checksum file or the signature disagrees, and who signed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertkit.layout import MANIFEST_FILE
from expertkit.models.fingerprint import sha256_file
from expertkit.package.archive import DEFAULT_LIMITS, ArchiveScan, Limits, PackageError, scan_archive
from expertkit.package.checksum import checksum_path, read_checksum
from expertkit.package.lock import LOCK_FILE, ExpertLock, LockMismatchError, parse_lock
from expertkit.package.signing import PublicKey, Signature, read_signature, signature_path, write_signature


@dataclass
class VerifyReport:
    package: Path
    archive_sha256: str
    scan: ArchiveScan
    lock: ExpertLock | None = None
    signer: str | None = None
    trusted: bool = False
    trusted_source: str | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        expert = self.lock.expert.model_dump(mode="json") if self.lock else {}
        return {
            "package": str(self.package),
            "ok": self.ok,
            "sha256": self.archive_sha256,
            "expert": expert,
            "members": len(self.scan.members),
            "signer": self.signer,
            "trusted": self.trusted,
            "trusted_key": self.trusted_source,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def digest_problems(expected: dict[str, str], actual: dict[str, str], against: str) -> list[str]:
    """Modified, removed and added members, compared with ``expected`` (from ``against``)."""
    problems = []
    for name in sorted(expected.keys() | actual.keys()):
        if name not in actual:
            problems.append(f"member {name} was removed (listed in {against})")
        elif name not in expected:
            problems.append(f"member {name} was added (not in {against})")
        elif expected[name] != actual[name]:
            problems.append(
                f"member {name} was modified: sha256 {actual[name][:16]}…, {against} says {expected[name][:16]}…"
            )
    return problems


def _check_checksum(report: VerifyReport) -> None:
    recorded = read_checksum(report.package)
    if recorded is None:
        report.warnings.append(f"no {checksum_path(report.package).name} beside the package")
    elif recorded != report.archive_sha256:
        report.problems.append(
            f"archive checksum mismatch: {checksum_path(report.package).name} says {recorded[:16]}…, "
            f"the archive is {report.archive_sha256[:16]}…"
        )


def _check_lock(report: VerifyReport) -> None:
    raw = report.scan.contents.get(LOCK_FILE)
    if raw is None:
        report.problems.append(f"{LOCK_FILE} is missing from the package")
        return
    try:
        report.lock = parse_lock(raw, str(report.package))
    except LockMismatchError as exc:
        report.problems.append(exc.message)
        return
    actual = {name: m.sha256 for name, m in report.scan.members.items() if name != LOCK_FILE}
    report.problems += digest_problems(report.lock.files, actual, LOCK_FILE)


def _check_signature(report: VerifyReport, keys: list[PublicKey] | None, require: bool) -> None:
    path = signature_path(report.package)
    if not path.is_file():
        if keys is not None or require:
            report.problems.append(f"the package is not signed (no {path.name})")
        return
    try:
        signature = read_signature(path)
    except PackageError as exc:
        report.problems.append(exc.message)
        return
    _check_signed_content(report, signature)
    report.signer = signature.claimed.key_id
    if not signature.claimed.verifies(signature.signature, signature.payload_bytes):
        report.problems.append(f"{path.name}: the signature does not verify (the signature file was altered)")
        return
    if keys is None:
        if require:
            report.problems.append("a signature is required but no trusted key was given (--key or --trusted-keys)")
        else:
            report.warnings.append(f"signed by {report.signer}, not checked against a trusted key")
        return
    trusted = next((k for k in keys if k.verifies(signature.signature, signature.payload_bytes)), None)
    if trusted is None:
        names = ", ".join(f"{k.key_id} ({k.source})" for k in keys)
        report.problems.append(f"signed by {report.signer}, which is not a trusted key (trusted: {names})")
        return
    report.trusted, report.trusted_source = True, trusted.source


def _check_signed_content(report: VerifyReport, signature: Signature) -> None:
    payload = signature.payload
    actual = {name: m.sha256 for name, m in report.scan.members.items()}
    report.problems += digest_problems(payload["files"], actual, signature.path.name)
    if payload.get("archive_sha256") != report.archive_sha256:
        report.problems.append(
            f"{signature.path.name} was made for another archive "
            f"({payload.get('package')}, sha256 {str(payload.get('archive_sha256'))[:16]}…)"
        )


def _small_member(name: str) -> bool:
    return name in (LOCK_FILE, MANIFEST_FILE) or name.endswith("/adapter_config.json")


def inspect_package(
    package: Path,
    keys: list[PublicKey] | None = None,
    require_signature: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    signature: bool = True,
) -> VerifyReport:
    """Check a package without raising for what is wrong with it (only for what makes it unreadable).

    Args:
        keys: trusted public keys; ``None`` reports the signer without trusting it.
        require_signature: a missing or untrusted signature is a problem.
        signature: check ``<package>.sig`` at all (signing a package does not read the old one).

    Raises:
        PackageError: the file is missing, corrupt, or a hostile archive (links, traversal, bombs).
    """
    if not package.is_file():
        raise PackageError(f"{package}: no such package file", "give the path of a .expert file")
    scan = scan_archive(package, _small_member, limits)
    report = VerifyReport(package, sha256_file(package), scan)
    _check_checksum(report)
    _check_lock(report)
    if signature:
        _check_signature(report, keys, require_signature)
    return report


def verify_package(package: Path, keys: list[PublicKey] | None = None, require_signature: bool = False) -> VerifyReport:
    """:func:`inspect_package`, raising a PackageError that lists every problem."""
    report = inspect_package(package, keys, require_signature)
    if not report.ok:
        raise PackageError(
            f"{package.name} failed verification:\n  " + "\n  ".join(report.problems),
            "do not use this package; get it again from its publisher",
        )
    return report


def sign_package(package: Path, key_path: Path) -> tuple[Path, str]:
    """Check the package's integrity, then write ``<package>.sig`` over its member digests."""
    report = inspect_package(package, signature=False)
    if not report.ok:
        raise PackageError(
            f"refusing to sign {package.name}, it fails its integrity checks:\n  " + "\n  ".join(report.problems),
            "re-package the expert, then sign it",
        )
    payload = {
        "package": package.name,
        "archive_sha256": report.archive_sha256,
        "expert": report.lock.expert.model_dump(mode="json") if report.lock else {},
        "files": {name: m.sha256 for name, m in sorted(report.scan.members.items())},
    }
    return write_signature(package, payload, key_path)
