"""``expert-cli eval``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import typer
from rich.markup import escape
from rich.table import Table

from expertkit.cli.console import err_console, out_console, reports_errors
from expertkit.errors import UsageError
from expertkit.set_formats import EvalFormat

if TYPE_CHECKING:
    from expertkit.eval.job import EvalResult

PLAIN_EVERY = 5  # answers between progress lines when stderr is not a terminal


@reports_errors
def eval_expert(
    expert: str = typer.Option(..., "--expert", help="Expert: name, name@version, directory or package."),
    set_path: Path | None = typer.Option(None, "--set", help="Evaluation set file (default: the manifest's)."),
    set_format: str | None = typer.Option(None, "--format", help=f"Set format: {', '.join(get_args(EvalFormat))}."),
    answers: Path | None = typer.Option(None, "--answers", help="tables.json / possible_answer file / database."),
    split: str | None = typer.Option(
        None, "--split", help="Only items of this split (GeoQuery 'test'; 'heldout' for BFCL and text2cypher)."
    ),
    baseline: str = typer.Option("base", "--baseline", help="'base', another expert NAME@VERSION, or 'none'."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N items."),
    sample: int | None = typer.Option(None, "--sample", min=1, help="Evaluate a seeded random sample of N items."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 where the CPU has it), bfloat16 or float32."),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="Weight-only quantisation: none, int8 or int4; results go to eval/<set>.quantize-<q>.json.",
    ),
    decoder: str | None = typer.Option(
        None,
        "--decoder",
        help="What runs decode steps: lean (PyTorch), onnx (ONNX Runtime, built once per expert) or native "
        "(expertkit's C decoder over 4/8-bit blocks; int4 unless --quantize says int8); default: the manifest's "
        "runtime.decoder, else lean.",
    ),
    gate: bool = typer.Option(False, "--gate", help="Exit 1 when the manifest's evaluation.thresholds are missed."),
    plot: Path | None = typer.Option(None, "--plot", help="Save a bar chart per bucket (PNG) here."),
    base_only: bool = typer.Option(
        False, "--base-only", help="Only the base model, under the expert's contract (works before training)."
    ),
    batch: int = typer.Option(8, "--batch", min=1, help="Items decoded together (1: one at a time)."),
    forgetting: bool = typer.Option(
        False, "--forgetting", help="Also measure forgetting against the base on general prompts (KL, match)."
    ),
    forgetting_prompts: Path | None = typer.Option(
        None, "--forgetting-prompts", help="Your own out-of-domain prompts (JSONL of {prompt, bucket})."
    ),
    forgetting_only: bool = typer.Option(False, "--forgetting-only", help="Only forgetting: no task sets."),
    via_tools: str | None = typer.Option(
        None,
        "--via-tools",
        help="Score function calling through the served OpenAI tools API with this tool_choice: auto or required.",
    ),
) -> None:
    """Score an expert on task sets (execution / call accuracy, match, validity) against a baseline.

    Without --set, every set of the manifest's evaluation.sets runs; --json prints one JSON object
    per set, one per line."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from expertkit.eval.job import EvalRequest
    from expertkit.eval.run import run_eval

    request = EvalRequest(
        expert,
        set_path,
        set_format,
        answers,
        split,
        None if baseline == "none" else baseline,
        limit,
        dtype,
        base_only,
        sample,
        batch,
        quantize,
        decoder,
    )
    if via_tools is not None:
        _via_tools(request, via_tools, as_json)
        return
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    plain = not err_console.is_terminal  # piped or logged: plain lines, since a live bar shows only at the end
    counts: dict[str, int] = {}
    started = time.monotonic()

    def on_item(progress: Progress, task: Any, system: str) -> None:
        progress.update(task, advance=1, description=system)
        counts[system] = counts.get(system, 0) + 1
        if plain and counts[system] % PLAIN_EVERY == 0:
            elapsed = time.monotonic() - started
            err_console.print(f"eval {system}: {counts[system]} answers, {elapsed:.0f} s", highlight=False)

    results = []
    forgetting = forgetting or forgetting_only
    if not forgetting_only and (not forgetting or set_path is not None or _has_sets(expert)):
        with Progress(*columns, console=err_console, transient=True, disable=plain) as progress:
            task = progress.add_task("evaluating", total=None)
            results = run_eval(request, on_item=lambda system, r: on_item(progress, task, system))
    failures = []
    for result in results:
        if as_json:
            print(json.dumps(result.to_json(items=False), ensure_ascii=False))
        else:
            _print_result(result)
        if plot is not None and "buckets" in result.body:
            _plot(result.to_json(), plot, len(results) > 1)
        failures += [f"{result.set}: {failure}" for failure in result.gate_failures]
    if forgetting:
        failures += _forgetting(expert, dtype, forgetting_prompts, as_json)
    for failure in failures:
        err_console.print(f"[red]gate:[/] {escape(failure)}")
    if gate and failures:
        raise typer.Exit(1)


def _via_tools(request: Any, choice: str, as_json: bool) -> None:
    """Score through the served tools API and print one row (or JSON object) per set."""
    from expertkit.workflows.tools_eval import eval_via_tools

    if choice not in ("auto", "required"):
        raise UsageError(f"--via-tools {choice!r}", "choose auto (a call or text) or required (always a call)")
    done = [0]

    def on_item(name: str, item: Any) -> None:
        done[0] += 1
        if done[0] % PLAIN_EVERY == 0:
            err_console.print(f"tools {name}: {done[0]} answers", highlight=False)

    for result in eval_via_tools(request, choice, on_item):  # type: ignore[arg-type]
        body = result.to_json()
        if as_json:
            print(json.dumps(body))
            continue
        low, high = body["ci95"]
        parsed = body["calls_parsed_and_declared"]
        shown = "-" if parsed is None else f"{parsed:.1%}"
        out_console.print(
            f"{body['set']} via tools (tool_choice {choice}): call accuracy {body['call_accuracy']:.1%} "
            f"[{low:.1%}, {high:.1%}] on {body['n']} items; {body['called']} called ({shown} parsed, declared), "
            f"{body['no_call']} answered without a call",
            highlight=False,
        )


def _has_sets(expert: str) -> bool:
    from expertkit.package.references import resolve_expert

    evaluation = resolve_expert(expert).loaded.manifest.evaluation
    return bool(evaluation and evaluation.sets)


def _forgetting(expert: str, dtype: str, prompts: Path | None, as_json: bool) -> list[str]:
    """Measure and print forgetting; its gate failures."""
    from expertkit.eval.forgetting import run_forgetting

    err_console.print("forgetting: the base and the expert on general prompts (greedy, no contract)")
    body = run_forgetting(expert, dtype, prompts)
    summary = body["summary"]
    if as_json:
        print(json.dumps({k: body[k] for k in ("expert_system", "prompts", "summary", "gate", "written")}))
    else:
        table = Table(title=f"forgetting against the base model ({summary['n']} prompts)")
        for column in ("bucket", "n", "KL(base ‖ expert)", "95% CI", "answers as the base"):
            table.add_column(column)
        rows = [("all", summary), *summary["buckets"].items()]
        for bucket, row in rows:
            table.add_row(bucket, str(row["n"]), f"{row['kl']:.4f}", " … ".join(f"{v:.4f}" for v in row["kl_ci95"]),
                          f"{row['match']:.1%}")  # fmt: skip
        out_console.print(table)
        out_console.print(f"written: {escape(body['written'])}")
    return list(body["gate"]["failures"])


def _plot(result: dict, plot: Path, several: bool) -> None:
    from expertkit.eval.plot import plot_buckets

    path = plot.with_name(f"{plot.stem}-{result['set']}{plot.suffix}") if several else plot
    err_console.print(f"chart: {escape(str(plot_buckets(result, path)))}")


def _split_buckets(result: dict) -> list[tuple[str, dict]]:
    """Per-bucket rows, when there is more than one bucket (one would repeat the "all" row)."""
    buckets = result.get("buckets", {})
    return list(buckets.items()) if len(buckets) > 1 else []


def _print_result(result: EvalResult) -> None:
    """The table for the result's kind: the base model alone, the expert alone, or the two compared."""
    body, written = result.body, escape(str(result.written))
    if result.kind == "base_only":
        _print_base_table(result.to_json())
    elif result.kind == "expert":
        out_console.print(f"{result.metric}: {result.score:.1%} on {result.n} items; written {written}")
    else:
        table = Table("bucket", "n", "expert", "baseline", title=f"{result.metric} on {result.set}")
        for bucket, row in _split_buckets(body):
            base = row.get("baseline")
            base_text = "-" if base is None else f"{base:.1%}"
            table.add_row(escape(bucket), str(row["n"]), f"{row['expert']:.1%}", base_text)
        table.add_row("all", str(result.n), f"{result.score:.1%}", f"{result.baseline or 0.0:.1%}")
        out_console.print(table)
        low, high = body["ci95"]
        out_console.print(f"delta {result.delta or 0.0:+.1%} (95% CI {low:+.1%} … {high:+.1%}); written {written}")


def _print_base_table(result: dict) -> None:
    summary = result["baseline_summary"]
    table = Table(
        "bucket", "n", "base", title=f"{summary['metric']} on {result['set']} (base model, expert's contract)"
    )
    for bucket, row in _split_buckets(result):
        table.add_row(escape(bucket), str(row["n"]), f"{row['base']:.1%}")
    table.add_row("all", str(result["n"]), f"{result['base']:.1%}")
    out_console.print(table)
    low, high = result["ci95"]
    out_console.print(
        f"validity {summary['validity']:.1%}, stops {summary['stop_rate']:.1%}, 95% CI {low:.1%} … {high:.1%}; "
        f"written {escape(result['written'])}"
    )
