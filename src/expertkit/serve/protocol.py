"""The OpenAI request shapes we accept (chat completions, completions), validated by pydantic.

Unknown fields are ignored, as OpenAI-compatible servers do, except options we cannot honour
(the legacy ``functions``), which are refused by name rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from expertkit.runtime.settings import DecodingOverrides

MAX_N = 8
MAX_STOPS = 8
MAX_STOP_CHARS = 128  # each stop string is searched for after every token: bound the work
MAX_TOOLS = 128
MAX_TOP_LOGPROBS = 20
TOOL_NAME = r"^[A-Za-z0-9_.-]{1,64}$"  # OpenAI's names, plus dots (BFCL's ``math.sum``)


def lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone UTF-16 surrogate (``"\\ud800"`` in JSON), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=TOOL_NAME)
    arguments: str


class MessageToolCall(BaseModel):
    """A call an assistant turn made, as the client sends it back in the history."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (only an assistant turn with tool_calls may omit it)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        """The message's text; content parts must all be text parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = "response"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=TOOL_NAME)
    description: str = Field(default="", max_length=4096)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str = Field(pattern=TOOL_NAME)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: NamedFunction


ToolChoiceField = Literal["auto", "none", "required"] | NamedToolChoice


class ExpertkitOptions(BaseModel):
    """Namespaced extensions: turn the expert's own grammar or validator off for one request."""

    model_config = ConfigDict(extra="forbid")

    use_grammar: bool = True
    validate_output: bool = Field(default=True, alias="validate")
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    functions: list[Any] | None = None  # the legacy form of tools: refused by name
    expertkit: ExpertkitOptions = Field(default_factory=ExpertkitOptions)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS or lone_surrogate(s) for s in stops):
            raise ValueError(f"at most {MAX_STOPS} stop sequences of 1 to {MAX_STOP_CHARS} characters (valid UTF-8)")
        return value

    def unsupported(self) -> str | None:
        return "functions" if self.functions else None

    def top_logprobs_wanted(self) -> int | None:
        """How many alternatives to report per token; ``None``: no log-probabilities."""
        return None

    def overrides(self) -> DecodingOverrides:
        """Request parameters as decoding overrides (``None`` leaves the expert's manifest value)."""
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.expertkit.top_k,
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "stop_sequences": stops,
            "seed": self.seed,
            "repetition_penalty": self.expertkit.repetition_penalty,
        }

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoiceField | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: list[ToolDefinition] | None) -> list[ToolDefinition] | None:
        if tools and len({t.function.name for t in tools}) != len(tools):
            raise ValueError("each function name must be unique")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _choice_needs_tools(cls, choice: ToolChoiceField | None, info: ValidationInfo) -> ToolChoiceField | None:
        if choice not in (None, "none", "auto") and not info.data.get("tools"):
            raise ValueError("tool_choice needs tools")
        return choice

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return top


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)  # OpenAI's legacy completions allow at most 5

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("prompt must be one string (batches of prompts are not supported)")
        return self.prompt[0]
