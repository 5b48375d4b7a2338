"""``expert-cli spar``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import get_args

import typer
from rich.markup import escape

from expertkit.cli.console import err_console, out_console, reports_errors
from expertkit.set_formats import EvalFormat

PLAIN_EVERY = 10  # answers between progress lines


@reports_errors
def spar(
    expert: str = typer.Option(..., "--expert", help="Expert: directory, name, name@version or package."),
    set_path: Path | None = typer.Option(None, "--set", help="Task set file (default: the manifest's sets)."),
    set_format: str | None = typer.Option(None, "--format", help=f"Set format: {', '.join(get_args(EvalFormat))}."),
    answers: Path | None = typer.Option(None, "--answers", help="tables.json / possible_answer file / database."),
    split: str = typer.Option("train", "--split", help="Training-side items only: an evaluation split is refused."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Try the first N items."),
    sample: int | None = typer.Option(None, "--sample", min=1, help="Try a seeded random sample of N items."),
    out: Path | None = typer.Option(None, "--out", help="JSONL to write (default: <expert>/sparring/<set>.jsonl)."),
    kinds: str = typer.Option("identify,correct,confirm", "--kinds", help="Example kinds to write, comma-separated."),
    with_reason: bool = typer.Option(False, "--with-reason", help="Add the checker's reason to 'It is incorrect'."),
    confirm_per_wrong: float = typer.Option(1.0, "--confirm-per-wrong", min=0.0, help="Confirm examples per mistake."),
    batch: int = typer.Option(8, "--batch", min=1, help="Items decoded together."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 where the CPU has it), bfloat16 or float32."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Turn the expert's own mistakes on training items into training conversations (its wrong answers
    shown with train: false), with a lineage sidecar naming the adapter they came from."""
    from expertkit.workflows.spar import SparRequest, SparringSettings, spar

    settings = SparringSettings(
        kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
        with_reason=with_reason,
        confirm_per_wrong=confirm_per_wrong,
    )
    request = SparRequest(expert, set_path, set_format, answers, split, limit, sample, out, dtype, batch, settings)
    started, seen = time.monotonic(), [0]

    def on_item(_: object) -> None:
        seen[0] += 1
        if seen[0] % PLAIN_EVERY == 0:
            err_console.print(f"spar: {seen[0]} answers, {time.monotonic() - started:.0f} s", highlight=False)

    result = spar(request, on_item=on_item)
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return
    written = ", ".join(f"{n} {kind}" for kind, n in result.written.items()) or "nothing"
    out_console.print(
        f"{result.wrong} of {result.tried} answers wrong → {written} → {escape(str(result.out))}\n"
        f"lineage: {escape(str(result.lineage))}"
    )
    for reason, count in list(result.reasons.items())[:5]:
        out_console.print(f"  {count:5d} × {escape(reason)}")
