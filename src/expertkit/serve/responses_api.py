"""The Responses API (``POST /v1/responses``), stateless: a request is translated into the chat
request it means (instructions as the system turn, input items as messages, function tools as
tools), runs through the same flow (routing, tools contract, grammar, validation), and its
outcome is shaped into ``output`` items of type ``message`` and ``function_call``.

Nothing is stored: ``store`` must be false or left out, and ``previous_response_id`` is refused
(send the whole conversation as ``input``). Fields this server does not implement are refused by
name, never silently dropped.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expertkit.serve import completions as comp
from expertkit.serve.errors import APIError
from expertkit.serve.protocol import TOOL_NAME, ChatCompletionRequest
from expertkit.serve.responses import ResponseBody, ToolCallBody

# Accepted and without effect on the answer (bookkeeping fields clients send by default).
IGNORED = frozenset({"metadata", "user", "safety_identifier", "prompt_cache_key", "service_tier", "truncation"})


class InputPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text", "output_text", "text"]
    text: str


class InputItem(BaseModel):
    """A message (``role`` + ``content``), a past ``function_call``, or a ``function_call_output``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message", "function_call", "function_call_output"] = "message"
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: str | list[InputPart] | None = None
    call_id: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, pattern=TOOL_NAME)
    arguments: str | None = None
    output: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(BaseModel):
    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME)


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    include: list[str] | None = None  # extra output this server does not produce: only an empty list


def _refuse(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported")


def _messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": body.instructions}] if body.instructions else []
    items = [InputItem(role="user", content=body.input)] if isinstance(body.input, str) else body.input
    for index, item in enumerate(items):
        if item.type == "function_call":
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)  # consecutive calls are one parallel turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item.type == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output or ""})
        elif item.role is None:
            raise APIError(400, f"input[{index}] is a message without a role", param=f"input[{index}]")
        else:
            messages.append({"role": item.role, "content": item.text()})
    return messages


def _function(tool: FunctionTool) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.description or "", "parameters": tool.parameters}


def to_chat(body: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request a Responses request means.

    Raises:
        APIError: a field this server does not implement, stored state, or an invalid translation.
    """
    for key in sorted(body.model_extra or {}):
        if key not in IGNORED:
            raise _refuse(key, f"{key} is not supported by this server")
    if body.include:
        raise _refuse(
            "include", f"include {body.include[0]!r} is not supported by this server (send [] or leave it out)"
        )
    if body.store:
        raise _refuse("store", "this server keeps no responses: send store: false (or leave it out)")
    if body.previous_response_id is not None:
        message = "this server is stateless and keeps no responses: send the whole conversation as input"
        raise _refuse("previous_response_id", message)
    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description or "", "parameters": t.parameters},
        }
        for t in body.tools or []
    ]
    choice = body.tool_choice
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": _messages(body),
        "tools": tools or None,
        "tool_choice": {"type": "function", "function": {"name": choice.name}}
        if isinstance(choice, NamedFunctionChoice)
        else choice,
        "parallel_tool_calls": body.parallel_tool_calls,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": body.stream,
    }
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise APIError(400, f"{where}: {first.get('msg')}", param=where or None, code="invalid_value") from exc


class ResponseObject(ResponseBody):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress"]
    incomplete_details: dict[str, str] | None = None
    error: dict[str, Any] | None = None
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


@dataclass
class Announced:
    """The item and call ids a stream already sent, which the final response must repeat."""

    message_id: str | None = None
    call_items: list[str] = field(default_factory=list)
    call_ids: list[str] = field(default_factory=list)


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def message_item(ident: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": ident, "status": status, "role": "assistant", "content": content}


def call_item(ident: str, call: ToolCallBody, status: str = "completed") -> dict[str, Any]:
    function = call.function
    return {
        "type": "function_call",
        "id": ident,
        "call_id": call.id,
        "name": function.name,
        "arguments": function.arguments,
        "status": status,
    }


def echo(body: ResponsesRequest) -> dict[str, Any]:
    """The request settings a response object repeats."""
    choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, BaseModel) else body.tool_choice or "auto"
    return {
        "instructions": body.instructions,
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
        "tool_choice": choice,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "max_output_tokens": body.max_output_tokens,
        "store": False,
        "metadata": body.metadata or {},
        "text": {"format": {"type": "text"}},
    }


def usage_of(outcome: comp.Outcome) -> dict[str, Any]:
    usage = outcome.usage()
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def response_object(
    body: ResponsesRequest,
    outcome: comp.Outcome,
    ident: str | None = None,
    created: int | None = None,
    announced: Announced | None = None,
) -> ResponseObject:
    """The finished response; a stream passes the ids it already announced for its items."""
    answer = outcome.answers[0]
    length = answer.result.finish_reason == "length"
    calls = outcome.tools.calls(answer.text, answer.result.finish_reason) if outcome.tools else None
    status = "incomplete" if length else "completed"
    known = announced or Announced()
    if calls:
        output = []
        for index, call in enumerate(calls):
            streamed = index < len(known.call_items)
            call.id = known.call_ids[index] if streamed else call.id
            output.append(call_item(known.call_items[index] if streamed else item_id("fc"), call))
    else:
        output = [message_item(known.message_id or item_id("msg"), answer.text, status)]
    return ResponseObject(
        id=ident or item_id("resp"),
        created_at=created or comp.now(),
        status=status,
        incomplete_details={"reason": "max_output_tokens"} if length else None,
        model=outcome.target.model_id,
        output=output,
        usage=usage_of(outcome),
        expertkit=outcome.extension().to_json(),
        **echo(body),
    )
