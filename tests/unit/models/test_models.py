"""Base-model resolution, fingerprints and the target-module check, on tiny local models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from expertkit.errors import ModelNotFoundError
from expertkit.manifest import validate_manifest
from expertkit.models import fingerprint, load_model, resolve_model
from expertkit.models.fingerprint import cached_fingerprint
from expertkit.models.info import list_models
from expertkit.models.targets import check_target_modules
from unit.manifest.helpers import load_valid, mutate, write_manifest


def test_local_directory_resolves(tiny_llama_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llama_dir))
    assert (resolved.kind, resolved.path, resolved.ready) == ("local", tiny_llama_dir.resolve(), True)


def test_relative_directory_resolves_against_base_dir(tiny_llama_dir: Path) -> None:
    resolved = resolve_model(tiny_llama_dir.name, base_dir=tiny_llama_dir.parent)
    assert resolved.path == tiny_llama_dir.resolve()


def test_embedded_model_resolves_without_pulling(expertkit_home: Path) -> None:
    resolved = resolve_model("smollm2-135m-instruct")
    assert resolved.kind == "embedded" and resolved.name == "SmolLM2-135M-Instruct"
    assert resolved.path == expertkit_home / "models" / "smollm2-135m-instruct"
    assert not resolved.ready  # resolving converts nothing; the first load prepares it (test_auto_prepare)


def test_unknown_hub_id_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve_model("Qwen/Qwen3-0.6B")
    message = excinfo.value.message
    assert "SmolLM2-135M-Instruct" in message and str(tmp_path / "hf") in message
    assert "hf download ID" in excinfo.value.hint and "never downloads models from a hub" in excinfo.value.hint


def test_hub_id_found_in_local_cache(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf"
    snapshot = cache / "models--acme--tiny" / "snapshots" / "abc123"
    shutil.copytree(tiny_llama_dir, snapshot)
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    resolved = resolve_model("acme/tiny")
    assert resolved.kind == "hub-cache" and resolved.path == snapshot


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_fingerprint_fields_and_cache(tiny_qwen3_dir: Path) -> None:
    assert cached_fingerprint(tiny_qwen3_dir) is None
    first = fingerprint(tiny_qwen3_dir)
    assert first.architecture == "Qwen3ForCausalLM" and first.model_type == "qwen3"
    assert first.vocab_size == json.loads((tiny_qwen3_dir / "config.json").read_text())["vocab_size"]
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(first.linear_modules)
    assert {"q_norm", "k_norm", "embed_tokens"} <= set(first.module_names)
    assert len(first.weights_sha256) == 64 and first.chat_template_sha256 is not None
    assert cached_fingerprint(tiny_qwen3_dir) == first


def test_fingerprint_changes_with_weights(tiny_llama_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_llama_dir, tmp_path / "copy")
    before = fingerprint(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    after = fingerprint(copy)
    assert after.weights_sha256 != before.weights_sha256


def test_load_tiny_model(tiny_llama_dir: Path) -> None:
    model, tokenizer = load_model(resolve_model(str(tiny_llama_dir)))
    assert model.config.num_hidden_layers == 2
    assert tokenizer.eos_token == "<|im_end|>"


def test_target_module_check_against_local_model(tiny_qwen3_dir: Path, tmp_path: Path) -> None:
    data = mutate(load_valid("v2_minimal.json"), "base_models[0].name", str(tiny_qwen3_dir))
    data = mutate(data, "base_models[0].adapters[0].target_modules", ["q_proj", "qq_proj"])
    report, _ = validate_manifest(write_manifest(tmp_path, data), (check_target_modules,))
    assert [(p.path, p.message) for p in report.errors] == [
        (
            "$.base_models[0].adapters[0].target_modules[1]",
            f"module 'qq_proj' does not exist in {tiny_qwen3_dir}; did you mean 'q_proj'?",
        )
    ]
    assert any("target modules checked" in note for note in report.notes)


def test_target_check_skips_models_that_are_not_pulled(tmp_path: Path) -> None:
    report, _ = validate_manifest(write_manifest(tmp_path, load_valid("v2_minimal.json")), (check_target_modules,))
    assert report.ok
    assert report.notes == [
        "base model 'SmolLM2-135M-Instruct' is not prepared yet, so target modules were not checked; the first"
        " command that loads it prepares it (about 20 s), or: expert-cli models pull SmolLM2-135M-Instruct"
    ]


def test_list_models_shows_the_embedded_default() -> None:
    (listing,) = list_models()
    assert (listing.name, listing.kind, listing.ready) == ("SmolLM2-135M-Instruct", "embedded", False)
