"""``expert-cli init``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from expertkit.cli.console import out_console, reports_errors


@reports_errors
def init(
    name: Path = typer.Argument(..., help="Directory to create; its last part is the expert's name."),
    task: str = typer.Option("generic", "--task", help="sql, json, cypher, typescript or generic."),
    base_model: str = typer.Option("SmolLM2-135M-Instruct", "--base-model", help="Base model the expert adapts."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing directory."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Your data file (messages JSONL, Alpaca or ShareGPT JSON, prompt,completion CSV): copied in and used.",
    ),
) -> None:
    """Scaffold a new expert (manifest, README, LICENSE, sample data, grammar)."""
    from expertkit.manifest.scaffold import scaffold_expert

    directory = scaffold_expert(name, task, base_model=base_model, force=force, data=data)
    from expertkit.manifest.scaffold import next_steps

    what = f"your data ({escape(data.name)})" if data is not None else "sample data"
    out_console.print(f"created {escape(str(directory))} ({task}) with {what}; next:")
    for command in next_steps(directory):
        out_console.print(f"  {escape(command)}", soft_wrap=True)
