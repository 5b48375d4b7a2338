"""What the server answers, as types: OpenAI's response, stream-chunk, model-list and error shapes,
plus the ``expertkit`` extension (which expert answered, how it was routed, validated and decoded).

Each model's ``to_json()`` is the exact body sent; fields OpenAI leaves out of a message (a
chunk's ``usage`` and ``expertkit`` until the last one) are left out here too, not sent as null.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _unset(value: Any) -> bool:
    return value is None


class ResponseBody(BaseModel):
    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Usage(ResponseBody):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ValidationRecord(ResponseBody):
    valid: bool
    error: str | None = None


class ExpertkitExtension(ResponseBody):
    """Which expert answered (``None``: the base model), the routing decision for ``auto``, each
    choice's validation and attempts, and the decoding settings with where each came from."""

    expert: str | None
    routing: dict[str, Any] | None
    validation: list[ValidationRecord]
    decoding: dict[str, Any]
    attempts: list[int]


class FunctionCallBody(ResponseBody):
    name: str
    arguments: str  # JSON text, exactly as generated


class ToolCallBody(ResponseBody):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallBody


class AssistantMessage(ResponseBody):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallBody] | None = Field(default=None, exclude_if=_unset)


class TopLogprob(ResponseBody):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobBody(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(ResponseBody):
    content: list[TokenLogprobBody]


class TextLogprobs(ResponseBody):
    """The legacy completions shape: parallel lists, and each token's alternatives as a mapping."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatChoice(ResponseBody):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class TextChoice(ResponseBody):
    index: int
    text: str
    logprobs: TextLogprobs | None = None
    finish_reason: str


class ChatCompletion(ResponseBody):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    expertkit: ExpertkitExtension


class TextCompletion(ResponseBody):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    expertkit: ExpertkitExtension


class ChunkChoice(ResponseBody):
    """A stream chunk's choice: ``delta`` for chat (``role`` first, then ``content`` pieces), ``text``
    for text completions."""

    index: int = 0
    delta: dict[str, Any] | None = Field(default=None, exclude_if=_unset)
    text: str | None = Field(default=None, exclude_if=_unset)
    logprobs: ChatLogprobs | TextLogprobs | None = None
    finish_reason: str | None = None


class CompletionChunk(ResponseBody):
    id: str
    object: Literal["chat.completion.chunk", "text_completion"]
    created: int
    model: str
    choices: list[ChunkChoice]
    expertkit: ExpertkitExtension | None = Field(default=None, exclude_if=_unset)
    usage: Usage | None = Field(default=None, exclude_if=_unset)


class ModelCard(ResponseBody):
    """One entry of ``/v1/models``; experts add ``version``, ``adapter_type`` and the verified ``signer``."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "expertkit"
    parent: str | None = None


class ModelList(ResponseBody):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(ResponseBody):
    status: Literal["ok", "shutting_down"]
    queue_depth: int


class ErrorDetail(ResponseBody):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(ResponseBody):
    error: ErrorDetail
