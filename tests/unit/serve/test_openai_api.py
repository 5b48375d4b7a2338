"""The server through the official ``openai`` client: models, chat, completions, streaming, formats."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest


def client(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def test_model_list_names_the_base_model_experts_and_auto(live) -> None:
    models = client(live).models.list().data
    ids = [m.id for m in models]
    base = live.state.config.base_id
    assert ids == [base, "expert-tiny", "auto"]
    expert = models[1].model_dump()
    assert expert["parent"] == base and expert["version"] == "0.1.0" and expert["adapter_type"] == "lora"


def test_chat_completion_shape_usage_and_extension(live) -> None:
    messages = [{"role": "user", "content": "What is 2 plus 2?"}]
    response = client(live).chat.completions.create(model="expert-tiny", messages=messages, max_tokens=6, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == "expert-tiny"
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    engine = live.state.engine
    assert response.usage.prompt_tokens == len(engine.prompt_ids(messages))
    assert 1 <= response.usage.completion_tokens <= 6
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    extension = response.model_extra["expertkit"]
    assert extension["expert"] == "expert-tiny" and extension["decoding"]["max_tokens"] == {
        "value": 6,
        "source": "request",
    }
    versioned = client(live).chat.completions.create(
        model="expert-tiny@0.1.0", messages=messages, max_tokens=6, temperature=0
    )
    assert versioned.choices[0].message.content == choice.message.content  # greedy: the same answer


def test_completions_and_n_choices_with_seeds(live) -> None:
    response = client(live).completions.create(
        model="expert-tiny", prompt="SELECT", max_tokens=5, temperature=1.0, seed=7, n=3
    )
    assert response.object == "text_completion" and len(response.choices) == 3
    assert [c.index for c in response.choices] == [0, 1, 2]
    again = client(live).completions.create(
        model="expert-tiny", prompt="SELECT", max_tokens=5, temperature=1.0, seed=7, n=3
    )
    assert [c.text for c in again.choices] == [c.text for c in response.choices]
    assert 3 <= response.usage.completion_tokens <= 15  # three choices of at most 5 tokens each


def test_streaming_matches_the_full_answer_and_ends_with_done(live) -> None:
    messages = [{"role": "user", "content": "Count to three."}]
    full = client(live).chat.completions.create(model="expert-tiny", messages=messages, max_tokens=8, temperature=0)
    stream = client(live).chat.completions.create(
        model="expert-tiny",
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens
    with httpx.stream(
        "POST",
        f"{live.url}/v1/chat/completions",
        json={"model": "expert-tiny", "messages": messages, "max_tokens": 3, "stream": True},
    ) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert events[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert [list(e) for e in events[:-1]] == [["id", "object", "created", "model", "choices"]] * (len(events) - 1)
    assert list(events[-1]) == ["id", "object", "created", "model", "choices", "expertkit"]  # no nulls sent
    assert events[-1]["choices"][0]["delta"] == {} and events[-1]["choices"][0]["finish_reason"]


def test_health_and_raw_model_list_shapes(live) -> None:
    health = httpx.get(f"{live.url}/health").json()
    assert health == {"status": "ok", "queue_depth": 0}
    cards = httpx.get(f"{live.url}/v1/models").json()
    assert cards["object"] == "list" and [c["object"] for c in cards["data"]] == ["model"] * 3
    assert cards["data"][0]["parent"] is None and cards["data"][1]["signer"] is None


def test_json_schema_response_format_is_enforced(live) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": "^[a-z]{0,6}$"}, "ok": {"type": "boolean"}},
        "required": ["name", "ok"],
        "additionalProperties": False,
    }
    for seed in range(5):
        response = client(live).chat.completions.create(
            model="expert-tiny",
            messages=[{"role": "user", "content": "Give me JSON."}],
            max_tokens=64,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}},
        )
        content = response.choices[0].message.content
        jsonschema.validate(json.loads(content), schema)
        assert response.model_extra["expertkit"]["validation"][0]["valid"] is True


def test_json_object_response_format(live) -> None:
    response = client(live).chat.completions.create(
        model="expert-tiny",
        messages=[{"role": "user", "content": "JSON please"}],
        max_tokens=96,
        temperature=0.8,
        seed=1,
        response_format={"type": "json_object"},
    )
    content = response.choices[0].message.content
    if response.choices[0].finish_reason == "stop":
        json.loads(content)
    else:
        assert response.model_extra["expertkit"]["validation"][0]["valid"] is False


@pytest.mark.parametrize("model", ["auto"])
def test_auto_with_one_expert_uses_it(live, model: str) -> None:
    response = client(live).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert response.model_extra["expertkit"]["expert"] == "expert-tiny"


def test_one_access_log_line_per_request_without_key_or_prompt(serve_app, tmp_path, caplog) -> None:
    import logging

    key = tmp_path / "key.txt"
    key.write_text("sekrit-key-123\n")
    live = serve_app(api_key_file=key)
    headers = {"Authorization": "Bearer sekrit-key-123"}
    body = {"model": "expert-tiny", "messages": [{"role": "user", "content": "private question"}], "max_tokens": 3}
    with caplog.at_level(logging.INFO, logger="expertkit.serve.access"):
        assert httpx.post(f"{live.url}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code == 200
        assert httpx.get(f"{live.url}/nowhere", headers=headers, timeout=10).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "expertkit.serve.access"]
    assert len(lines) == 2
    assert lines[0].startswith("POST /v1/chat/completions model=expert-tiny status=200 tokens=")
    assert "latency_ms=" in lines[0] and lines[1].startswith("GET unmatched model=- status=404")
    assert not any("sekrit" in line or "private question" in line for line in lines)
    logged = serve_app(log_prompts=True)
    with caplog.at_level(logging.INFO, logger="expertkit.serve.access"):
        httpx.post(f"{logged.url}/v1/chat/completions", json=body, timeout=60)
    assert "prompt='private question'" in caplog.records[-1].getMessage()
