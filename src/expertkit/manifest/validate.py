"""``validate``: every problem in a manifest at once, never an exception for bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from expertkit.errors import ManifestError
from expertkit.manifest.checks import CheckContext, semantic_problems
from expertkit.manifest.load import (
    LoadedManifest,
    manifest_file,
    parse_manifest,
    read_manifest_json,
    structural_problems,
)
from expertkit.manifest.model import ManifestV2
from expertkit.manifest.report import Problem, ValidationReport

# Extra checks that need more than the manifest (the base model's modules): given the loaded
# manifest, return problems and notes. Supplied by expertkit.models so manifest never imports it.
ExtraCheck = Callable[[LoadedManifest, CheckContext], tuple[list[Problem], list[str]]]


def validate_manifest(
    target: Path, extra_checks: tuple[ExtraCheck, ...] = (), *, packaged: bool = False
) -> tuple[ValidationReport, ManifestV2 | None]:
    """Validate a manifest file or expert directory (``packaged``: one unpacked from a package).

    Returns:
        The report (errors and warnings with JSON paths) and, when the manifest is structurally
        valid, the typed manifest in the v2.0 shape.
    """
    path = manifest_file(target)
    report = ValidationReport(source=str(path))
    data, problems = read_manifest_json(path)
    report.add(problems or structural_problems(data))
    if not report.ok:
        return report, None
    try:
        manifest, version = parse_manifest(data)
    except ManifestError as exc:
        report.add([Problem("$", exc.message)])
        return report, None
    loaded = LoadedManifest(manifest=manifest, path=path.resolve(), source_version=version)
    return check_loaded(loaded, extra_checks, packaged=packaged, report=report), manifest


def check_loaded(
    loaded: LoadedManifest,
    extra_checks: tuple[ExtraCheck, ...] = (),
    *,
    packaged: bool = False,
    report: ValidationReport | None = None,
) -> ValidationReport:
    """The semantic checks (and ``extra_checks``) on a manifest already loaded: what ``validate`` adds
    to structure, without reading the file again."""
    report = report or ValidationReport(source=str(loaded.path))
    ctx = check_context(loaded, packaged)
    report.add(semantic_problems(loaded.manifest, ctx))
    for check in extra_checks:
        problems, notes = check(loaded, ctx)
        report.add(problems)
        report.notes.extend(notes)
    report.problems.sort(key=lambda p: (p.severity != "error", p.path))
    return report


def check_context(loaded: LoadedManifest, packaged: bool = False) -> CheckContext:
    return CheckContext(root=loaded.path.parent, source_version=loaded.source_version, packaged=packaged)
