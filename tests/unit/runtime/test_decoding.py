"""Decoding: settings precedence, sampling, stop sequences across tokens, the lean decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from expertkit.manifest.sections import DecodingConfig
from expertkit.runtime.generate import GenerationRequest, generate
from expertkit.runtime.hf_decoder import HFDecoder
from expertkit.runtime.llama_decoder import LeanDecoder
from expertkit.runtime.lora_deltas import PROJECTIONS, fused_deltas
from expertkit.runtime.model_config import lean_supported
from expertkit.runtime.sampling import Sampler
from expertkit.runtime.settings import resolve_settings
from expertkit.runtime.stops import StopMatcher

MLP = ("gate_proj", "up_proj", "down_proj")


def test_settings_resolve_cli_over_manifest_over_default() -> None:
    manifest = DecodingConfig(temperature=0.1, top_p=0.9, stop_sequences=[";"], max_tokens=64)
    settings = resolve_settings({"temperature": 0.7, "top_p": None, "seed": 3}, manifest)
    assert (settings.temperature, settings.top_p, settings.top_k, settings.max_tokens) == (0.7, 0.9, 0, 64)
    assert settings.stop_sequences == (";",) and settings.seed == 3
    shown = settings.to_json()
    assert shown["temperature"] == {"value": 0.7, "source": "cli"}
    assert shown["top_p"] == {"value": 0.9, "source": "manifest"}
    assert shown["top_k"] == {"value": 0, "source": "default"}
    assert shown["stop_sequences"] == {"value": [";"], "source": "manifest"}
    assert resolve_settings(None, None).temperature == 0.0


def test_sampling_is_greedy_at_zero_and_reproducible_with_a_seed() -> None:
    logits = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    assert Sampler(resolve_settings({"temperature": 0.0}, None)).choose(logits) == int(logits.argmax())
    hot = {"temperature": 1.5, "top_p": 0.95, "top_k": 50, "seed": 7}
    first = [Sampler(resolve_settings(hot, None)).choose(logits) for _ in range(3)]
    sampler = Sampler(resolve_settings(hot, None))
    assert len({sampler.choose(logits) for _ in range(40)}) > 1  # it does sample
    assert first == [first[0]] * 3  # same seed, same first draw
    top1 = Sampler(resolve_settings({"temperature": 1.0, "top_k": 1, "seed": 1}, None))
    assert all(top1.choose(logits) == int(logits.argmax()) for _ in range(10))
    nucleus = Sampler(resolve_settings({"temperature": 1.0, "top_p": 1e-6, "seed": 1}, None))
    assert all(nucleus.choose(logits) == int(logits.argmax()) for _ in range(10))
    assert Sampler(resolve_settings({"temperature": 0.0}, None)).choose(torch.from_numpy(logits)) == int(
        logits.argmax()
    )


def test_sampling_draws_each_token_as_often_as_its_probability() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    sampler = Sampler(resolve_settings({"temperature": 1.0, "seed": 3}, None))
    counts = np.bincount([sampler.choose(logits) for _ in range(4000)], minlength=4) / 4000
    assert np.abs(counts - [0.5, 0.3, 0.15, 0.05]).max() < 0.03
    kept = Sampler(resolve_settings({"temperature": 1.0, "top_p": 0.7, "seed": 3}, None))
    assert set(kept.choose(logits) for _ in range(400)) == {0, 1}  # 0.5 + 0.3 crosses 0.7: two kept
    assert set(Sampler(resolve_settings({"temperature": 1.0, "top_k": 3}, None)).choose(logits) for _ in range(400)) == {
        0, 1, 2}  # fmt: skip


def test_repetition_penalty_lowers_seen_tokens() -> None:
    logits = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    sampler = Sampler(resolve_settings({"repetition_penalty": 2.0}, None))
    assert sampler.penalise(logits, np.array([0, 1, 1])).tolist() == [1.0, -4.0, 1.0]
    assert logits.tolist() == [2.0, -2.0, 1.0]  # the caller's row is not changed


def test_stop_string_split_across_two_tokens_stops_and_is_not_returned(tiny_llama_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = "SELECT name FROM singer;\n\nExplanation: done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode(ids[: i + 1]) for i in range(len(ids))]
    stop = "r;\n\nEx"  # starts inside one token and ends inside a later one
    assert not any(stop in tokenizer.decode([i]) for i in ids)
    matcher, streamed = StopMatcher(tokenizer, (stop,)), []
    for token in ids:
        result = matcher.push(token)
        streamed.append(matcher.stream_delta(result))
        if result.stopped:
            break
    assert result.stopped and result.stop == stop
    assert result.text == "SELECT name FROM singe" and "".join(streamed) == result.text
    assert len(matcher.ids) < len(ids) and pieces  # stopped before the end


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_lean_decoder_matches_transformers(architecture: str, tiny_llama_dir: Path, tiny_qwen3_dir: Path) -> None:
    directory = tiny_llama_dir if architecture == "llama" else tiny_qwen3_dir
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    assert lean_supported(model.config)
    ids = torch.tensor([5, 17, 42, 99, 3, 250, 7])
    lean, reference = LeanDecoder(model), HFDecoder(model)
    lean_cache, ref_cache = lean.new_cache(32), reference.new_cache(32)
    torch.testing.assert_close(lean.forward(lean_cache, ids), reference.forward(ref_cache, ids), atol=1e-4, rtol=1e-4)
    for token in (11, 12, 13, 200):
        step = torch.tensor([token])
        torch.testing.assert_close(
            lean.forward(lean_cache, step), reference.forward(ref_cache, step), atol=1e-4, rtol=1e-4
        )
    with torch.no_grad():
        full = model(input_ids=torch.cat([ids, torch.tensor([11, 12, 13, 200])])[None]).logits[0, -1]
    assert lean_cache.length == 11
    torch.testing.assert_close(
        lean.forward(lean.new_cache(32), torch.cat([ids, torch.tensor([11, 12, 13, 200])])), full, atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_lora_deltas_on_shared_weights_decode_as_the_merged_weights(
    architecture: str, tiny_llama_dir: Path, tiny_qwen3_dir: Path
) -> None:
    """Prefill and single-token steps with an expert's deltas beside the base weights give the logits
    of a decoder over the merged weights (fp32), q/k/v, o, gate/up and down all adapted."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir if architecture == "llama" else tiny_qwen3_dir)
    torch.manual_seed(0)
    merged = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    adapted, layers = {}, int(model.config.num_hidden_layers)
    for index in range(layers):
        for module in PROJECTIONS:
            weight = f"model.layers.{index}.{'mlp' if module in MLP else 'self_attn'}.{module}.weight"
            out, inputs = merged[weight].shape
            a, b = torch.randn(4, inputs) * 0.2, torch.randn(out, 4) * 0.2
            adapted[(index, module)] = (a, b)
            merged[weight] += b @ a
    outs = {
        module: merged[f"model.layers.0.{'mlp' if module in MLP else 'self_attn'}.{module}.weight"].shape[0]
        for module in PROJECTIONS
    }
    deltas = fused_deltas(adapted, layers, lambda index, module: int(outs[module]))
    assert deltas is not None
    lean = LeanDecoder(model).with_deltas(deltas)
    reference = LeanDecoder.from_tensors(merged, model.config, model.model.rotary_emb)
    ids = torch.tensor([5, 17, 42, 99, 3])
    lean_cache, ref_cache = lean.new_cache(16), reference.new_cache(16)
    torch.testing.assert_close(lean.forward(lean_cache, ids), reference.forward(ref_cache, ids), atol=1e-4, rtol=1e-4)
    for token in (11, 200, 7):
        step = torch.tensor([token])
        torch.testing.assert_close(
            lean.forward(lean_cache, step), reference.forward(ref_cache, step), atol=1e-4, rtol=1e-4
        )


def test_a_dora_expert_as_deltas_decodes_as_peft_merges_it_alone_and_in_a_mixed_batch(tiny_llama_dir: Path) -> None:
    """A DoRA adapter as deltas over the shared base weights (its per-channel m / ||W + dW|| from the
    base weights, applied to each row's sum) gives the logits of PEFT's merged model: one sequence,
    and its row of a batch step whose other row is the base model."""
    from peft import LoraConfig, get_peft_model

    from expertkit.runtime.lora_deltas import RowGroup, lora_deltas

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    plain = LeanDecoder(base)
    config = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), config)
    for name, parameter in model.named_parameters():
        if "lora_B" in name or "magnitude" in name:  # a trained adapter: B moved, magnitudes changed
            parameter.data += torch.randn_like(parameter) * (0.05 if "magnitude" in name else 0.2)
    deltas = lora_deltas(model, "default")
    assert deltas is not None and deltas.layers[0]["qkv"].rescale is not None
    assert "gate_up" not in deltas.layers[0]  # not adapted: shared weights only
    reference = LeanDecoder(model.merge_and_unload())
    lean = plain.with_deltas(deltas)
    ids = torch.tensor([5, 17, 42, 99, 3])
    lean_cache, ref_cache = lean.new_cache(16), reference.new_cache(16)
    torch.testing.assert_close(lean.forward(lean_cache, ids), reference.forward(ref_cache, ids), atol=1e-4, rtol=1e-4)
    step = torch.tensor([11])
    torch.testing.assert_close(lean.forward(lean_cache, step), reference.forward(ref_cache, step), atol=1e-4, rtol=1e-4)

    batch = plain.new_batch_cache(2, 16)
    for slot, decoder in ((0, reference), (1, plain)):
        decoder.forward(plain.slot_view(batch, slot), ids)
    groups = [RowGroup(torch.tensor([0]), deltas)]
    logits = plain.step_batch(batch, torch.tensor([11, 11]), torch.tensor([5, 5]), groups)
    alone = plain.new_cache(16)
    plain.forward(alone, ids)
    torch.testing.assert_close(logits[0], reference.forward(reference.new_cache(16), torch.cat([ids, step])),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    torch.testing.assert_close(logits[1], plain.forward(alone, step), atol=1e-4, rtol=1e-4)


def test_a_prompt_fed_in_parts_gives_the_logits_of_one_prefill(tiny_llama_dir: Path) -> None:
    """Several tokens onto a cache that already holds some (causal over the cache and the new ones)."""
    decoder = LeanDecoder(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32))
    ids = torch.tensor([5, 17, 42, 99, 3, 250, 7, 64])
    whole = decoder.forward(decoder.new_cache(16), ids)
    cache = decoder.new_cache(16)
    decoder.forward(cache, ids[:5])
    torch.testing.assert_close(decoder.forward(cache, ids[5:]), whole, atol=1e-5, rtol=1e-5)
    assert cache.length == 8


def test_a_long_prompt_is_rotated_in_chunks_with_the_same_logits(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt longer than ROPE_CHUNK never builds more than ROPE_CHUNK RoPE matrices at once (their
    memory would grow as length x head_dim^2), and its logits and cache are bit for bit those of one
    prefill with every matrix at once."""
    from expertkit.runtime import llama_decoder

    decoder = LeanDecoder(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32))
    ids = torch.tensor([5, 17, 42, 99, 3, 250, 7, 64, 11, 200, 9])
    whole_cache = decoder.new_cache(16)
    whole = decoder.forward(whole_cache, ids)
    built: list[int] = []
    rotations = decoder._rotations
    monkeypatch.setattr(decoder, "_rotations", lambda positions: built.append(len(positions)) or rotations(positions))
    monkeypatch.setattr(llama_decoder, "ROPE_CHUNK", 4)
    cache = decoder.new_cache(16)
    assert torch.equal(decoder.forward(cache, ids), whole)
    assert torch.equal(cache.keys, whole_cache.keys) and torch.equal(cache.values, whole_cache.values)
    assert max(built) == 4 and sum(built) == len(ids) * len(decoder.layers)


def test_a_bf16_step_stays_near_fp32(tiny_llama_dir: Path) -> None:
    """In bf16, a sequence stepped token by token stays as close to fp32's logits as one prefill of it
    does (the residual stream is fp32 on both paths), and picks fp32's next token."""
    ids, steps = torch.tensor([5, 17, 42, 99, 3]), (11, 200, 7, 64)
    full = torch.cat([ids, torch.tensor(steps)])
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        decoder = LeanDecoder(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=dtype))
        cache = decoder.new_cache(16)
        decoder.forward(cache, ids)
        for token in steps[:-1]:
            decoder.forward(cache, torch.tensor([token]))
        logits[dtype] = (
            decoder.forward(cache, torch.tensor([steps[-1]])),
            decoder.forward(decoder.new_cache(16), full),
        )
    stepped_error = (logits[torch.bfloat16][0] - logits[torch.float32][0]).abs().max()
    block_error = (logits[torch.bfloat16][1] - logits[torch.float32][1]).abs().max()
    assert stepped_error <= block_error * 1.5
    assert torch.equal(logits[torch.float32][0].argmax(), logits[torch.bfloat16][0].argmax())


def test_generate_finish_reasons_and_fresh_cache(tiny_llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    decoder = LeanDecoder(model)
    prompt = tokenizer("What is 2 plus 2?", add_special_tokens=False)["input_ids"]
    settings = resolve_settings({"max_tokens": 12}, None)
    first = generate(decoder, tokenizer, GenerationRequest(prompt, settings, set()))
    again = generate(decoder, tokenizer, GenerationRequest(prompt, settings, set()))
    assert first.finish_reason == "length" and not first.stopped and first.completion_tokens == 12
    assert again.token_ids == first.token_ids  # nothing carried over between generations
    k = next((i for i, t in enumerate(first.token_ids) if t != first.token_ids[0]), 0)
    ended = generate(decoder, tokenizer, GenerationRequest(prompt, settings, {first.token_ids[k]}))
    assert ended.finish_reason == "eos" and ended.token_ids == first.token_ids[:k] and ended.stopped
    assert ended.completion_tokens == k + 1


def test_a_declined_stop_string_is_skipped_and_the_next_one_counts(tiny_llama_dir: Path) -> None:
    """With a grammar gate, the ';' inside a string literal is declined and the final ';' stops."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids = tokenizer("SELECT 'a;b' FROM t; tail", add_special_tokens=False)["input_ids"]
    matcher = StopMatcher(tokenizer, (";",))
    gate = lambda text: text.count("'") % 2 == 0  # noqa: E731  (complete: quotes balanced)
    for token in ids:
        result = matcher.push(token)
        while result.stopped and not gate(result.text):
            result = matcher.decline(result)
        if result.stopped:
            break
    assert result.stopped and result.text == "SELECT 'a;b' FROM t"
