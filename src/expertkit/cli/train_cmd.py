"""``expert-cli train`` and ``expert-cli estimate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from expertkit.cli.console import err_console, out_console, reports_errors

if TYPE_CHECKING:
    from expertkit.train.job import TrainResult

MANIFEST = typer.Option(
    Path(),
    "--expert",
    "--manifest",
    help="Expert directory (holding manifest.json) or manifest file. --manifest is its old name (until 0.3).",
)
MODEL = typer.Option(None, "--model", help="Base model of a multi-model manifest (one model: picked for you).")


def _print_start(job: Any, trainer: Any) -> None:
    plan = job.plan
    what = "full fine-tune" if plan.full_finetune else f"{job.entry.adapters[0].type} adapter"
    err_console.print(
        f"[bold]{escape(job.loaded.manifest.name)}[/] on {escape(job.entry.name)}: {what}, "
        f"{job.trainable.trainable:,} trainable of {job.trainable.total:,} parameters "
        f"({job.trainable.trainable_share:.2%})"
    )
    err_console.print(f"  {plan.precision.reason}; {escape(trainer.optimizer_description)}")
    shape = job.shape
    err_console.print(
        f"  {job.total_steps} steps, eval + checkpoint every {job.eval_steps} "
        f"({shape.epochs(job.total_steps):.1f} epochs of {shape.rows:,} rows, {shape.rows_per_update} per step); "
        f"weights → {escape(str(job.weights_dir))}"
    )
    advice = shape.advice()
    if advice is not None:
        err_console.print(f"[yellow]note:[/] {escape(advice)}")
    if job.resume_from is not None:
        err_console.print(f"  resuming from {escape(job.resume_from.name)}")


def summary_table(result: TrainResult) -> Table:
    m = result.metrics
    table = Table(title="training summary", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    best = f"{m.best_eval_loss:.4f} (step {m.best_step})" if m.best_eval_loss is not None else "-"
    rows = [
        ("steps / epochs", f"{m.steps} / {m.epochs}"),
        ("final train loss", f"{m.final_train_loss:.4f}" if m.final_train_loss is not None else "-"),
        ("best eval loss", best),
        ("chosen checkpoint", f"{m.checkpoint}: {m.reason}"),
        ("tokens seen, tokens/s", f"{m.tokens_seen:,}, {m.tokens_per_s or 0.0:.1f}" if m.tokens_seen else "-"),
        ("wall time", f"{m.wall_time_s or 0.0:.1f} s"),
        ("peak memory (RSS)", f"{m.peak_rss_mib or 0.0:.0f} MiB"),
        ("weights", str(result.weights_dir)),
    ]
    for what, value in rows:
        table.add_row(what, escape(value))
    return table


@reports_errors
def train(
    manifest: Path = MANIFEST,
    model: str | None = MODEL,
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after N optimizer steps."),
    eval_steps: int | None = typer.Option(
        None,
        "--eval-steps",
        min=1,
        help="Evaluate and checkpoint every N steps (default: the manifest's, else 2 to 10 times a run).",
    ),
    eval_samples: int = typer.Option(
        2,
        "--eval-samples",
        min=0,
        max=16,
        help="Greedy generations from the eval split at each evaluation, written to events.jsonl (0: none).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print training_meta.json instead of the table."),
) -> None:
    """Train the expert's adapter from its manifest; weights go to weights/<model>/ beside it.

    A manifest with training.phases trains them in order, each from the last one's adapter, and runs
    the evaluation gate after each phase (stopping on a failure); --max-steps caps every phase."""
    from expertkit.train.job import TrainRequest
    from expertkit.workflows.curriculum import train_with_gates

    request = TrainRequest(
        manifest, model, resume, max_steps, progress=not as_json, eval_steps=eval_steps, eval_samples=eval_samples
    )
    outcome = train_with_gates(request, on_start=None if as_json else _print_start)
    result = outcome.final
    if as_json:
        final = result.meta.to_json() if result and result.meta else None
        phases = [p.to_json() for p in outcome.phases]
        body = {"phases": phases, "evaluations": outcome.evaluations, "final": final} if phases else final
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return
    if outcome.phases:
        out_console.print(phases_table(outcome))
    if result is None:
        out_console.print("every phase was already trained (nothing to resume)")
        return
    out_console.print(summary_table(result))
    if result.curve is not None:
        out_console.print(f"loss curve: {escape(str(result.curve))}")


def phases_table(outcome: Any) -> Table:
    table = Table("phase", "steps", "tokens", "best eval loss", "wall s", "gate", title="curriculum")
    for phase in outcome.phases:
        row = phase.record()
        loss = row.best_eval_loss
        gate = "-" if not phase.phase.gate else ("passed" if row.gate.passed else "FAILED")
        table.add_row(
            escape(f"{row.index + 1}. {row.name}"),
            str(row.steps),
            f"{row.tokens_seen or 0:,}",
            "-" if loss is None else f"{loss:.4f}",
            f"{row.wall_time_s or 0:.0f}",
            gate,
        )
    return table


@reports_errors
def estimate(
    manifest: Path = MANIFEST,
    model: str | None = MODEL,
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Rows per step (default: manifest)."),
    max_seq_length: int | None = typer.Option(None, "--max-seq-length", min=16, help="Row length (default: manifest)."),
    base: str | None = typer.Option(
        None, "--base", help="Estimate any shape on this model instead of an expert (the options below)."
    ),
    adapter: str = typer.Option("lora", "--adapter", help="With --base: lora, dora, ia3, lokr or full."),
    rank: int = typer.Option(16, "--rank", min=1, help="With --base: adapter rank."),
    targets: str = typer.Option(
        "q_proj,k_proj,v_proj,o_proj", "--targets", help="With --base: modules, comma-separated."
    ),
    precision: str = typer.Option("bf16", "--precision", help="With --base: bf16 or fp32."),
    quantization: str = typer.Option("none", "--quantization", help="With --base: none, int8 or int4 (QLoRA)."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="With --base: adamw, paged_adamw_8bit or muon."),
    checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="With --base: checkpoint activations."),
    gpu: str | None = typer.Option(None, "--gpu", help="With --base: check against a GPU (rtx3090 … h200); else RAM."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Expected peak training memory, and how far it was from measured peaks of runs of the same shape."""
    from expertkit.train.estimate_report import estimate_expert

    if base is None:
        report = estimate_expert(manifest, model, batch_size, max_seq_length)
    else:
        report = _estimate_base(base, adapter, rank, targets, batch_size, max_seq_length, precision, quantization,
                                optimizer, checkpointing, gpu)  # fmt: skip
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    est = report.estimate
    table = Table(title=f"peak memory estimate ({report.device}, batch {report.batch_size} × {report.seq_length})")
    table.add_column("component")
    table.add_column("MiB", justify="right")
    for name, mib in est.components.items():
        table.add_row(name, f"{mib:,.0f}")
    table.add_row("[bold]total[/]", f"[bold]{est.total:,.0f}[/]")
    out_console.print(table)
    state = "on" if est.gradient_checkpointing else "off"
    out_console.print(
        f"activations: {est.activations_without_checkpointing:,.0f} MiB without gradient checkpointing, "
        f"{est.activations_with_checkpointing:,.0f} MiB with it (now {state})"
    )
    if report.measured_mib is not None and report.error is not None:
        out_console.print(
            f"last run measured {report.measured_mib:,.0f} MiB peak: estimate off by {report.error:+.1%} "
            f"({escape(str(report.measured_source))}; {len(report.measured)} run(s) of this shape on record)"
        )
    else:
        out_console.print("no finished run with these settings to compare against (train first)")
    if report.fits and report.available_mib:
        out_console.print(f"fits: {est.total:,.0f} of {report.available_mib:,.0f} MiB on this {report.device}")
    if (advice := report.advice()) is not None:
        err_console.print(f"[yellow]warning:[/] these settings do not fit: {escape(advice)}")


def _estimate_base(
    base: str,
    adapter: str,
    rank: int,
    targets: str,
    batch_size: int | None,
    max_seq_length: int | None,
    precision: str,
    quantization: str,
    optimizer: str,
    checkpointing: bool,
    gpu: str | None,
) -> Any:
    from pydantic import ValidationError

    from expertkit.errors import UsageError
    from expertkit.train.estimate_report import GPU_PRESETS, ShapeRequest, estimate_shape

    if gpu is not None and gpu not in GPU_PRESETS:
        raise UsageError(f"--gpu {gpu}: not a preset", f"one of: {', '.join(GPU_PRESETS)}")
    values = {
        "model": base, "adapter": adapter, "rank": rank, "targets": [t for t in targets.split(",") if t],
        "precision": precision, "quantization": quantization, "optimizer": optimizer,
        "gradient_checkpointing": checkpointing, "device": "cuda" if gpu else "cpu",
    }  # fmt: skip
    values.update({k: v for k, v in (("batch_size", batch_size), ("seq_length", max_seq_length)) if v})
    try:
        request = ShapeRequest.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"--{first['loc'][0]}: {first['msg']}", "see expert-cli estimate --help") from exc
    return estimate_shape(request, GPU_PRESETS[gpu][1] if gpu else None)
