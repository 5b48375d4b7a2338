"""``expert-cli export vllm | merged``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from expertkit.cli.console import err_console, out_console, reports_errors

export_app = typer.Typer(
    help="Serve beyond one machine: vLLM multi-LoRA, or a merged standalone model.", no_args_is_help=True
)


@export_app.command("vllm")
@reports_errors
def vllm(
    experts: list[str] = typer.Argument(None, help="Experts (names, name@version, paths)."),
    all_installed: bool = typer.Option(False, "--all-installed", help="Every installed expert (newest versions)."),
    out: Path = typer.Option(Path("vllm-export"), "--out", help="Directory for vllm-serve.sh and lora-modules.json."),
    port: int = typer.Option(8000, "--port", help="Port the generated vLLM command serves on."),
) -> None:
    """Write the vLLM command (--enable-lora --lora-modules ...) that serves these experts."""
    from expertkit.package.store import list_installed
    from expertkit.serve.export import export_vllm

    references = list(experts or [])
    if all_installed:
        references += sorted({r.name for r in list_installed()})
    result = export_vllm(references, out, port)
    for name, why in result.skipped.items():
        err_console.print(f"[yellow]skipped {escape(name)}:[/] {escape(why)}")
    out_console.print(f"wrote {escape(str(result.script))} ({len(result.modules)} LoRA modules)")


@export_app.command("merged")
@reports_errors
def merged(
    expert: str = typer.Argument(..., help="Expert (name, name@version, path)."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged model."),
    force: bool = typer.Option(False, "--force", help="Replace an existing directory."),
) -> None:
    """Merge the expert's adapter into its base model and save a standalone safetensors model."""
    from expertkit.serve.export import export_merged

    with err_console.status("merging…"):
        path = export_merged(expert, out, force)
    out_console.print(f"wrote {escape(str(path))}")
