"""The data summary tables say what the numbers mean: packing off shows "off", not a low efficiency."""

from __future__ import annotations

from rich.console import Console

from expertkit.data.summary import _tokens_table


def meta(packing: bool) -> dict:
    stats = {"examples": 143, "tokens": 6943, "trained_tokens": 371, "supervised_ratio": 0.053}
    stats |= {"p50": 47, "p95": 57, "max": 64}
    rows = {"rows": 143 if not packing else 7, "efficiency": 0.047 if not packing else 0.969}
    empty = {"examples": 0}
    return {
        "tokens": {"train": stats, "eval": empty},
        "packing": {"train": rows, "eval": rows},
        "parameters": {"packing": packing},
    }


def render(table) -> str:
    console = Console(width=120, record=True)
    console.print(table)
    return console.export_text()


def test_unpacked_rows_show_packing_off() -> None:
    text = render(_tokens_table(meta(packing=False)))
    train = next(line for line in text.splitlines() if line.strip("│ ").startswith("train "))
    assert train.rstrip(" │").endswith("off") and "4.7%" not in text
    assert "96.9%" in render(_tokens_table(meta(packing=True)))
