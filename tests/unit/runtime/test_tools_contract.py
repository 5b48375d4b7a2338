"""The tools contract without a model: prompt rendering, call schemas, and reading calls back."""

from __future__ import annotations

import json

import jsonschema
import pytest

from expertkit.eval.tasks import function_messages
from expertkit.manifest.sections import ToolsContract
from expertkit.runtime.tools import (
    BFCL_TO_JSON_SCHEMA,
    Call,
    CallScanner,
    Tool,
    ToolChoice,
    ToolError,
    call_schema,
    parse_calls,
    render_conversation,
    restyle,
)

BFCL_FUNCTION = {
    "name": "math.sum",
    "description": "Add numbers.",
    "parameters": {
        "type": "dict",
        "properties": {"numbers": {"type": "array", "items": {"type": "float"}}, "places": {"type": "integer"}},
        "required": ["numbers"],
    },
}


def as_tool(function: dict) -> Tool:
    return Tool(function["name"], function["description"], restyle(function["parameters"], BFCL_TO_JSON_SCHEMA))


def test_a_bfcl_item_through_tools_renders_exactly_the_prompt_eval_scores() -> None:
    contract = ToolsContract(schema_style="bfcl")
    question = "Add 1 and {question} 2."
    rendered = render_conversation(contract, [as_tool(BFCL_FUNCTION)], [{"role": "user", "content": question}])
    assert rendered == function_messages([BFCL_FUNCTION], question)


def test_history_with_calls_results_and_a_client_system_line() -> None:
    contract = ToolsContract(call_format="object-or-list", result_template="Result of {name}: {content}")
    calls = [Call("f", '{"a": 1}', "call_1"), Call("g", "{}", "call_2")]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Do it."},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_2", "content": "{content} 7"},
    ]
    rendered = render_conversation(contract, [Tool("f"), Tool("g")], messages)
    assert rendered[0]["content"].endswith("\n\nBe brief.")
    assert rendered[2] == {
        "role": "assistant",
        "content": '[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]',
    }
    assert rendered[3] == {"role": "user", "content": "Result of g: {content} 7"}
    with pytest.raises(ToolError) as unknown:
        render_conversation(
            contract, [Tool("f")], [*messages[:3], {"role": "tool", "tool_call_id": "x", "content": ""}]
        )
    assert unknown.value.param == "messages[3].tool_call_id"


PARAMS = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize(
    ("call_format", "parallel", "good", "bad"),
    [
        ("object", True, {"name": "f", "arguments": {"n": 1}}, [{"name": "f", "arguments": {"n": 1}}]),
        ("list", False, [{"name": "g", "arguments": {}}], [{"name": "f", "arguments": {"n": 1}}] * 2),
        ("list", True, [{"name": "f", "arguments": {"n": 1}}] * 2, []),
        ("object-or-list", True, [{"name": "f", "arguments": {"n": 1}}] * 2, {"name": "h", "arguments": {}}),
        ("object-or-list", False, {"name": "f", "arguments": {"n": 2}}, {"name": "f", "arguments": {"n": "2"}}),
    ],
)
def test_call_schemas_follow_the_format_and_the_parallel_flag(call_format, parallel, good, bad) -> None:
    schema = call_schema(
        ToolsContract(call_format=call_format), [Tool("f", "", PARAMS), Tool("g")], ToolChoice("required"), parallel
    )
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_a_named_choice_narrows_to_that_tool_and_an_unknown_name_is_refused() -> None:
    contract, tools = ToolsContract(call_format="object"), [Tool("f", "", PARAMS), Tool("g")]
    schema = call_schema(contract, tools, ToolChoice("function", "g"), True)
    assert schema["properties"]["name"] == {"const": "g"}
    with pytest.raises(ToolError):
        call_schema(contract, tools, ToolChoice("function", "nope"), True)


def test_the_scanner_streams_names_first_and_arguments_that_join_to_the_whole() -> None:
    text = '[{"name": "a", "arguments": {"s": "}{\\"]", "x": [1, {"y": 2}]}}, {"name": "b", "arguments": {}}]'
    scanner, sent = CallScanner(), ["", ""]
    for end in range(1, len(text) + 1):
        scanner.feed(text[:end])
        for index, name in enumerate(scanner.names()):
            assert name is not None or scanner.arguments_so_far(index) == ""
            grown = scanner.arguments_so_far(index)
            assert grown.startswith(sent[index])  # what was streamed is never taken back
            sent[index] = grown
    assert sent == ['{"s": "}{\\"]", "x": [1, {"y": 2}]}', "{}"]
    assert [c.arguments for c in parse_calls(text)] == sent


@pytest.mark.parametrize("text", ["hello", '{"arguments": {}}', '{"name": 3}', "[]", '{"name": "f", "arguments": 1}'])
def test_text_that_is_not_a_call_is_not_parsed_as_one(text) -> None:
    assert parse_calls(text) is None


def test_a_value_before_the_name_does_not_confuse_the_scanner() -> None:
    calls = parse_calls('{"id": 7, "name": "f", "arguments": {"k": null}}')
    assert calls == [Call("f", '{"k": null}')]
    assert json.loads(calls[0].arguments) == {"k": None}


def test_local_refs_are_inlined_within_bounds() -> None:
    from expertkit.runtime.tools.grammar import inline_refs

    defs = {"$defs": {"Unit": {"enum": ["c", "f"]}}, "type": "object", "properties": {"u": {"$ref": "#/$defs/Unit"}}}
    assert inline_refs(defs) == {"type": "object", "properties": {"u": {"enum": ["c", "f"]}}}
    doubling = {f"L{i}": {"type": "array", "prefixItems": [{"$ref": f"#/$defs/L{i + 1}"}] * 2} for i in range(30)}
    bomb = {"$defs": {**doubling, "L30": {"type": "string"}}, "$ref": "#/$defs/L0"}
    with pytest.raises(ToolError, match="20,000 nodes"):
        inline_refs(bomb)
    with pytest.raises(ToolError, match="recursive"):
        inline_refs({"$defs": {"A": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"})
