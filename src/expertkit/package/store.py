"""The local store: ``$EXPERTKIT_HOME/experts/<name>/<version>/``, one verified package each.

``install`` verifies the package (checksum, digests, lock, signature as asked), checks the lock
against the manifest, then extracts into a temp directory beside the target and renames it into
place: an interrupted or refused install leaves nothing behind. An install record
(``.install.json``) says when, from what, and who signed.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from expertkit.fsutil import atomic_directory, write_text_atomic
from expertkit.home import expertkit_home
from expertkit.layout import MANIFEST_FILE, STORE_DIR
from expertkit.package.archive import PackageError, extract_archive
from expertkit.package.consistency import lock_problems, packaged_manifest
from expertkit.package.recheck import INSTALL_RECORD, SIGNATURE_COPY
from expertkit.package.signing import PublicKey, default_trusted_keys_dir, signature_path, trusted_keys
from expertkit.package.verify import verify_package

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+.*)?$")


@dataclass(frozen=True)
class InstalledExpert:
    name: str
    version: str
    path: str
    base_model: str
    adapter_type: str
    signer: str | None
    trusted: bool
    installed_at: str
    sha256: str
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def experts_dir() -> Path:
    return expertkit_home() / STORE_DIR


def version_key(version: str) -> tuple[Any, ...]:
    """Semantic-version order: 1.10.0 > 1.9.0, and a pre-release sorts before its release."""
    match = _SEMVER.match(version)
    if not match:
        return (-1, version)
    major, minor, patch, pre = match.groups()
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in (pre or "").split(".") if p)
    return (int(major), int(minor), int(patch), 0 if pre else 1, parts)


def _keys(require_signature: bool, trusted_keys_dir: Path | None) -> list[PublicKey] | None:
    if trusted_keys_dir is not None:
        return trusted_keys(trusted_keys_dir)
    if require_signature:
        return trusted_keys(default_trusted_keys_dir())
    return None


def install_package(
    package: Path, require_signature: bool = False, trusted_keys_dir: Path | None = None, force: bool = False
) -> tuple[InstalledExpert, bool]:
    """Verify and install; returns the record and whether anything was written (False: already there).

    Raises:
        PackageError: verification failed, the lock disagrees with the manifest, or another build
            of this name and version is installed (without ``force``).
    """
    report = verify_package(package, _keys(require_signature, trusted_keys_dir), require_signature)
    manifest = packaged_manifest(report.scan.contents.get(MANIFEST_FILE), package.name)
    if report.lock is None:  # verify_package already refuses this; kept explicit for the type checker
        raise PackageError(f"{package.name} has no readable expert.lock.json", "re-package the expert")
    configs = {n: report.scan.contents[n] for n in report.scan.contents if n.endswith("adapter_config.json")}
    problems = lock_problems(manifest, report.lock, configs)
    if problems:
        raise PackageError(f"{package.name}: lock inconsistent:\n  " + "\n  ".join(problems), "re-package it")
    target = experts_dir() / manifest.name / manifest.version
    existing = read_record(target)
    if existing is not None and not force:
        if existing.sha256 == report.archive_sha256:
            return existing, False
        raise PackageError(
            f"{manifest.name}@{manifest.version} is already installed from a different package ({existing.source})",
            "remove it first (expert-cli remove NAME@VERSION) or pass --force",
        )
    record = InstalledExpert(
        name=manifest.name,
        version=manifest.version,
        path=str(target),
        base_model=report.lock.base_model.name or "",
        adapter_type=manifest.base_models[0].adapters[0].type,
        signer=report.signer,
        trusted=report.trusted,
        installed_at=datetime.now(UTC).isoformat(timespec="seconds"),
        sha256=report.archive_sha256,
        source=str(package.resolve()),
    )
    with atomic_directory(target, replace=True) as staged:
        extract_archive(package, staged, report.scan.members)
        if report.signer is not None:  # kept so every load can re-check it against the keys trusted then
            shutil.copyfile(signature_path(package), staged / SIGNATURE_COPY)
        write_text_atomic(staged / INSTALL_RECORD, json.dumps(record.to_json(), indent=2) + "\n")
    return record, True


def read_record(directory: Path) -> InstalledExpert | None:
    try:
        return InstalledExpert(**json.loads((directory / INSTALL_RECORD).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def list_installed(name: str | None = None) -> list[InstalledExpert]:
    """Installed experts, by name, newest version first."""
    root = experts_dir()
    if not root.is_dir():
        return []
    records = []
    for expert in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if name is not None and expert.name != name:
            continue
        versions = [read_record(v) for v in expert.iterdir() if v.is_dir() and not v.name.startswith(".")]
        records += sorted((r for r in versions if r), key=lambda r: version_key(r.version), reverse=True)
    return records


def split_reference(reference: str) -> tuple[str, str | None]:
    """``name`` or ``name@version`` → (name, version or None)."""
    name, _, version = reference.partition("@")
    return name, version or None


def find_installed(reference: str) -> InstalledExpert:
    """The installed expert for ``name`` (newest version) or ``name@version``; ``sql`` also finds
    ``expert-sql``."""
    name, version = split_reference(reference)
    records = list_installed(name) or list_installed(f"expert-{name}")  # `sql` finds expert-sql
    if version is not None:
        records = [r for r in records if r.version == version]
    if not records:
        installed = sorted({r.name + "@" + r.version for r in list_installed()})
        raise PackageError(
            f"no installed expert {reference!r}",
            f"installed: {', '.join(installed) or 'none'}; install one with: expert-cli install PACKAGE",
        )
    return records[0]


def remove_installed(reference: str) -> list[InstalledExpert]:
    """Remove ``name@version``, or every version of ``name``; returns what was removed."""
    name, version = split_reference(reference)
    records = [find_installed(reference)] if version else list_installed(name)
    if not records:
        find_installed(reference)  # raises with the list of what is installed
    for record in records:
        shutil.rmtree(record.path)
    parent = experts_dir() / name
    if parent.is_dir() and not any(p for p in parent.iterdir() if not p.name.startswith(".")):
        shutil.rmtree(parent)
    return records
