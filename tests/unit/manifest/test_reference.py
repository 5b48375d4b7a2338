"""docs/manifest.md is generated from the typed model and current; ``manifest explain`` prints the same rows."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.manifest.reference import DOC_FILE, explain, field_reference, render_markdown

_register()
ROOT = Path(__file__).resolve().parents[3]


def test_the_committed_reference_is_current() -> None:
    committed = (ROOT / DOC_FILE).read_text(encoding="utf-8")
    assert committed == render_markdown(), "stale: run .venv/bin/python scripts/generate_schema.py"


def test_every_field_has_a_type_a_meaning_and_defaults_from_the_model() -> None:
    docs = {d.path: d for d in field_reference()}
    assert all(d.type for d in docs.values())
    assert [path for path, d in docs.items() if not d.description] == []
    assert docs["training.dataset.checks.min_supervised_ratio"].default == "0.01"
    assert "chatml" in docs["base_models[].prompt_template"].allowed
    assert docs["routing.patterns"].type == "list of string"


def test_explain_prints_one_path_and_refuses_unknown_ones() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["manifest", "explain", "training.dataset.checks", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["path"] for r in rows] == [d.path for d in explain("training.dataset.checks")]
    assert rows[1]["path"] == "training.dataset.checks.min_supervised_ratio" and "mask" in rows[1]["description"]
    assert explain("base_models.adapters.r")[0].path == "base_models[].adapters[].r"
    unknown = runner.invoke(app, ["manifest", "explain", "training.nope"])
    assert unknown.exit_code == 2 and "no manifest field 'training.nope'" in unknown.stderr
