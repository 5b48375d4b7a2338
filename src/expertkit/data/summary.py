"""Rich views of prepared data: summary tables, the length histogram, examples with trained tokens lit.

In the example view trained tokens are bold green on a dark background, tokens with a loss weight
above 1 are magenta, and masked tokens are dim, so a wrong mask is visible at a glance.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from expertkit.data.render import IGNORE_INDEX

BAR_WIDTH = 40


def summary_view(meta: dict[str, Any], directory: str, cached: bool) -> RenderableType:
    return Group(
        Text(f"prepared data: {directory}" + (" (cached)" if cached else ""), style="bold"),
        _sources_table(meta),
        _steps_table(meta),
        _tokens_table(meta),
        histogram_view(meta["histogram"]),
        validators_view(meta["validators"]),
    )


def _sources_table(meta: dict[str, Any]) -> Table:
    table = Table(title="sources and mix", title_justify="left")
    for column in ("source", "path", "records", "kept", "weight", "train examples", "proportion"):
        table.add_column(column, overflow="fold")  # names and paths fold onto more lines, never cut
    mix = meta["steps"]["mix"]
    for source in meta["sources"]:
        name = source["name"]
        table.add_row(
            name, source["path"], str(source["records"]), str(source["kept"]), f"{source['weight']:g}",
            str(mix["counts"].get(name, 0)), f"{mix['proportions'].get(name, 0):.1%}",
        )  # fmt: skip
    return table


def _steps_table(meta: dict[str, Any]) -> Table:
    steps = meta["steps"]
    table = Table(title="pipeline", title_justify="left", show_header=False)
    bad = steps["bad_records"]
    length = steps["length"]
    rows = [
        ("records read", steps["records_read"]),
        (f"bad records ({bad['policy']})", bad["count"]),
        ("exact duplicates removed", steps["dedup_removed"]),
        ("near duplicates removed", steps["near_dedup_removed"]),
        ("outside min/max tokens", length["too_short"] + length["too_long"]),
        ("over max_seq_length: dropped", length["overflow"]),
        ("over max_seq_length: prompt truncated", length["truncated"]),
        ("train / eval examples", f"{steps['split']['train']} / {steps['split']['eval']}"),
    ]
    for label, value in rows:
        table.add_row(label, str(value))
    return table


def _tokens_table(meta: dict[str, Any]) -> Table:
    table = Table(title="tokens and packing", title_justify="left")
    for column in ("split", "examples", "tokens", "trained", "masking ratio", "p50", "p95", "max", "rows", "packing"):
        table.add_column(column, justify="right")
    packed = meta.get("parameters", {}).get("packing", True)  # off: one example per row, padded per batch
    for split in ("train", "eval"):
        stats, packing = meta["tokens"][split], meta["packing"][split]
        if not stats["examples"]:
            continue
        table.add_row(
            split, str(stats["examples"]), str(stats["tokens"]), str(stats["trained_tokens"]),
            f"{stats['supervised_ratio']:.1%} trained", str(stats["p50"]), str(stats["p95"]), str(stats["max"]),
            str(packing["rows"]), f"{packing['efficiency']:.1%}" if packed else "off",
        )  # fmt: skip
    return table


def histogram_view(bins: list[dict[str, int]]) -> RenderableType:
    peak = max((b["count"] for b in bins), default=0) or 1
    table = Table(title="example length (tokens)", title_justify="left", show_header=False, box=None)
    for b in bins:
        bar = "█" * round(BAR_WIDTH * b["count"] / peak)
        table.add_row(f"{b['low']:>6}–{b['high']:<6}", Text(bar, style="cyan"), str(b["count"]))
    return table


def validators_view(checks: Iterable[dict[str, Any]]) -> RenderableType:
    table = Table(title="validators", title_justify="left")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for check in checks:
        status = (
            "[green]pass[/]" if check["passed"] else "[yellow]overridden[/]" if check["overridden"] else "[red]FAIL[/]"
        )
        detail = "\n".join([check["detail"], *check["failures"]])
        table.add_row(check["name"], status, Text(detail))
    return table


TRAINED_MARKS = ("[[", "]]")  # shown around trained text when there is no colour (piped, NO_COLOR)
WEIGHTED_MARKS = ("[[+", "]]")


def example_view(example: dict[str, Any], tokenizer: Any, markers: bool = False) -> RenderableType:
    """One rendered example with trained tokens highlighted (and bracketed with ``markers``, for output
    without colour, so what is trained stays visible in a log or a pipe)."""
    text = Text()
    runs: list[tuple[str, list[int]]] = []
    for token, label, weight in zip(example["input_ids"], example["labels"], example["weights"], strict=True):
        style = "dim" if label == IGNORE_INDEX else "bold magenta" if weight > 1 else "bold green on grey15"
        if runs and runs[-1][0] == style:
            runs[-1][1].append(token)
        else:
            runs.append((style, [token]))
    for style, tokens in runs:
        piece = tokenizer.decode(tokens)
        if markers and style != "dim":
            opening, closing = WEIGHTED_MARKS if "magenta" in style else TRAINED_MARKS
            piece = f"{opening}{piece}{closing}"
        text.append(piece, style=style)
    trained = sum(label != IGNORE_INDEX for label in example["labels"])
    title = f"{example['location']} · {len(example['labels'])} tokens · {trained} trained"
    conversation = example.get("conversation")
    messages = (json.loads(conversation) if isinstance(conversation, str) else conversation or {}).get("messages", [])
    shown = sum(1 for m in messages if m.get("train") is False)
    if shown:
        title += f" · {shown} turn{'s' if shown > 1 else ''} train: false"
    if markers:
        title += " · trained text in [[ ]]"
    return Panel(text, title=title, title_align="left")
