"""``tools``, ``tool_choice``, parallel calls, tool history and log-probabilities through the official
``openai`` client, on the tiny expert with a tools contract (``training.decoding.tools``)."""

from __future__ import annotations

import json
import math

import httpx
import jsonschema
import openai
import pytest

from unit.serve.conftest import LiveServer

UNIT = {"type": "string", "enum": ["celsius", "fahrenheit"]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {
            "type": "object",
            "properties": {"unit": UNIT, "days": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["unit", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"utc": {"type": "boolean"}},
            "required": ["utc"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "Weather?"}]


def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def create(live: LiveServer, **body):
    body = {
        "model": "expert-tools",
        "messages": ASK,
        "tools": [WEATHER, CLOCK],
        "temperature": 0,
        "max_tokens": 60,
        **body,
    }
    return client(live).chat.completions.create(**body)


def schema_of(name: str) -> dict:
    return next(t["function"]["parameters"] for t in (WEATHER, CLOCK) if t["function"]["name"] == name)


def assert_valid_calls(message, names: set[str]) -> None:
    assert message.content is None and message.tool_calls
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), schema_of(call.function.name))


def test_required_and_named_choices_give_calls_that_satisfy_the_schemas(tools_live) -> None:
    required = create(tools_live, tool_choice="required")
    assert required.choices[0].finish_reason == "tool_calls"
    assert_valid_calls(required.choices[0].message, {"get_weather", "get_time"})
    named = create(tools_live, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert_valid_calls(named.choices[0].message, {"get_time"})
    single = create(tools_live, tool_choice="required", parallel_tool_calls=False)
    assert len(single.choices[0].message.tool_calls) == 1


def test_none_answers_in_text_and_auto_is_consistent(tools_live) -> None:
    text = create(tools_live, tool_choice="none", max_tokens=8)
    assert text.choices[0].message.tool_calls is None and isinstance(text.choices[0].message.content, str)
    assert text.choices[0].finish_reason in ("stop", "length")
    auto = create(tools_live)
    choice = auto.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls(choice.message, {"get_weather", "get_time"})
    else:
        assert not (choice.message.content or "").lstrip().startswith(("{", "["))


def test_streamed_tool_calls_reassemble_to_the_same_call(tools_live) -> None:
    whole = create(tools_live, tool_choice="required").choices[0].message.tool_calls
    chunks = list(create(tools_live, tool_choice="required", stream=True))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                assert entry["id"] is None, "id and name come once, first"
                entry["id"], entry["name"] = delta.id, delta.function.name
            entry["arguments"] += delta.function.arguments or ""
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in whole
    ]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_a_tool_result_turn_is_rendered_and_unknown_ids_are_refused(tools_live) -> None:
    first = create(tools_live, tool_choice="required").choices[0].message
    call = first.tool_calls[0]
    history = [*ASK, first.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "21"}]
    second = create(tools_live, messages=history, tool_choice="none", max_tokens=5)
    assert second.choices[0].message.content is not None
    wrong = [*history[:2], {"role": "tool", "tool_call_id": "call_unknown", "content": "21"}]
    with pytest.raises(openai.BadRequestError) as refused:
        create(tools_live, messages=wrong)
    assert refused.value.body["param"] == "messages[2].tool_call_id"


def test_auto_model_with_tools_routes_to_the_expert_that_declares_tools(tools_live) -> None:
    response = create(tools_live, model="auto", tool_choice="required")
    assert response.model == "expert-tools" and response.model_extra["expertkit"]["expert"] == "expert-tools"


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}, "$ref"),
        ({"type": "object", "properties": {"a": {"$ref": "#"}}}, "$ref"),
        ({"type": "object", "properties": {"a": {"type": "no-such-type"}}}, "not a valid JSON Schema"),
    ],
)
def test_hostile_tool_schemas_are_refused(tools_live, parameters, fragment) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    body = {"model": "expert-tools", "messages": ASK, "tools": [tool], "tool_choice": "required"}
    response = httpx.post(f"{tools_live.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]


def test_chat_logprobs_are_log_probabilities_and_greedy_picks_the_top_one(tools_live) -> None:
    response = client(tools_live).chat.completions.create(
        model="expert-tiny", messages=ASK, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert 1 <= len(content) <= 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-6)
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
    assert joined == response.choices[0].message.content
    streamed = client(tools_live).chat.completions.create(
        model="expert-tiny", messages=ASK, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, stream=True
    )
    pieces = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    # The same tokens, and log-probabilities equal up to fp32 rounding: the second request reuses the
    # first one's cached prompt keys (the prefix cache), computed in another order.
    assert [e.token for e in pieces] == [e.token for e in content]
    assert all(math.isclose(a.logprob, b.logprob, abs_tol=1e-5) for a, b in zip(pieces, content, strict=True))


def test_logprobs_follow_the_grammar_mask_and_completions_use_the_legacy_shape(tools_live) -> None:
    call = create(tools_live, tool_choice="required", logprobs=True, top_logprobs=5).choices[0]
    first = call.logprobs.content[0]
    assert first.token == "[" and math.isclose(first.logprob, 0.0, abs_tol=1e-6)  # the list format forces "["
    assert [t.token for t in first.top_logprobs] == ["["]  # nothing the grammar forbids is offered
    text = (
        client(tools_live)
        .completions.create(model="expert-tiny", prompt="SELECT", max_tokens=4, temperature=0, logprobs=2)
        .choices[0]
    )
    assert len(text.logprobs.tokens) == len(text.logprobs.token_logprobs) == len(text.logprobs.text_offset)
    assert "".join(text.logprobs.tokens) == text.text
    assert all(len(top) <= 2 for top in text.logprobs.top_logprobs)


RESPONSE_TOOLS = [{"type": "function", **tool["function"]} for tool in (WEATHER, CLOCK)]


def respond(live: LiveServer, **body):
    body = {"model": "expert-tools", "input": "Weather?", "temperature": 0, "max_output_tokens": 60, **body}
    return client(live).responses.create(**body)


def test_responses_api_answers_text_and_function_calls(tools_live) -> None:
    text = respond(tools_live, model="expert-tiny", max_output_tokens=6, instructions="Be brief.")
    assert text.object == "response" and text.status in ("completed", "incomplete")
    assert [item.type for item in text.output] == ["message"] and isinstance(text.output_text, str)
    assert text.usage.output_tokens <= 6 and text.instructions == "Be brief."
    called = respond(tools_live, tools=RESPONSE_TOOLS, tool_choice="required")
    assert called.status == "completed" and {item.type for item in called.output} == {"function_call"}
    for item in called.output:
        assert item.call_id.startswith("call_") and item.id.startswith("fc_")
        jsonschema.validate(json.loads(item.arguments), schema_of(item.name))
    follow_up = [
        {"role": "user", "content": "Weather?"},
        *[
            {"type": "function_call", "call_id": i.call_id, "name": i.name, "arguments": i.arguments}
            for i in called.output
        ],
        {"type": "function_call_output", "call_id": called.output[0].call_id, "output": "sunny"},
    ]
    second = respond(tools_live, input=follow_up, tools=RESPONSE_TOOLS, tool_choice="none", max_output_tokens=5)
    assert second.output[0].type == "message"


def test_responses_stream_is_the_typed_event_sequence_of_the_same_response(tools_live) -> None:
    whole = respond(tools_live, tools=RESPONSE_TOOLS, tool_choice="required")
    events = list(respond(tools_live, tools=RESPONSE_TOOLS, tool_choice="required", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = events[-1].response
    assert [(i.name, i.arguments) for i in streamed.output] == [(i.name, i.arguments) for i in whole.output]
    for index, item in enumerate(streamed.output):
        deltas = [
            e.delta for e in events if e.type == "response.function_call_arguments.delta" and e.output_index == index
        ]
        assert "".join(deltas) == item.arguments
        added = next(e for e in events if e.type == "response.output_item.added" and e.output_index == index)
        assert (added.item.id, added.item.call_id) == (item.id, item.call_id)
    text_events = list(respond(tools_live, model="expert-tiny", max_output_tokens=6, stream=True))
    final = text_events[-1].response
    deltas = "".join(e.delta for e in text_events if e.type == "response.output_text.delta")
    assert deltas == final.output[0].content[0].text


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"store": True}, "store"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
    ],
)
def test_responses_api_refuses_what_it_does_not_do_by_name(tools_live, extra, param) -> None:
    body = {"model": "expert-tiny", "input": "hi", **extra}
    response = httpx.post(f"{tools_live.url}/v1/responses", json=body, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
