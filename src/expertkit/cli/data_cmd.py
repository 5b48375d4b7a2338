"""``expert-cli data prepare | inspect | generate``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.markup import escape

from expertkit.cli.console import err_console, fail, out_console, reports_errors

PROGRESS_EVERY = 10  # tries between progress lines of data generate

data_app = typer.Typer(
    help="Training data: prepare (cache + lineage sidecar), inspect, generate.", no_args_is_help=True
)

EXPERT = typer.Option(
    Path(),
    "--expert",
    "--manifest",
    help="Expert directory (holding manifest.json) or manifest file. --manifest is its old name (until 0.3).",
)
MODEL = typer.Option(None, "--model", help="Base model of a multi-model manifest.")


@data_app.command("prepare")
@reports_errors
def prepare(
    expert: Path = EXPERT,
    model: str | None = MODEL,
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache matches."),
    as_json: bool = typer.Option(False, "--json", help="Print the lineage sidecar as JSON."),
) -> None:
    """Load, render, pack and validate the data; write the cache and its .meta.json sidecar."""
    from expertkit.data.expert_data import prepare_expert_data, validators_error
    from expertkit.data.summary import summary_view

    prepared, _ = prepare_expert_data(expert, model, force=force, progress=not as_json, enforce=False)
    if as_json:
        print(json.dumps(prepared.meta, indent=2, ensure_ascii=False))
    else:
        out_console.print(summary_view(prepared.meta, str(prepared.directory), prepared.cached))
    if prepared.failed_checks:
        fail(validators_error(prepared.failed_checks))


@data_app.command("inspect")
@reports_errors
def inspect(
    expert: Path = EXPERT,
    model: str | None = MODEL,
    count: int = typer.Option(3, "-n", "--count", min=0, help="How many examples to show."),
) -> None:
    """Show examples with trained tokens highlighted, masking ratio, lengths, packing and validators."""
    from expertkit.data.expert_data import prepare_expert_data, validators_error
    from expertkit.data.summary import example_view, summary_view

    prepared, tokenizer = prepare_expert_data(expert, model, progress=True, enforce=False)
    examples = prepared.load("examples")
    markers = out_console.color_system is None  # piped or NO_COLOR: bracket trained text instead
    for index in range(min(count, len(examples))):
        out_console.print(example_view(examples[index], tokenizer, markers), soft_wrap=False)  # wrap, never crop
    out_console.print(summary_view(prepared.meta, str(prepared.directory), prepared.cached))
    if prepared.failed_checks:
        fail(validators_error(prepared.failed_checks))


@data_app.command("generate")
@reports_errors
def generate(
    config: Path = typer.Option(..., "--config", help="Generator config (JSON): generator, templates, tables, checks."),
    out: Path = typer.Option(..., "--out", help="JSONL to write; its lineage goes beside it (.lineage.json)."),
    count: int | None = typer.Option(None, "--count", min=1, help="Examples to keep (default: the config's)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default: the config's, else 0)."),
    as_json: bool = typer.Option(False, "--json", help="Print the lineage as JSON."),
) -> None:
    """Generate training conversations (templates over value tables; distill from a teacher endpoint;
    base_replay: the base model's own answers to general prompts), each kept only when its checks pass,
    with a lineage sidecar."""
    from expertkit.data.generators import lineage_path, run_generator
    from expertkit.workflows import base_replay, distill  # noqa: F401  (register their generators)

    started = time.monotonic()

    def progress(tried: int, kept: int) -> None:
        if tried and tried % PROGRESS_EVERY == 0:
            elapsed = time.monotonic() - started
            err_console.print(f"generate: {tried} tried, {kept} kept, {elapsed:.0f} s", highlight=False)

    result = run_generator(config, out, count, seed, progress)
    if as_json:
        print(json.dumps(result.lineage, ensure_ascii=False))
        return
    counts = result.lineage["counts"]
    rejected = ", ".join(f"{n} × {name}" for name, n in counts["rejected"].items()) or "none"
    made = counts.get("generated", counts.get("tried"))
    duplicates = f"{counts['duplicates']} duplicates; " if "duplicates" in counts else ""
    out_console.print(
        f"{counts['kept']} kept of {made} ({duplicates}rejected: {escape(rejected)}) → {escape(str(out))}\n"
        f"lineage: {escape(str(lineage_path(out)))}"
    )
