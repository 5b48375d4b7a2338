"""OpenAI ``tools`` on the chat API: the request's tools and history rendered under the answering
expert's tools contract, the call grammar, and the calls read back into ``message.tool_calls``
(whole, or as stream deltas: id and name first, then the arguments in pieces).

How ``tool_choice: "auto"`` decides: the grammar allows either a call or plain text that does not
start like JSON, and the model's own first token chooses (greedy: the likelier of the two). An
expert trained only on calls will call; ``eval --via-tools`` on BFCL's irrelevance set measures it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from expertkit.jsonschema_guard import DEFAULT_SCHEMA_LIMITS, SchemaLimits, schema_problem
from expertkit.manifest.sections import DecodingConfig, ToolsContract
from expertkit.runtime.engine import Engine
from expertkit.runtime.grammar import GrammarSpec
from expertkit.runtime.tools import Call, CallScanner, Tool, ToolChoice, ToolError, parse_calls, render_conversation
from expertkit.runtime.tools.grammar import tool_grammar
from expertkit.serve.errors import APIError
from expertkit.serve.protocol import ChatCompletionRequest
from expertkit.serve.responses import FunctionCallBody, ToolCallBody


def tools_contract(engine: Engine, expert: str | None) -> ToolsContract:
    """The answering expert's contract; the base model takes the default one."""
    if expert is None:
        return ToolsContract()
    contract = engine.decoding_of(expert).tools
    if contract is None:
        raise APIError(
            400,
            f"the expert {expert!r} declares no tools contract (training.decoding.tools), so it cannot take tools",
            param="tools",
            code="unsupported",
        )
    return contract


def tool_experts(engine: Engine) -> list[str]:
    return [name for name in engine.experts if engine.decoding_of(name).tools is not None]


def request_tools(body: ChatCompletionRequest, limits: SchemaLimits = DEFAULT_SCHEMA_LIMITS) -> list[Tool]:
    tools = []
    for index, tool in enumerate(body.tools or []):
        function = tool.function
        parameters = function.parameters if function.parameters is not None else {"type": "object", "properties": {}}
        problem = schema_problem(parameters, limits)
        if problem is not None:
            param = f"tools[{index}].function.parameters"
            raise APIError(400, f"{param}: {problem}", param=param, code="invalid_schema")
        tools.append(Tool(function.name, function.description, parameters))
    return tools


def request_choice(body: ChatCompletionRequest) -> ToolChoice:
    choice = body.tool_choice
    if choice is None:
        return ToolChoice("auto")
    if isinstance(choice, str):
        return ToolChoice(choice)
    return ToolChoice("function", choice.function.name)


def history(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as the contract renders them (text content, calls as :class:`Call`)."""
    out = []
    for message in body.messages:
        calls = [Call(c.function.name, c.function.arguments, c.id) for c in message.tool_calls or []]
        role = "system" if message.role == "developer" else message.role
        out.append({"role": role, "content": message.text(), "tool_calls": calls, "tool_call_id": message.tool_call_id})
    return out


@dataclass
class ToolPlan:
    """One request's tools under its expert's contract: the prompt, the grammar and how to check it."""

    contract: ToolsContract
    tools: list[Tool]
    choice: ToolChoice
    messages: list[dict[str, str]]
    grammar: GrammarSpec | None
    schema: dict[str, Any] | None
    ids: list[str] = field(default_factory=list)

    @property
    def validation(self) -> DecodingConfig:
        """Forced calls are checked against the call schema; ``auto`` and ``none`` may be text."""
        if self.choice.mode in ("required", "function") and self.schema is not None:
            return DecodingConfig(validation="json_schema", json_schema=self.schema)
        return DecodingConfig()

    def calls(self, text: str, finish_reason: str) -> list[ToolCallBody] | None:
        """The answer's calls, each with a fresh id; ``None`` when it is text (or a call cut off by length)."""
        if self.choice.mode == "none" or finish_reason == "length":
            return None
        found = parse_calls(text)
        if found is None or any(c.name not in {t.name for t in self.tools} for c in found):
            return None
        return [
            ToolCallBody(id=call_id(), function=FunctionCallBody(name=c.name, arguments=c.arguments)) for c in found
        ]


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def plan_tools(engine: Engine, expert: str | None, body: ChatCompletionRequest, limits: SchemaLimits) -> ToolPlan:
    """Render and constrain a request with ``tools`` for ``expert`` (runs off the event loop)."""
    contract = tools_contract(engine, expert)
    tools, choice = request_tools(body, limits), request_choice(body)
    try:
        messages = render_conversation(contract, tools, history(body))
        built = tool_grammar(contract, tools, choice, body.parallel_tool_calls is not False)
    except ToolError as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_value") from exc
    grammar, schema = built if built is not None else (None, None)
    if schema is not None and (problem := schema_problem(schema, limits)) is not None:
        raise APIError(400, f"tools: the combined call schema: {problem}", param="tools", code="invalid_schema")
    return ToolPlan(contract, tools, choice, messages, grammar, schema)


class ToolCallStream:
    """Turns a streamed answer into OpenAI tool-call deltas, once it is clearly a call."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan, self.scanner, self.text = plan, CallScanner(), ""
        self.sent_names: list[str] = []
        self.sent_arguments: list[int] = []

    def is_call(self) -> bool:
        head = self.text.lstrip()[:1]
        return self.plan.choice.mode != "none" and head in ("{", "[")

    def push(self, piece: str) -> list[dict[str, Any]]:
        """The ``tool_calls`` delta entries the new text allows (empty while undecided)."""
        self.text += piece
        if not self.is_call():
            return []
        self.scanner.feed(self.text)
        deltas: list[dict[str, Any]] = []
        for index, name in enumerate(self.scanner.names()):
            if name is None:
                break
            if index == len(self.sent_names):
                self.sent_names.append(name)
                self.sent_arguments.append(0)
                entry = {"index": index, "id": call_id(), "type": "function"}
                deltas.append({**entry, "function": {"name": name, "arguments": ""}})
            arguments = self.scanner.arguments_so_far(index)
            if len(arguments) > self.sent_arguments[index]:
                deltas.append({"index": index, "function": {"arguments": arguments[self.sent_arguments[index] :]}})
                self.sent_arguments[index] = len(arguments)
        return deltas
