"""The OpenAI request shapes we accept (chat completions, completions), validated by pydantic.

Unknown fields are ignored, as OpenAI-compatible servers do, except options we cannot honour
(``logprobs``, ``tools``), which are refused by name rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from expertkit.runtime.settings import DecodingOverrides

MAX_N = 8
MAX_STOPS = 8
MAX_STOP_CHARS = 128  # each stop string is searched for after every token: bound the work


def lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone UTF-16 surrogate (``"\\ud800"`` in JSON), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The message's text; content parts must all be text parts."""
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
    logprobs: bool | None = None
    tools: list[Any] | None = None
    expertkit: ExpertkitOptions = Field(default_factory=ExpertkitOptions)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS or lone_surrogate(s) for s in stops):
            raise ValueError(f"at most {MAX_STOPS} stop sequences of 1 to {MAX_STOP_CHARS} characters (valid UTF-8)")
        return value

    def unsupported(self) -> str | None:
        if self.logprobs:
            return "logprobs"
        if self.tools:
            return "tools"
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


class CompletionRequest(SamplingFields):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("prompt must be one string (batches of prompts are not supported)")
        return self.prompt[0]
