"""The grammar a tool call is decoded under, built from the request's tool schemas.

A call is a JSON object ``{"name": <a declared tool>, "arguments": <that tool's parameters>}``
(properties in that order, so a stream learns the name before the arguments), or a list of them
when the expert's call format and the request allow parallel calls. ``tool_choice`` ``auto`` adds
one alternative: plain text that does not start like JSON, so the model's first token decides
between answering and calling. The JSON is laid out as ``json.dumps`` writes it (``", "`` and
``": "``, no other blank space), which is how the example experts' answers were written in training
and leaves the model no room to ramble in whitespace. The grammar is Lark with embedded JSON
Schemas (``%json``), compiled by llguidance: one grammar mixes the text alternative with the
schemas, and it compiles lazily (milliseconds for BFCL-sized tool sets).
"""

from __future__ import annotations

import json
from typing import Any

from expertkit.manifest.sections import ToolsContract
from expertkit.runtime.grammar import GrammarSpec
from expertkit.runtime.tools.contract import Tool, ToolChoice, ToolError

# Text under ``auto``: anything that does not open a JSON object or list (nor starts with blank space).
TEXT_LEXEME = r"/[^{\[\s][\s\S]*/"


MAX_INLINE_DEPTH = 32
MAX_INLINE_NODES = 20_000  # references can double a schema at every level: bound what inlining builds


def inline_refs(schema: Any) -> Any:
    """``schema`` with its local ``$ref``s (``#/$defs/...``) replaced by what they point to, so a
    tool's parameters can be embedded inside the call schema (where ``#`` would mean the call's root).

    Raises:
        ToolError: a reference is recursive (or nests deeper than 32), points nowhere, or inlining
            would build more than 20,000 nodes.
    """
    return _inline(schema, schema, 0, [MAX_INLINE_NODES])


def _inline(schema: Any, root: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ToolError("tools: a parameters schema's $refs expand beyond 20,000 nodes", "tools")
    if depth > MAX_INLINE_DEPTH:
        raise ToolError("tools: a parameters schema refers to itself (recursive $ref cannot be inlined)", "tools")
    if isinstance(schema, list):
        return [_inline(item, root, depth, budget) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target: Any = root
        for part in ref.removeprefix("#").strip("/").split("/") if ref.startswith("#") else [None]:
            if part is None or not isinstance(target, dict) or part.replace("~1", "/").replace("~0", "~") not in target:
                raise ToolError(f"tools: $ref {ref!r} does not point inside the same parameters schema", "tools")
            target = target[part.replace("~1", "/").replace("~0", "~")]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return _inline({**target, **rest}, root, depth + 1, budget)
    return {k: _inline(v, root, depth, budget) for k, v in schema.items() if k not in ("$defs", "definitions")}


def one_call_schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": inline_refs(tool.parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def allows_parallel(contract: ToolsContract, parallel: bool) -> bool:
    return parallel and contract.setting("call_format") != "object"


def call_schema(contract: ToolsContract, tools: list[Tool], choice: ToolChoice, parallel: bool) -> dict[str, Any]:
    """The JSON Schema of what may be generated as the call(s) under ``choice``."""
    chosen = tools
    if choice.mode == "function":
        chosen = [t for t in tools if t.name == choice.name]
        if not chosen:
            raise ToolError(f"tool_choice names {choice.name!r}, which is not among the tools", "tool_choice")
    calls = [one_call_schema(t) for t in chosen]
    one: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    form = contract.setting("call_format")
    if form == "object":
        return one
    if form == "list":
        listed: dict[str, Any] = {"type": "array", "items": one, "minItems": 1}
        return listed if allows_parallel(contract, parallel) else {**listed, "maxItems": 1}
    if not allows_parallel(contract, parallel):
        return one
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 2}]}


def tool_grammar(
    contract: ToolsContract, tools: list[Tool], choice: ToolChoice, parallel: bool
) -> tuple[GrammarSpec, dict[str, Any]] | None:
    """The grammar for this request and the call schema inside it; ``None`` for ``tool_choice`` ``none``."""
    if choice.mode == "none":
        return None
    schema = call_schema(contract, tools, choice, parallel)
    layout = {"x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
    body = f"%json {json.dumps({**layout, **schema})}"  # key order kept: name before arguments
    text = f"start: call | TEXT\ncall: {body}\nTEXT: {TEXT_LEXEME}\n" if choice.mode == "auto" else f"start: {body}\n"
    names = ",".join(t.name for t in tools)
    return GrammarSpec("lark", text, f"tools [{names[:200]}] ({choice.mode})"), schema
