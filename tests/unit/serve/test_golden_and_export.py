"""OpenAI response JSON against golden files, and the vLLM / merged exports.

Regenerate the golden files with ``EXPERTKIT_UPDATE_GOLDEN=1 pytest tests/unit/serve`` and review
the diff: they pin the response shape (keys, types, finish reasons, usage, our extension).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import torch

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "golden" / "serve"
VOLATILE = {"id", "created", "created_at", "call_id", "timing", "logprob"}  # logprob: last bits vary by CPU


def normalise(value, key: str = ""):
    """Replace values that differ between runs (ids, timestamps, timings, paths) by their type."""
    if key in VOLATILE:
        return f"<{type(value).__name__}>"
    if isinstance(value, dict):
        return {k: normalise(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def check(name: str, body: dict) -> None:
    path = GOLDEN / f"{name}.json"
    body = normalise(body)
    if os.environ.get("EXPERTKIT_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    assert body == json.loads(path.read_text())


REQUEST = {"model": "expert-tiny", "max_tokens": 5, "temperature": 0, "seed": 3}


def test_chat_completion_matches_the_golden_file(live) -> None:
    response = httpx.post(
        f"{live.url}/v1/chat/completions",
        json={**REQUEST, "messages": [{"role": "user", "content": "What is 2 plus 2?"}]},
    )
    check("chat_completion", response.json())


def test_completion_matches_the_golden_file(live) -> None:
    response = httpx.post(f"{live.url}/v1/completions", json={**REQUEST, "prompt": "SELECT"})
    check("completion", response.json())


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["unit"],
            "additionalProperties": False,
        },
    },
}


def test_tool_call_logprobs_and_responses_match_the_golden_files(tools_live) -> None:
    chat = {**REQUEST, "model": "expert-tools", "messages": [{"role": "user", "content": "Weather?"}], "max_tokens": 40}
    called = httpx.post(
        f"{tools_live.url}/v1/chat/completions",
        json={**chat, "tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False},
    )
    check("chat_tool_call", called.json())
    scored = {**REQUEST, "messages": chat["messages"], "logprobs": True, "top_logprobs": 2}
    check("chat_logprobs", httpx.post(f"{tools_live.url}/v1/chat/completions", json=scored).json())
    legacy = {**REQUEST, "prompt": "SELECT", "logprobs": 2}
    check("completion_logprobs", httpx.post(f"{tools_live.url}/v1/completions", json=legacy).json())
    flat = {"type": "function", **TOOL["function"]}
    response = {
        "model": "expert-tools",
        "input": "Weather?",
        "tools": [flat],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
    }
    body = httpx.post(f"{tools_live.url}/v1/responses", json=response).json()
    body["expertkit"]["decoding"]["seed"]["value"] = "<seed>"  # the Responses API takes no seed: a fresh one
    check("response_function_call", body)


def test_models_and_error_match_the_golden_files(live) -> None:
    body = httpx.get(f"{live.url}/v1/models").json()
    for card in body["data"]:
        card["id"] = card["id"] if card["id"] in ("expert-tiny", "auto") else "<base>"
        card["parent"] = card["parent"] and "<base>"
    check("models", body)
    payload = {**REQUEST, "model": "nope", "messages": [{"role": "user", "content": "x"}]}
    error = httpx.post(f"{live.url}/v1/chat/completions", json=payload).json()
    error["error"]["message"] = "<message: lists the available models>"
    check("error_model_not_found", error)


def test_export_vllm_writes_the_command(trained_source: Path, tmp_path: Path) -> None:
    from expertkit.serve.export import export_vllm

    result = export_vllm([str(trained_source)], tmp_path / "vllm", port=9000)
    script = result.script.read_text()
    assert (
        "--enable-lora" in script
        and "--lora-modules expert-tiny=" in script
        and "--max-loras 1 --max-lora-rank 8" in script
    )
    assert os.access(result.script, os.X_OK)
    modules = json.loads((tmp_path / "vllm" / "lora-modules.json").read_text())
    assert Path(modules["lora_modules"]["expert-tiny"]).joinpath("adapter_model.safetensors").is_file()


def test_export_merged_gives_the_experts_logits(trained_source: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from expertkit.runtime.engine import Engine
    from expertkit.serve.export import export_merged

    out = export_merged(str(trained_source), tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "expert-manifest.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    engine = Engine.for_experts([str(trained_source)])
    ids = torch.tensor([[1, 5, 7, 9]])
    engine.model.set_adapter("expert-tiny")
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, engine.model(input_ids=ids).logits, atol=1e-4, rtol=1e-4
        )
    from expertkit.errors import UsageError

    with pytest.raises(UsageError, match="already exists"):
        export_merged(str(trained_source), out)
