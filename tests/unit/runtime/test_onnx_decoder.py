"""The ONNX Runtime decoder (``--decoder onnx``): built once per expert by onnxruntime-genai's
builder, it decodes as the lean decoder does (fp32 graph), for the base model, a LoRA, a DoRA (folded
into rescaled rows) and a soft prompt's virtual tokens; int4 keeps an expert's change."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from expertkit.runtime.engine import Engine
from expertkit.runtime.onnx_build import onnx_model
from expertkit.runtime.onnx_cache import build_key
from expertkit.runtime.onnx_decoder import OnnxDecoder
from expertkit.runtime.options import LoadOptions
from unit.runtime.test_fast_start import IDS, dora_expert, tokens


def trained_dora(trained_source: Path, tmp_path: Path, tiny_llama_dir: Path) -> Path:
    """A DoRA saved by PEFT with moved B factors and magnitudes (a trained adapter's shape)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dora = dora_expert(trained_source, tmp_path)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), config)
    for name, parameter in model.named_parameters():
        if "lora_B" in name or "magnitude" in name:
            parameter.data += torch.randn_like(parameter) * (0.05 if "magnitude" in name else 0.2)
    model.save_pretrained(next((dora / "weights").iterdir()) / "adapter")
    return dora


def test_the_onnx_decoder_decodes_as_the_lean_decoder(
    trained_source: Path, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    dora = trained_dora(trained_source, tmp_path, tiny_llama_dir)
    experts = [str(trained_source), str(dora)]
    onnx = Engine.for_experts(experts, LoadOptions(dtype="float32", decoder="onnx"))
    lean = Engine.for_experts(experts, LoadOptions(dtype="float32", decoder="lean"))
    assert onnx._model is None  # built from the files the fast start read, no transformers model object
    for name in ("expert-tiny", "expert-dora", None):
        a, b = onnx.activate(name), lean.activate(name)
        assert isinstance(a, OnnxDecoder) and not isinstance(b, OnnxDecoder), name
        assert onnx.decoder_of(name) == ("onnx", "cli")
        torch.testing.assert_close(
            torch.as_tensor(a.forward(a.new_cache(16), IDS)), b.forward(b.new_cache(16), IDS), atol=1e-4, rtol=1e-4
        )
        assert tokens(onnx, name) == tokens(lean, name), name
        # A soft prompt's virtual tokens go in front as embeddings, as in the lean decoder.
        prefix = torch.randn(3, 64) * 0.02
        after_a, after_b = (
            torch.as_tensor(a.forward(a.new_cache(16), IDS, prefix)),
            b.forward(b.new_cache(16), IDS, prefix),
        )
        torch.testing.assert_close(after_a, after_b, atol=1e-4, rtol=1e-4)
        # Step by step, the keys and values carried between calls are the ones a whole prefill makes.
        cache = a.new_cache(16)
        a.forward(cache, IDS[:3])
        np.testing.assert_allclose(a.forward(cache, IDS[3:]), a.forward(a.new_cache(16), IDS), atol=1e-5, rtol=1e-5)
        assert cache.length == len(IDS)
    assert not onnx.mixable("expert-tiny")  # ONNX decoders decode one expert per batch
    notes = onnx.decoder_notes()
    assert notes[0].startswith("expert-tiny: ONNX Runtime decoder (cli), float32 activations, quantize none")
    with pytest.raises(ValueError, match="exceeds the cache"):
        a.forward(a.new_cache(4), IDS)


def test_an_onnx_build_is_cached_by_what_it_depends_on(trained_source: Path, tmp_path: Path) -> None:
    engine = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32"))
    lora = engine._lora["expert-tiny"]
    sha = engine.fingerprint.weights_sha256
    first = onnx_model(engine.base.path, sha, lora, "int4", log=False)
    again = onnx_model(engine.base.path, sha, lora, "int4", log=False)
    assert again.directory == first.directory and again.built_s == 0.0 and first.path.is_file()
    assert sorted(p.name for p in first.directory.parent.iterdir()) == [first.directory.name]  # no temp dir left
    changed = dataclasses.replace(lora, scale=lora.scale * 2)
    other_file = dataclasses.replace(lora, sha256="0" * 64)
    keys = {build_key(sha, x, q) for x, q in ((lora, "int4"), (changed, "int4"), (other_file, "int4"), (lora, "int8"))}
    assert len(keys) == 4
    assert build_key(sha, None, "int4") != build_key(sha, lora, "int4")
    lean = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32"))
    exact = [lean.activate(n).forward(lean.activate(n).new_cache(16), IDS) for n in ("expert-tiny", None)]
    exact_change = exact[0] - exact[1]
    assert exact_change.abs().max() > 1e-2
    # int4: the base is rounded, the expert's LoRA is not (its own fp32 product in the graph); int8:
    # merged first, its 255 steps keep the change. Either way the expert changes the logits as it should.
    for quantize in ("int4", "int8"):
        decoders = [
            OnnxDecoder(onnx_model(engine.base.path, sha, expert, quantize, log=False), engine._tensors.float_rows(
                "model.embed_tokens.weight"), engine._config) for expert in (lora, None)
        ]  # fmt: skip
        merged_graph = "lora_A" not in decoders[0].model.path.read_text(errors="ignore")
        assert merged_graph == (quantize == "int8")
        expert_logits, base_logits = (torch.as_tensor(d.forward(d.new_cache(16), IDS)) for d in decoders)
        change = expert_logits - base_logits
        assert (change - exact_change).norm() < 0.3 * exact_change.norm(), quantize


def test_the_manifest_chooses_the_decoder_and_a_flag_wins(trained_source: Path, tmp_path: Path) -> None:
    import shutil

    expert = Path(shutil.copytree(trained_source, tmp_path / "expert"))
    manifest = json.loads((expert / "manifest.json").read_text())
    (expert / "manifest.json").write_text(json.dumps(manifest | {"runtime": {"decoder": "onnx"}}))
    assert Engine.for_experts([str(expert)], LoadOptions()).decoder_of("expert-tiny") == ("onnx", "manifest")
    flagged = Engine.for_experts([str(expert)], LoadOptions(decoder="lean"))
    assert flagged.decoder_of("expert-tiny") == ("lean", "cli")
    assert Engine.for_experts([str(trained_source)], LoadOptions()).decoder_of("expert-tiny") == ("lean", "default")
    # An expert the fast start cannot read (through PEFT) decodes lean, and the notes say why.
    through_peft = Engine.for_experts([str(expert)], LoadOptions(decoder="onnx", fast_start=False))
    assert through_peft.decoder_of("expert-tiny")[0] == "lean"
    assert "not this one" in through_peft.decoder_notes()[0]
    asked_by_manifest = Engine.for_experts([str(expert)], LoadOptions(fast_start=False))
    assert asked_by_manifest.decoder_of("expert-tiny") == ("lean", "manifest")
    assert "not this one" in asked_by_manifest.decoder_notes()[0]


def test_the_graph_cache_keeps_the_most_recently_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from expertkit.runtime import onnx_build

    monkeypatch.setattr(onnx_build, "KEPT_GRAPHS", 2)
    for age, name in enumerate([".build-killed", "c", "b", "a"]):  # c is the oldest graph
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 + age, 1000 + age))
    (tmp_path / ".build-running").mkdir()  # a build in progress (just started) is never touched
    onnx_build._prune(tmp_path, keep=tmp_path / "c")  # the one just used stays whatever its age
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build-running", "a", "c"]
