"""``expert-cli validate``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from expertkit.cli.console import out_console, reports_errors
from expertkit.errors import UsageError
from expertkit.layout import MANIFEST_FILE


def _target(path: Path | None, expert: Path | None, manifest: Path | None) -> Path:
    given = [p for p in (path, expert, manifest) if p is not None]
    if len(given) > 1:
        raise UsageError("give one of PATH, --expert or --manifest")
    if given:
        return given[0]
    return Path(MANIFEST_FILE)


@reports_errors
def validate(
    path: Path | None = typer.Argument(None, help="Expert directory, manifest file or .expert package."),
    expert: Path | None = typer.Option(None, "--expert", help="Expert directory (holding manifest.json)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Manifest file."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable report."),
    model_check: bool = typer.Option(
        True,
        "--model-check/--no-model-check",
        help="Check target modules against a locally available base model.",
    ),
) -> None:
    """Check a manifest and report every problem at once (exit 0 valid, 1 invalid, 2 usage)."""
    from expertkit.manifest.load import manifest_file, no_manifest
    from expertkit.manifest.validate import ExtraCheck, validate_manifest

    target = _target(path, expert, manifest)
    if not manifest_file(target).exists():
        raise no_manifest(target)
    extra: tuple[ExtraCheck, ...] = ()
    if model_check:
        from expertkit.models.targets import check_target_modules

        extra = (check_target_modules,)
    if target.suffix == ".expert" and target.is_file():
        from expertkit.package.package_checks import validate_package

        report = validate_package(target, extra)
    else:
        report, _ = validate_manifest(target, extra)
    if as_json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


def _print_report(report: object) -> None:
    from rich.markup import escape

    from expertkit.manifest.report import ValidationReport

    assert isinstance(report, ValidationReport)
    for problem in report.errors:
        out_console.print(f"[red]error[/]   {escape(problem.render())}", highlight=False)
    for problem in report.warnings:
        out_console.print(f"[yellow]warning[/] {escape(problem.render())}", highlight=False)
    for note in report.notes:
        out_console.print(f"[dim]note    {escape(note)}[/]", highlight=False)
    verdict = "[green]valid[/]" if report.ok else "[red]invalid[/]"
    counts = f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    out_console.print(f"{escape(report.source)}: {verdict} ({counts})", highlight=False)
