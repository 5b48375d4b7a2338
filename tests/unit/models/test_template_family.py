"""``base_models[].prompt_template`` names the family of the model's own chat template and is checked
against it; it never replaces it, and an unknown value is refused by the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertkit.manifest.validate import validate_manifest
from expertkit.models.targets import check_target_modules
from unit.train.helpers import write_tiny_expert


def report_for(tmp_path: Path, model_dir: Path, template: str | None):
    expert = write_tiny_expert(tmp_path / "e", [model_dir])
    manifest = json.loads((expert / "manifest.json").read_text())
    manifest["base_models"][0]["prompt_template"] = template
    (expert / "manifest.json").write_text(json.dumps(manifest))
    report, _ = validate_manifest(expert, (check_target_modules,))
    return [p for p in report.errors if "prompt_template" in p.path]


def test_the_models_own_family_is_accepted(tmp_path: Path, tiny_llama_dir: Path) -> None:
    assert report_for(tmp_path, tiny_llama_dir, "chatml") == []


def test_another_family_is_an_error_naming_the_models_own(tmp_path: Path, tiny_llama_dir: Path) -> None:
    (problem,) = report_for(tmp_path, tiny_llama_dir, "llama3")
    assert problem.path == "$.base_models[0].prompt_template"
    assert "own chat template is chatml, not 'llama3'" in problem.message
    assert "always renders with the model's own template" in problem.message


def test_an_unknown_family_is_refused_by_the_schema(tmp_path: Path, tiny_llama_dir: Path) -> None:
    (problem,) = report_for(tmp_path, tiny_llama_dir, "alpaca-v2")
    assert problem.path == "$.base_models[0].prompt_template"


@pytest.mark.parametrize("template", ["chatml", "qwen3"])
def test_qwen3_is_chatml_with_thinking(tmp_path: Path, tiny_qwen3_dir: Path, template: str) -> None:
    assert report_for(tmp_path, tiny_qwen3_dir, template) == []
