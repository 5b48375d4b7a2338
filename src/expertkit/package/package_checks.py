"""``expert-cli validate PACKAGE.expert``: manifest checks plus package integrity, installing nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

from expertkit.layout import MANIFEST_FILE
from expertkit.manifest.report import Problem, ValidationReport
from expertkit.manifest.validate import ExtraCheck, validate_manifest
from expertkit.package.archive import PackageError, extract_archive
from expertkit.package.consistency import lock_problems, packaged_manifest
from expertkit.package.contents import GRAMMAR, LICENSE, README
from expertkit.package.verify import VerifyReport, inspect_package

SHIPPED = frozenset({MANIFEST_FILE, README, LICENSE, GRAMMAR})


def _manifest_report(package: Path, inspected: VerifyReport, extra: tuple[ExtraCheck, ...]) -> ValidationReport:
    """Validate the packaged manifest where it lies (beside the README/LICENSE/grammar it names)."""
    with tempfile.TemporaryDirectory(prefix="expertkit-validate-") as tmp:
        extract_archive(package, Path(tmp), inspected.scan.members, only=SHIPPED)
        report, _ = validate_manifest(Path(tmp) / MANIFEST_FILE, extra, packaged=True)
    return report


def validate_package(package: Path, extra_checks: tuple[ExtraCheck, ...] = ()) -> ValidationReport:
    """One report: the packaged manifest's problems (at ``manifest.json $…``), then integrity and
    lock problems (at ``package``)."""
    report = ValidationReport(source=str(package))
    try:
        inspected = inspect_package(package)
    except PackageError as exc:
        report.add([Problem("package", exc.message)])
        return report
    if MANIFEST_FILE not in inspected.scan.members:
        report.add([Problem("package", f"{package.name} has no {MANIFEST_FILE}")])
        return report
    manifest_report = _manifest_report(package, inspected, extra_checks)
    report.add(
        [
            Problem(f"manifest.json {p.path}", p.message, p.expected, p.found, p.severity)
            for p in manifest_report.problems
        ]
    )
    report.notes.extend(manifest_report.notes)
    report.add([Problem("package", message) for message in inspected.problems])
    report.add([Problem("package", message, severity="warning") for message in inspected.warnings])
    if inspected.lock is not None and manifest_report.ok:
        manifest = packaged_manifest(inspected.scan.contents.get(MANIFEST_FILE), package.name)
        problems = lock_problems(manifest, inspected.lock, inspected.scan.contents)
        report.add([Problem("package (lock)", message) for message in problems])
    return report
