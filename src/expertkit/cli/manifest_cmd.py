"""``expert-cli manifest explain PATH``: the field reference (docs/manifest.md) for one path."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from expertkit.cli.console import out_console, reports_errors

manifest_app = typer.Typer(help="The manifest's fields: explain PATH.", no_args_is_help=True)


@manifest_app.command("explain")
@reports_errors
def explain(
    path: str = typer.Argument(..., help="A field path, e.g. training.dataset.checks or base_models.adapters.r."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """Type, default, allowed values and meaning of a manifest field and the fields below it."""
    from expertkit.manifest.reference import explain as explain_path

    rows = explain_path(path)
    if as_json:
        print(json.dumps([row.to_json() for row in rows], indent=2, ensure_ascii=False))
        return
    table = Table()
    for column in ("field", "type", "default", "allowed", "meaning"):
        table.add_column(column, overflow="fold")  # a path is what you type next: folded, never cut
    for row in rows:
        table.add_row(*(escape(value) for value in (row.path, row.type, row.default, row.allowed, row.description)))
    out_console.print(table, soft_wrap=False)
