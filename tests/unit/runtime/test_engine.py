"""The engine: experts over one base model, merged for decoding, switched without residue."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from expertkit.errors import UsageError
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions

IDS = torch.tensor([1, 5, 7, 9, 11, 13])


def logits(engine: Engine, name: str | None) -> torch.Tensor:
    decoder = engine.activate(name)
    return decoder.forward(decoder.new_cache(16), IDS)


def renamed_expert(trained_source: Path, tmp_path: Path, name: str, scale: Callable[[str], float]) -> Path:
    """The trained tiny expert copied under ``name``, each adapter tensor multiplied by ``scale(key)``."""
    from safetensors.torch import load_file, save_file

    copy = Path(shutil.copytree(trained_source, tmp_path / name))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["name"] = name
    (copy / "manifest.json").write_text(json.dumps(manifest))
    weights = next((copy / "weights").iterdir()) / "adapter" / "adapter_model.safetensors"
    save_file({k: v * scale(k) for k, v in load_file(str(weights)).items()}, str(weights))
    return copy


def second_expert(trained_source: Path, tmp_path: Path) -> Path:
    """The same expert under another name, with its LoRA weights scaled (a different adapter)."""
    return renamed_expert(trained_source, tmp_path, "expert-other", lambda _: 3.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_switching_experts_returns_exactly_to_the_base(trained_source: Path, tmp_path: Path, dtype: str) -> None:
    other = second_expert(trained_source, tmp_path)
    engine = Engine.for_experts([str(trained_source), str(other)], LoadOptions(dtype=dtype))
    assert sorted(engine.experts) == ["expert-other", "expert-tiny"]
    base = logits(engine, None)
    tiny, other_logits = logits(engine, "expert-tiny"), logits(engine, "expert-other")
    assert (tiny - base).abs().max() > 1e-3 and (other_logits - tiny).abs().max() > 1e-3
    assert torch.equal(logits(engine, None), base)  # no merge residue, even in bf16
    assert torch.equal(logits(engine, "expert-tiny"), tiny)
    if dtype == "float32":  # the merged lean path equals PEFT's unmerged forward
        engine.model.set_adapter("expert-tiny")
        with torch.no_grad():
            reference = engine.model(input_ids=IDS[None]).logits[0, -1]
        torch.testing.assert_close(tiny, reference, atol=1e-4, rtol=1e-4)
    with pytest.raises(UsageError, match="expert 'nope' is not loaded"):
        engine.activate("nope")


def test_engine_generate_uses_the_manifest_decoding_and_cli_overrides(expert_dir: Path) -> None:
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["training"]["decoding"] = {"temperature": 0.0, "max_tokens": 5, "stop_sequences": ["zzz"]}
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    engine = Engine.for_experts([str(expert_dir)])
    messages = [{"role": "user", "content": "What is 3 plus 3?"}]
    result = engine.generate("expert-tiny", messages)
    assert result.completion_tokens <= 5 and result.prompt_tokens == len(engine.prompt_ids(messages))
    longer = engine.generate("expert-tiny", messages, {"max_tokens": 8})
    assert longer.completion_tokens <= 8
    if result.finish_reason == "length" and longer.finish_reason == "length":
        assert longer.token_ids[:5] == result.token_ids and len(longer.token_ids) == 8


def test_an_expert_loaded_for_one_answer_is_not_merged_and_decodes_as_merged(trained_source: Path) -> None:
    merged = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32"))
    unmerged = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32", merge_experts=False))
    assert merged.activate("expert-tiny").deltas is None
    assert unmerged.activate("expert-tiny").deltas is not None  # the base weights, the LoRA beside them
    assert unmerged.activate("expert-tiny").nbytes() < merged.activate("expert-tiny").nbytes() / 10
    torch.testing.assert_close(logits(unmerged, "expert-tiny"), logits(merged, "expert-tiny"), atol=1e-4, rtol=1e-4)
    assert (logits(unmerged, "expert-tiny") - logits(unmerged, None)).abs().max() > 1e-3
    assert any("one answer: not merged" in note for note in unmerged.decoder_notes())
