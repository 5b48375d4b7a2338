"""``expert-cli install | list | remove``: the local expert store under $EXPERTKIT_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from expertkit.cli.console import err_console, out_console, reports_errors


@reports_errors
def install(
    package_path: Path = typer.Argument(..., metavar="PACKAGE", help="The .expert file."),
    require_signature: bool = typer.Option(
        False, "--require-signature", help="Refuse a package without a signature from a trusted key."
    ),
    trusted_keys: Path | None = typer.Option(
        None, "--trusted-keys", help="Directory of trusted *.pub keys (default: $EXPERTKIT_HOME/trusted-keys)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a different build of the same version."),
    prepare: bool = typer.Option(
        True,
        "--prepare/--no-prepare",
        help="Build what the first answer needs now: the ONNX graph or the native decoder's library, when the "
        "manifest names that decoder.",
    ),
) -> None:
    """Verify a package and install it into $EXPERTKIT_HOME/experts/<name>/<version>/."""
    from expertkit.workflows.install import install_expert

    result = install_expert(package_path, require_signature, trusted_keys, force, prepare)
    record = result.record
    signer = f", signed by {record.signer}{' (trusted)' if record.trusted else ''}" if record.signer else ", unsigned"
    verb = "installed" if result.written else "already installed"
    out_console.print(f"{verb} {record.name}@{record.version}{signer} → {escape(record.path)}")
    if result.prepared:
        out_console.print(f"prepared: {escape(result.prepared)}")
    if result.note:
        err_console.print(f"[yellow]note:[/] {escape(result.note)}")


def _reverify(trusted_keys: Path | None, as_json: bool) -> None:
    from expertkit.package.reverify import reverify_installed

    results = reverify_installed(trusted_keys)
    if as_json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            mark = "[green]✓[/]" if r.ok else "[red]✗[/]"
            detail = (f"signed by {r.signer}" if r.signer else "integrity") if r.ok else r.problem or ""
            out_console.print(f"{mark} {escape(r.name)}@{escape(r.version)}: {escape(detail)}")
        if not results:
            out_console.print("no experts installed")
    if any(not r.ok for r in results):
        raise typer.Exit(1)


@reports_errors
def list_experts(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    verify: bool = typer.Option(
        False, "--verify", help="Re-check every installed expert now (files, lock, signature vs keys trusted now)."
    ),
    trusted_keys: Path | None = typer.Option(None, "--trusted-keys", help="Trusted *.pub keys (default: the home's)."),
) -> None:
    """Installed experts: name, version, base model, adapter type, signer, install date."""
    from expertkit.package.store import list_installed

    if verify:
        _reverify(trusted_keys, as_json)
        return
    records = list_installed()
    if as_json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return
    table = Table("name", "version", "base model", "adapter", "signer", "installed")
    for r in records:
        signer = f"{r.signer}{' ✓' if r.trusted else ''}" if r.signer else "-"
        table.add_row(escape(r.name), r.version, escape(r.base_model), r.adapter_type, signer, r.installed_at)
    out_console.print(table if records else "no experts installed (expert-cli install PACKAGE)")


@reports_errors
def remove(reference: str = typer.Argument(..., metavar="NAME[@VERSION]", help="Expert to remove.")) -> None:
    """Remove one installed version, or every version of an expert."""
    from expertkit.package.store import remove_installed

    removed = remove_installed(reference)
    for record in removed:
        out_console.print(f"removed {record.name}@{record.version}")
