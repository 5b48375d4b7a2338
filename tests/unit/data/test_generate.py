"""``expert-cli data generate``: the templates generator over value tables (inline and SQLite), style
variants, think omission, contrastive episodes with the wrong answer untrained, duplicates and checks
counted in the lineage, determinism by seed, and configs that are refused by name."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.data.generators import lineage_path, run_generator
from expertkit.errors import DataError

from .helpers import write_expert

_register()


def database(tmp_path: Path) -> Path:
    path = tmp_path / "geo.sqlite"
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE state (state_name TEXT, capital TEXT)")
        db.executemany(
            "INSERT INTO state VALUES (?, ?)", [("texas", "austin"), ("ohio", "columbus"), ("utah", "salt lake city")]
        )
    return path


def config(tmp_path: Path, **changes: Any) -> Path:
    body = {
        "generator": "templates",
        "count": 12,
        "seed": 3,
        "constants": {"system": "You write SQL."},
        "tables": {
            "state": {"sqlite": "geo.sqlite", "query": "SELECT state_name AS state FROM state"},
            "extra": {"rows": [{"state": "atlantis"}]},
        },
        "templates": [
            {"table": "state", "messages": [
                {"role": "system", "content": "{{ system }}"},
                {"role": "user", "content": ["capital of {{ state }}?", "What is the capital of {{ state }}?"]},
                {"role": "assistant", "content": "SELECT capital FROM state WHERE state_name = '{{ state }}'",
                 "think": "capital is a column of state"}],
             "contrastive": {"wrong": "SELECT capital FROM city", "correction": "Wrong table. Again."}},
            {"table": "extra", "messages": [
                {"role": "user", "content": "capital of {{ state }}?"},
                {"role": "assistant", "content": "SELECT capital FROM state WHERE state_name = '{{ state }}'"}]},
        ],
        "think_omission": 0.5,
        "contrastive_ratio": 0.5,
        "checks": [{"type": "sql_returns_rows", "sqlite": "geo.sqlite"}],
    }  # fmt: skip
    body.update(changes)
    database(tmp_path)
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(body))
    return path


def test_templates_generate_checked_varied_conversations_with_lineage(tmp_path: Path) -> None:
    heard: list[tuple[int, int]] = []
    result = run_generator(config(tmp_path), tmp_path / "out" / "gen.jsonl", progress=lambda *c: heard.append(c))
    rows = [json.loads(line) for line in (tmp_path / "out" / "gen.jsonl").read_text().splitlines()]
    assert rows == result.records and 0 < len(rows) <= 12
    # progress hears (tried, kept) before each try: every try, and the kept count never ahead of the rows
    assert [tried for tried, _ in heard] == list(range(result.lineage["counts"]["generated"]))
    assert heard[0] == (0, 0) and all(0 <= kept <= len(rows) for _, kept in heard)
    assert all(r["template"] == 0 for r in rows)  # atlantis has no row in the database: every one rejected
    users = {r["messages"][1]["content"] for r in rows}
    assert any(u.startswith("capital of") for u in users) and any(u.startswith("What is") for u in users)
    finals = [r["messages"][-1] for r in rows]
    assert all(f["role"] == "assistant" and "train" not in f for f in finals)
    thinking = [f for f in finals if "think" in f]
    assert 0 < len(thinking) < len(rows)  # think omission at 0.5
    contrastive = [r for r in rows if len(r["messages"]) == 5]
    assert contrastive and all(r["messages"][2] == {"role": "assistant", "content": "SELECT capital FROM city",
                                                    "train": False} for r in contrastive)  # fmt: skip
    lineage = json.loads(lineage_path(tmp_path / "out" / "gen.jsonl").read_text())
    counts = lineage["counts"]
    assert lineage["generator"] == "templates" and lineage["version"] == 1 and lineage["config_sha256"]
    assert counts["kept"] == len(rows) and counts["rejected"]["sql_returns_rows"] >= 1
    assert counts["generated"] == counts["kept"] + counts["duplicates"] + counts["rejected"]["sql_returns_rows"]
    template_1 = lineage["per_template"]["1"]  # one row: rejected once, then only duplicates of it
    assert template_1["rejected:sql_returns_rows"] == 1 and set(template_1) == {
        "rejected:sql_returns_rows",
        "duplicate",
    }
    assert lineage["parameters"]["table_rows"] == {"state": 3, "extra": 1}
    again = run_generator(config(tmp_path), tmp_path / "again.jsonl")
    assert again.records == result.records  # the same seed, the same data


def test_the_output_is_a_data_source_whose_wrong_answers_are_not_trained(tmp_path: Path, tiny_llama_dir: Path) -> None:
    expert = write_expert(tmp_path / "e", tiny_llama_dir, {"path": "gen.jsonl", "split": {"eval_size": 2},
                                                           "checks": {"min_supervised_ratio": 0.05}})  # fmt: skip
    result = CliRunner().invoke(app, ["data", "generate", "--config", str(config(tmp_path, count=20)), "--out",
                                      str(expert / "gen.jsonl")], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0 and "kept of" in result.output and "sql_returns_rows" in result.output
    prepared = CliRunner().invoke(app, ["data", "prepare", "--expert", str(expert)], catch_exceptions=False)
    assert prepared.exit_code == 0, prepared.output  # span_count and trained_text pass with train: false turns


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"generator": "dream"}, "$.generator: unknown generator 'dream'"),
        ({"checks": [{"type": "vibes"}]}, "$.checks[0].type: unknown check 'vibes'"),
        ({"templates": []}, "$.templates: a list of templates is needed"),
        ({"tables": {"state": {"sqlite": "geo.sqlite", "query": "DELETE FROM state"}}}, "$.tables.state.query: one SELECT"),
        ({"tables": {"state": {"sqlite": "missing.sqlite", "query": "SELECT 1"}}}, "no such SQLite database"),
        ({"templates": [{"messages": [{"role": "user", "content": "{{ nope }}"}, {"role": "assistant", "content": "x"}]}]},
         "$.templates[0].messages[0].content: 'nope' is undefined"),
        ({"templates": [{"messages": [{"role": "user", "content": "{{ ''.__class__.__mro__ }}"},
                                      {"role": "assistant", "content": "x"}]}]}, "$.templates[0].messages[0].content"),
        ({"templates": [{"messages": [{"role": "oracle", "content": "x"}]}]}, "$.templates[0].messages[0]: role one of"),
        ({"templates": [{"messages": [{"role": "user", "content": "x"}]}]}, "conversation has no assistant turn"),
    ],
)  # fmt: skip
def test_bad_configs_are_named(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError) as caught:
        run_generator(config(tmp_path, **change), tmp_path / "out.jsonl")
    assert message in caught.value.message
    assert not (tmp_path / "out.jsonl").exists()
