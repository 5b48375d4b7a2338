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


def test_defaults_live_in_the_typed_model_and_are_what_training_and_decoding_use() -> None:
    """One source for a default: the schema shows it, and an empty config resolves to it."""
    from expertkit.manifest.model import BaseModelEntry
    from expertkit.manifest.schema import generate_schema
    from expertkit.manifest.sections import DecodingConfig, TrainingConfig
    from expertkit.runtime.settings import resolve_settings
    from expertkit.train.plan import resolve_plan

    entry = BaseModelEntry(name="m", adapters=[{"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj"]}])
    plan = resolve_plan(TrainingConfig(), entry)
    for name in ("epochs", "batch_size", "gradient_accumulation_steps", "scheduler", "warmup_ratio", "weight_decay"):
        assert getattr(plan, name) == TrainingConfig.default_of(name), name
    assert (plan.max_grad_norm, plan.logging_steps, plan.seed) == (1.0, 10, 42)
    settings = resolve_settings(None, DecodingConfig())
    for name in ("temperature", "top_p", "top_k", "max_tokens", "repetition_penalty"):
        assert getattr(settings, name) == DecodingConfig.default_of(name) and settings.sources[name] == "default"
    schema = json.dumps(generate_schema())
    assert '"default": 1024' in schema and '"default": "cosine"' in schema and '"default": 256' in schema
