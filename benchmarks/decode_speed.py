"""Greedy decode speed: expertkit's engine (one LoRA expert, merged) vs transformers' ``generate``.

Same model, same dtype, same prompt (about 100 tokens), 128 new tokens, both greedy, measured in
one run. The expert is a LoRA r=8 on every linear layer with random-but-nonzero weights (speed
does not depend on what the adapter learned); ``generate`` runs the same adapter unmerged through
PEFT, the way a transformers user serves it, and also merged (``merge_and_unload``) for a fairer
anchor. Time to first token is measured from the prompt to the first sampled token.

Last line: {"ratio": …, "expertkit_tokens_per_s": …, "generate_tokens_per_s": …, "first_token_s": …, "dtype": …}
(``ratio`` against the merged ``generate``, the faster of the two anchors).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

NEW_TOKENS = 128
PROMPT = (
    "You are given the schema CREATE TABLE singer (singer_id INT, name TEXT, country TEXT, age INT); "
    "CREATE TABLE concert (concert_id INT, concert_name TEXT, stadium_id INT, year INT). "
    "Write a long, careful explanation of how you would answer questions about singers and concerts, "
    "then write five different SQL queries over these tables, each with a comment."
)


def make_expert(base_dir: Path, work: Path) -> Path:
    """A LoRA expert directory over the base model, its weights random (B non-zero) and saved by PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from expertkit.models.fingerprint import fingerprint

    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    expert = work / "expert-bench"
    weights = expert / "weights" / "smollm2-135m-instruct"
    peft.save_pretrained(str(weights / "adapter"), safe_serialization=True)
    manifest = {
        "schema_version": "2.0",
        "name": "expert-bench",
        "version": "0.1.0",
        "description": "decode benchmark expert",
        "base_models": [
            {
                "name": "SmolLM2-135M-Instruct",
                "adapters": [{"type": "lora", "r": 8, "alpha": 16, "target_modules": targets}],
            }
        ],
    }
    (expert / "manifest.json").write_text(json.dumps(manifest))
    fp = fingerprint(base_dir)
    base = {"weights_sha256": fp.weights_sha256, "architecture": fp.architecture, "vocab_size": fp.vocab_size}
    meta = {"base_model": base, "chat_template_sha256": fp.chat_template_sha256}
    (weights / "training_meta.json").write_text(json.dumps(meta))
    return expert


def time_generate(model, tokenizer, ids: torch.Tensor) -> tuple[float, list[int]]:
    attention = torch.ones_like(ids)
    kwargs = dict(
        max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=4, do_sample=False)  # warm-up
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=attention, **kwargs)
    elapsed = time.perf_counter() - start
    return NEW_TOKENS / elapsed, out[0, ids.shape[1] :].tolist()


def time_engine(engine, ids: list[int]) -> tuple[float, float, list[int]]:
    from expertkit.runtime.generate import GenerationRequest, generate
    from expertkit.runtime.settings import resolve_settings

    decoder = engine.activate("expert-bench")
    settings = resolve_settings({"max_tokens": NEW_TOKENS, "temperature": 0.0}, None)
    generate(decoder, engine.tokenizer, GenerationRequest(ids, resolve_settings({"max_tokens": 4}, None), set()))
    result = generate(decoder, engine.tokenizer, GenerationRequest(ids, settings, set()))  # no end token: 128 tokens
    decode_s = result.total_s - result.first_token_s
    return (NEW_TOKENS - 1) / decode_s, result.first_token_s, result.token_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    from rich.console import Console

    from expertkit.models import pull_model
    from expertkit.runtime.engine import Engine
    from expertkit.runtime.options import LoadOptions

    console = Console(stderr=True)
    torch.set_grad_enabled(False)
    base = pull_model("SmolLM2-135M-Instruct")
    with tempfile.TemporaryDirectory() as tmp:
        expert = make_expert(base.path, Path(tmp))
        load_start = time.perf_counter()
        engine = Engine.for_experts([str(expert)], LoadOptions(dtype=args.dtype))
        engine.activate("expert-bench")
        console.print(f"engine load + merge: {time.perf_counter() - load_start:.2f} s")
        ids = engine.prompt_ids([{"role": "user", "content": PROMPT}])
        ours, first_token_s, our_tokens = time_engine(engine, ids)
        tensor = torch.tensor([ids])
        unmerged, _ = time_generate(engine.model, engine.tokenizer, tensor)
        merged_model = engine.model.merge_and_unload()
        merged, their_tokens = time_generate(merged_model, engine.tokenizer, tensor)
    agree = next((i for i, (a, b) in enumerate(zip(our_tokens, their_tokens, strict=False)) if a != b), len(our_tokens))
    console.print(f"prompt {len(ids)} tokens, {NEW_TOKENS} new tokens, dtype {args.dtype}")
    console.print(f"expertkit engine: {ours:.1f} tokens/s, first token {first_token_s * 1000:.0f} ms")
    console.print(f"generate, PEFT adapter unmerged: {unmerged:.1f} tokens/s; merged: {merged:.1f} tokens/s")
    console.print(f"greedy outputs agree for the first {agree} of {NEW_TOKENS} tokens")
    result = {
        "ratio": round(ours / merged, 3),
        "expertkit_tokens_per_s": round(ours, 1),
        "generate_tokens_per_s": round(merged, 1),
        "generate_unmerged_tokens_per_s": round(unmerged, 1),
        "first_token_s": round(first_token_s, 3),
        "dtype": args.dtype,
        "prompt_tokens": len(ids),
        "agreeing_tokens": agree,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
