"""An expert's tools contract applied to a conversation: the tool list and the history rendered the
way the expert was trained to read them (``training.decoding.tools``), and past calls written back
in its call format.

A server receives OpenAI-shaped tools and messages; the expert was trained on one prompt shape
(``expert-json``: a system line, then ``Functions: [...]`` and the question in the first user turn).
Rendering here is the one place that maps the first onto the second, so the prompt a client's
request becomes is the prompt ``expert-cli eval`` scores.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from expertkit.manifest.sections import ToolsContract

JSON_SCHEMA_TO_BFCL = {"object": "dict", "number": "float"}
BFCL_TO_JSON_SCHEMA: dict[str, str | None] = {"dict": "object", "float": "number", "double": "number"}
BFCL_TO_JSON_SCHEMA |= {"tuple": "array", "long": "integer", "char": "string", "any": None}


class ToolError(ValueError):
    """A request's tools, tool choice or tool history that cannot be honoured; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolChoice:
    """``auto`` (a call or text), ``none`` (text), ``required`` (a call), or ``function`` (a call to ``name``)."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None


@dataclass(frozen=True)
class Call:
    """One tool call: the tool's name and its arguments exactly as generated (JSON text)."""

    name: str
    arguments: str
    id: str = ""

    def parsed(self) -> Any:
        return json.loads(self.arguments) if self.arguments.strip() else {}


_PLACEHOLDER = re.compile(r"\{(functions|question|name|content)\}")


def fill(template: str, **values: str) -> str:
    """``template`` with its ``{placeholders}`` replaced in one pass (a value's own braces stay as written)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def restyle(schema: Any, mapping: dict[str, str | None] | dict[str, str]) -> Any:
    """``schema`` with every ``type`` name renamed by ``mapping`` (a ``None`` target drops the type)."""
    if isinstance(schema, list):
        return [restyle(item, mapping) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str) and value in mapping:
            if mapping[value] is not None:
                out[key] = mapping[value]
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: restyle(sub, mapping) for name, sub in value.items()}
        else:
            out[key] = restyle(value, mapping)
    return out


def tool_list_text(contract: ToolsContract, tools: list[Tool]) -> str:
    """The tool list as the expert saw it in training: compact JSON of name, description, parameters."""
    entries = []
    for tool in tools:
        parameters = tool.parameters
        if contract.setting("schema_style") == "bfcl":
            parameters = restyle(parameters, {**JSON_SCHEMA_TO_BFCL})
        entries.append({"name": tool.name, "description": tool.description, "parameters": parameters})
    return json.dumps(entries, ensure_ascii=False, separators=(",", ":"))


def call_text(contract: ToolsContract, calls: list[Call]) -> str:
    """Past calls written in the expert's call format (how an assistant turn with calls is shown)."""
    bodies = [{"name": c.name, "arguments": c.parsed()} for c in calls]
    single = contract.setting("call_format") == "object" or (
        contract.setting("call_format") == "object-or-list" and len(bodies) == 1
    )
    return json.dumps(bodies[0] if single else bodies, ensure_ascii=False)


def render_conversation(
    contract: ToolsContract, tools: list[Tool], messages: list[dict[str, Any]]
) -> list[dict[str, str]]:
    """The chat messages the expert reads for ``messages`` (OpenAI roles, ``tool_calls`` and ``tool``
    turns included) with ``tools`` declared.

    Raises:
        ToolError: a ``tool`` message answers no earlier call, or a past call's arguments are not JSON.
    """
    client_system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    system = "\n\n".join(part for part in (contract.setting("system"), client_system) if part)
    out = [{"role": "system", "content": system}] if system else []
    names: dict[str, str] = {}
    functions, first = tool_list_text(contract, tools), True
    for index, message in enumerate(messages):
        role, content = message["role"], message.get("content") or ""
        if role == "user":
            if first:
                content = fill(contract.setting("user_template"), functions=functions, question=content)
                first = False
            out.append({"role": "user", "content": content})
        elif role == "assistant":
            calls = message.get("tool_calls") or []
            for call in calls:
                names[call.id] = call.name
                try:
                    call.parsed()
                except json.JSONDecodeError as exc:
                    param = f"messages[{index}].tool_calls"
                    raise ToolError(f"{param}: arguments of {call.name!r} are not JSON ({exc.msg})", param) from exc
            out.append({"role": "assistant", "content": call_text(contract, calls) if calls else content})
        elif role == "tool":
            call_id = message.get("tool_call_id") or ""
            if call_id not in names:
                param = f"messages[{index}].tool_call_id"
                raise ToolError(f"{param}: {call_id!r} answers no earlier assistant tool call", param)
            result = fill(contract.setting("result_template"), name=names[call_id], content=content)
            out.append({"role": "user", "content": result})
    return out
