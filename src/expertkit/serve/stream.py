"""A streamed answer as OpenAI chunks: text as ``content`` deltas, a tool call as ``tool_calls``
deltas (id and name first, then the arguments in pieces), and each token's log-probabilities on
the chunk that carries its text (never ahead of it: a token that turns out to be part of a stop
string is held back with its text and never sent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from expertkit.runtime.generate import TokenLogprob
from expertkit.serve import completions as comp
from expertkit.serve.logprobs import TokenTexts, chat_logprobs, text_logprobs
from expertkit.serve.responses import ChatLogprobs, CompletionChunk, TextLogprobs
from expertkit.serve.tool_calls import ToolCallStream, ToolPlan


@dataclass
class StreamSpec:
    target: comp.Target
    messages: list[dict[str, str]]
    ask_extra: dict[str, Any]
    ident: str
    created: int
    chat: bool
    tools: ToolPlan | None = None


class StreamWriter:
    def __init__(self, spec: StreamSpec, texts: TokenTexts) -> None:
        self.spec, self.texts = spec, texts
        self.tools = ToolCallStream(spec.tools) if spec.tools is not None else None
        self.text = ""
        self.pending: list[tuple[TokenLogprob, int]] = []
        self.sent_logprobs = 0
        self.token_offset = 0  # where the next token's text starts (completions' text_offset)

    def chunk(
        self, delta: dict[str, Any], finish: str | None = None, logprobs: list[TokenLogprob] | None = None
    ) -> CompletionChunk:
        spec = self.spec
        made = comp.chunk(spec.ident, spec.created, spec.target.model_id, delta, finish, spec.chat)
        if logprobs:
            made.choices[0].logprobs = self._logprobs(logprobs)
        return made

    def _logprobs(self, entries: list[TokenLogprob]) -> ChatLogprobs | TextLogprobs:
        if self.spec.chat:
            return chat_logprobs(self.texts, entries)
        shaped = text_logprobs(self.texts, entries, self.token_offset)
        self.token_offset += sum(len(token) for token in shaped.tokens)
        return shaped

    def _due(self, limit: int | None = None) -> list[TokenLogprob]:
        """Pending entries whose text has been sent (or the first ``limit`` of them)."""
        count = 0
        for _, start in self.pending:
            if (limit is None and start >= len(self.text)) or (limit is not None and count >= limit):
                break
            count += 1
        due, self.pending = [e for e, _ in self.pending[:count]], self.pending[count:]
        self.sent_logprobs += len(due)
        return due

    def event(self, kind: Literal["text", "logprob"] | str, value: Any) -> list[CompletionChunk]:
        if kind == "logprob":
            self.pending.append(value)
            return []
        self.text += value
        due = self._due()
        if self.tools is not None:
            deltas = self.tools.push(value)
            if self.tools.is_call():
                return [self.chunk({"tool_calls": deltas}, logprobs=due)] if deltas or due else []
        return [self.chunk({"content": value}, logprobs=due)]

    def finish(self, outcome: comp.Outcome) -> list[CompletionChunk]:
        """The rest of the text (held back until the end), then the closing chunk with the finish reason."""
        answer = outcome.answers[0]
        out = []
        if answer.text.startswith(self.text) and len(answer.text) > len(self.text):
            out += self.event("text", answer.text[len(self.text) :])
        total = len(answer.result.logprobs or [])
        rest = self._due(limit=max(0, total - self.sent_logprobs))
        calls = outcome.tools.calls(answer.text, answer.result.finish_reason) if outcome.tools else None
        finish = "tool_calls" if calls else comp.FINISH[answer.result.finish_reason]
        last = self.chunk({}, finish, logprobs=rest)
        out.append(last.model_copy(update={"expertkit": outcome.extension()}))
        return out
