"""Fast start: the base model and plain-LoRA experts read from their files, merged by hand, decode
exactly as through transformers + PEFT; anything else falls back to them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from expertkit.models.lean_tokenizer import LeanTokenizer
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions
from expertkit.runtime.settings import resolve_settings
from unit.runtime.test_engine import second_expert

IDS = torch.tensor([1, 5, 7, 9, 11, 13])


def tokens(engine: Engine, name: str | None) -> list[int]:
    settings = resolve_settings({"temperature": 0.0, "max_tokens": 12}, None)
    ids = engine.prompt_ids([{"role": "user", "content": "Count the singers in the table please"}])
    return engine.run(name, ids, settings).token_ids


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_fast_start_decodes_exactly_as_transformers_and_peft(
    trained_source: Path, tmp_path: Path, dtype: str
) -> None:
    experts = [str(trained_source), str(second_expert(trained_source, tmp_path))]
    fast = Engine.for_experts(experts, LoadOptions(dtype=dtype))  # type: ignore[arg-type]
    slow = Engine.for_experts(experts, LoadOptions(dtype=dtype, fast_start=False))  # type: ignore[arg-type]
    for name in ("expert-tiny", "expert-other", None):
        a, b = fast.activate(name), slow.activate(name)
        assert torch.equal(a.forward(a.new_cache(16), IDS), b.forward(b.new_cache(16), IDS)), name
        assert tokens(fast, name) == tokens(slow, name)
    assert fast._model is None  # nothing above needed transformers' model object or PEFT
    assert isinstance(fast.tokenizer, LeanTokenizer)  # nor transformers' tokenizer
    conversation = [{"role": "system", "content": "SQL only"}, {"role": "user", "content": "Count <b>them</b>"}]
    assert fast.prompt_ids(conversation) == slow.prompt_ids(conversation)
    assert fast.vocab_size == slow.vocab_size and fast.context_length == slow.context_length
    assert (
        fast.request(None, [1], resolve_settings({}, None)).end_ids
        == slow.request(None, [1], resolve_settings({}, None)).end_ids
    )
    delta_fast, delta_slow = fast.deltas_of("expert-tiny"), slow.deltas_of("expert-tiny")
    assert delta_fast is not None and delta_slow is not None
    for layer_fast, layer_slow in zip(delta_fast.layers, delta_slow.layers, strict=True):
        assert layer_fast.keys() == layer_slow.keys()
        for key in layer_fast:
            torch.testing.assert_close(layer_fast[key].b, layer_slow[key].b)
    # Reading engine.model later still works (perf, the base-model router): PEFT gets every expert.
    assert sorted(fast.model.peft_config) == ["expert-other", "expert-tiny"]
    assert tokens(fast, "expert-tiny") == tokens(slow, "expert-tiny")


def dora_expert(trained_source: Path, tmp_path: Path) -> Path:
    """The tiny expert as ``expert-dora``, its adapter config switched to DoRA (PEFT adds magnitudes)."""
    dora = Path(shutil.copytree(trained_source, tmp_path / "expert-dora"))
    config = next((dora / "weights").iterdir()) / "adapter" / "adapter_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"use_dora": True}))
    manifest = json.loads((dora / "manifest.json").read_text())
    (dora / "manifest.json").write_text(json.dumps(manifest | {"name": "expert-dora"}))
    return dora


def test_an_expert_that_is_not_a_plain_lora_loads_through_peft(trained_source: Path, tmp_path: Path) -> None:
    dora = dora_expert(trained_source, tmp_path)
    engine = Engine.for_experts([str(trained_source), str(dora)], LoadOptions(dtype="float32"))
    assert engine._model is not None and "expert-tiny" in engine._lora and "expert-dora" not in engine._lora
    reference = Engine.for_experts([str(dora)], LoadOptions(dtype="float32", fast_start=False))
    assert tokens(engine, "expert-dora") == tokens(reference, "expert-dora")


def test_a_dora_expert_is_read_from_its_files_and_decodes_as_through_peft(
    trained_source: Path, tmp_path: Path, tiny_llama_dir: Path
) -> None:
    """A DoRA saved by PEFT (magnitudes in the file): read without PEFT, run as deltas whose A, B·scale
    and m / ‖W + ΔW‖ are PEFT's own, decoding as PEFT's merged model does, unquantised and int4."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dora = dora_expert(trained_source, tmp_path)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), config)
    for name, parameter in model.named_parameters():
        if "lora_B" in name or "magnitude" in name:  # a trained adapter: B moved, magnitudes changed
            parameter.data += torch.randn_like(parameter) * (0.05 if "magnitude" in name else 0.2)
    model.save_pretrained(next((dora / "weights").iterdir()) / "adapter")
    for quantize in ("none", "int4"):
        options = {"dtype": "float32", "quantize": quantize}
        fast = Engine.for_experts([str(dora)], LoadOptions(**options))  # type: ignore[arg-type]
        slow = Engine.for_experts([str(dora)], LoadOptions(**options, fast_start=False))  # type: ignore[arg-type]
        assert fast._model is None and fast._lora["expert-dora"].dora
        ours, peft = fast.deltas_of("expert-dora"), slow.deltas_of("expert-dora")
        assert ours is not None and peft is not None
        for layer_ours, layer_peft in zip(ours.layers, peft.layers, strict=True):
            assert layer_ours.keys() == layer_peft.keys()
            for key, delta in layer_ours.items():
                assert all(torch.equal(x, y) for x, y in zip(delta.tensors(), layer_peft[key].tensors(), strict=True))
        a, b = fast.activate("expert-dora"), slow.activate("expert-dora")  # deltas / PEFT's merge (none)
        torch.testing.assert_close(
            a.forward(a.new_cache(16), IDS), b.forward(b.new_cache(16), IDS), atol=1e-4, rtol=1e-4
        )
        assert tokens(fast, "expert-dora") == tokens(slow, "expert-dora")
        assert fast._model is None  # still no transformers model object, no PEFT


def test_only_a_plain_lora_whose_factors_fit_the_base_is_merged_by_hand(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from expertkit.runtime.lora_file import plain_lora_file as plain_lora

    base = {"model.layers.0.self_attn.q_proj.weight": (8, 4), "model.embed_tokens.weight": (10, 4)}
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"}

    def adapter(tensors: dict[str, torch.Tensor], **changes: object) -> Path:
        directory = tmp_path / f"adapter-{len(list(tmp_path.iterdir()))}"
        directory.mkdir()
        (directory / "adapter_config.json").write_text(json.dumps(config | changes))
        save_file(tensors, str(directory / "adapter_model.safetensors"))
        return directory

    key = "base_model.model.model.layers.0.self_attn.q_proj"
    good = {f"{key}.lora_A.weight": torch.ones(2, 4), f"{key}.lora_B.weight": torch.ones(8, 2)}
    lora = plain_lora(adapter(good), base)
    assert lora is not None and lora.scale == 2.0 and list(lora.keys) == ["model.layers.0.self_attn.q_proj.weight"]
    a, b = lora.factors().factors["model.layers.0.self_attn.q_proj.weight"]
    assert a.shape == (2, 4) and b.shape == (8, 2) and a.dtype == torch.float32
    assert plain_lora(adapter(good, use_rslora=True), base).scale == pytest.approx(4 / 2**0.5)  # type: ignore[union-attr]
    wrong_shape = {f"{key}.lora_A.weight": torch.ones(2, 4), f"{key}.lora_B.weight": torch.ones(9, 2)}
    assert plain_lora(adapter(wrong_shape), base) is None
    head = {
        "base_model.model.lm_head.lora_A.weight": torch.ones(2, 4),
        "base_model.model.lm_head.lora_B.weight": torch.ones(10, 2),
    }
    assert plain_lora(adapter(head), base) is None
    assert plain_lora(adapter(good, target_modules=".*q_proj"), base) is None  # a regex: PEFT decides
    assert plain_lora(adapter(good, use_dora=True), base) is None
    assert plain_lora(adapter(good | {f"{key}.lora_magnitude_vector": torch.ones(8)}), base) is None


def ia3_expert(trained_source: Path, tmp_path: Path) -> Path:
    """The tiny expert as ``expert-ia3``: an IA³ adapter (scaling vectors moved off 1) on its base."""
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    ia3 = Path(shutil.copytree(trained_source, tmp_path / "expert-ia3"))
    adapter = next((ia3 / "weights").iterdir()) / "adapter"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    shutil.rmtree(adapter)
    targets = ["k_proj", "v_proj", "down_proj"]
    config = IA3Config(target_modules=targets, feedforward_modules=["down_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    for name, parameter in model.named_parameters():
        if "ia3_l" in name:
            parameter.data += torch.randn_like(parameter) * 0.1
    model.save_pretrained(str(adapter))
    manifest = json.loads((ia3 / "manifest.json").read_text())
    manifest["base_models"][0]["adapters"] = [{"type": "ia3", "target_modules": targets,
                                               "feedforward_modules": ["down_proj"]}]  # fmt: skip
    (ia3 / "manifest.json").write_text(json.dumps(manifest | {"name": "expert-ia3"}))
    return ia3


def test_quantising_an_expert_that_must_merge_says_what_it_risks(trained_source: Path, tmp_path: Path) -> None:
    """IA³ is not a low-rank delta: merged, then quantised, and the notes say so; LoRA and DoRA ride as
    deltas over the quantised base."""
    options = LoadOptions(dtype="float32", quantize="int8")
    ia3 = Engine.for_experts([str(ia3_expert(trained_source, tmp_path))], options)  # PEFT mixes no LoRA with IA³
    assert "round away" in ia3.decoder_notes()[0] and not ia3.mixable("expert-ia3")
    assert tokens(ia3, "expert-ia3")
    engine = Engine.for_experts([str(trained_source), str(dora_expert(trained_source, tmp_path))], options)
    notes = engine.decoder_notes()
    for deltas in ("expert-tiny", "expert-dora"):
        assert "round away" not in next(n for n in notes if n.startswith(deltas))
        assert engine.mixable(deltas)


def test_a_config_that_leaves_values_to_transformers_defaults_goes_through_transformers(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from expertkit.runtime.llama_decoder import LeanDecoder
    from expertkit.runtime.model_config import fast_config

    config = {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1}
    config |= {"num_attention_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "vocab_size": 10}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert fast_config(tmp_path) is not None
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "rms_norm_eps"}))
    assert fast_config(tmp_path) is None  # transformers' class default would decide it
    (tmp_path / "config.json").write_text(json.dumps(config | {"rope_scaling": {"rope_type": "llama3"}}))
    assert fast_config(tmp_path) is None  # scaled RoPE: transformers computes it
    untied = SimpleNamespace(**(config | {"num_hidden_layers": 0}), tie_word_embeddings=False)
    tensors = {"model.embed_tokens.weight": torch.zeros(10, 8), "model.norm.weight": torch.ones(8)}
    with pytest.raises(ValueError, match=r"no lm_head\.weight"):
        LeanDecoder.from_tensors(tensors, untied, None)
