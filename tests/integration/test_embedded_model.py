"""Integration tests on the embedded SmolLM2-135M-Instruct (pulled once per test session)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "experts"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "expertkit", *args], capture_output=True, text=True, check=False)


def test_pull_writes_a_safetensors_cache(embedded_model) -> None:
    names = {p.name for p in embedded_model.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".gguf")) for name in names)
    config = json.loads((embedded_model.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert list(embedded_model.path.parent.glob(".*partial")) == []


def test_models_info_prints_the_fingerprint(embedded_model) -> None:
    result = cli("models", "info", "SmolLM2-135M-Instruct", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "LlamaForCausalLM" and info["vocab_size"] == 49152
    assert info["num_parameters"] == 134_515_008
    assert len(info["weights_sha256"]) == 64 and len(info["chat_template_sha256"]) == 64
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(info["linear_modules"])


def test_pull_again_is_a_no_op(embedded_model) -> None:
    before = (embedded_model.path / "model.safetensors").stat().st_mtime_ns
    result = cli("models", "pull", "SmolLM2-135M-Instruct")
    assert result.returncode == 0, result.stderr
    assert (embedded_model.path / "model.safetensors").stat().st_mtime_ns == before


def test_cached_model_generates(embedded_model) -> None:
    from expertkit.models import load_model
    from expertkit.models.generate import generate_reply

    model, tokenizer = load_model(embedded_model)
    reply = generate_reply(model, tokenizer, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in reply


def test_validate_checks_targets_against_the_embedded_model(embedded_model, tmp_path: Path) -> None:
    manifest = json.loads((EXAMPLES / "expert-typescript" / "manifest.json").read_text())
    manifest["base_models"][0]["adapters"][0]["target_modules"] = ["q_proj", "gate_projj"]
    manifest["training"].pop("dataset")
    manifest.pop("readme")
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    result = cli("validate", "--manifest", str(path), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert [(e["path"], e["message"]) for e in report["errors"]] == [
        (
            "$.base_models[0].adapters[0].target_modules[1]",
            "module 'gate_projj' does not exist in SmolLM2-135M-Instruct; did you mean 'gate_proj'?",
        )
    ]


@pytest.mark.parametrize("name", ["expert-json", "expert-neo4j", "expert-sql", "expert-typescript"])
def test_examples_validate_with_the_model_check(embedded_model, name: str) -> None:
    result = cli("validate", str(EXAMPLES / name), "--json")
    assert result.returncode == 0, result.stdout
    assert any("target modules checked" in note for note in json.loads(result.stdout)["notes"])
