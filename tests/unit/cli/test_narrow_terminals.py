"""80-column terminals and pipes: the model name you must type is never cut, trained text stays
visible without colour (bracketed) and wraps instead of being cropped, and histogram bins run forwards."""

from __future__ import annotations

import itertools

from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.data.stats import length_histogram
from unit.data.helpers import qa_record, write_expert, write_jsonl

_register()
runner = CliRunner()


def test_models_list_keeps_the_whole_name_at_80_columns() -> None:
    result = runner.invoke(app, ["models", "list"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "SmolLM2-135M-Instruct" in result.output


def test_piped_inspect_brackets_trained_text_and_wraps(tmp_path, tiny_llama_dir) -> None:
    dataset = {"path": "data.jsonl", "split": {"eval_size": 2}}
    expert = write_expert(tmp_path / "e", tiny_llama_dir, dataset)
    long_question = "Please count the singers whose names are long and whose ages are above fifty-six years"
    records = [
        {"messages": [{"role": "user", "content": long_question}, {"role": "assistant", "content": f"SELECT {n};"}]}
        for n in range(6)
    ]
    write_jsonl(expert / "data.jsonl", [*records, qa_record(1)])
    result = runner.invoke(app, ["data", "inspect", "--expert", str(expert), "-n", "1"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "[[SELECT 0;" in result.output and "trained text in [[ ]]" in result.output
    flat = " ".join(result.output.replace("│", " ").split())
    assert "whose ages are above fifty-six years" in flat  # wrapped onto the next line, not cropped
    panel = [line for line in result.output.splitlines() if line.startswith(("╭", "│", "╰"))]
    assert panel and max(len(line) for line in panel) <= 80


def test_histogram_bins_run_forwards_and_cover_every_length() -> None:
    for lengths in ([73, 74], [58, 61, 63] * 4, list(range(10, 500, 7)), [5]):
        bins = length_histogram(lengths)
        assert all(b["low"] <= b["high"] for b in bins)
        assert all(b["high"] < nxt["low"] for b, nxt in itertools.pairwise(bins))
        assert sum(b["count"] for b in bins) == len(lengths)
        assert bins[0]["low"] == min(lengths) and bins[-1]["high"] == max(lengths)
