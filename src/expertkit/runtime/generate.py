"""The decode loop: prefill, then one token at a time with sampling, stop sequences, end-of-turn
tokens and ``max_tokens``; optional grammar masking and streaming of text as it is decided.

The loop and a sequence's state are numpy, not torch (see :mod:`expertkit.runtime.sampling`): a
decoder takes token ids as a 1-D int64 array and returns one row of fp32 logits, a numpy array or a
CPU torch tensor (read without a copy), so the ONNX Runtime decoder answers without importing torch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from expertkit.runtime.sampling import Sampler, as_logits, log_softmax
from expertkit.runtime.settings import DecodingSettings
from expertkit.runtime.stops import StopMatcher

FinishReason = Literal["stop", "eos", "length", "grammar"]


class Decoder(Protocol):
    """``forward`` feeds 1-D int64 token ids (a numpy array; the soft prompt's rows in front when
    ``prefix`` is given) and returns the last position's fp32 logits (numpy or a CPU torch tensor)."""

    def new_cache(self, capacity: int) -> Any: ...
    def forward(self, cache: Any, ids: np.ndarray, prefix: Any = None) -> Any: ...


class TokenMask(Protocol):
    """A grammar's view of decoding: which tokens may come next, and accepting the chosen one."""

    def mask(self, logits: np.ndarray) -> np.ndarray: ...
    def allows(self, token: int) -> bool: ...
    def accept(self, token: int) -> None: ...
    def finished(self) -> bool: ...


def constrained_choice(sampler: Sampler, logits: np.ndarray, seen: np.ndarray | None, grammar: TokenMask) -> int:
    """The next token under a grammar. Greedy decoding first tries the unconstrained choice and
    computes the full mask only when the grammar rejects it: the argmax of the masked logits is the
    same token either way, and most steps of a good model need no mask at all."""
    if sampler.settings.temperature == 0:
        token = sampler.choose(logits, seen)
        if grammar.allows(token):
            return token
    return sampler.choose(grammar.mask(logits), seen)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the likeliest alternatives, under the distribution it
    was chosen from (after the grammar mask and the sampling settings)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def token_logprob(log_probs: np.ndarray, token: int, top_n: int) -> TokenLogprob:
    n = max(0, min(top_n, log_probs.size))
    ids = np.argpartition(-log_probs, n - 1)[:n] if n else np.zeros(0, dtype=np.int64)
    ids = ids[np.lexsort((ids, -log_probs[ids]))]  # likeliest first, ties by id
    top = tuple((int(i), float(log_probs[i])) for i in ids if log_probs[i] > float("-inf"))
    return TokenLogprob(token, float(log_probs[token]), top)


@dataclass
class GenerationResult:
    text: str
    finish_reason: FinishReason
    token_ids: list[int]
    prompt_tokens: int
    first_token_s: float
    total_s: float
    logprobs: list[TokenLogprob] | None = None  # per token of ``text``, when the request asked for them

    @property
    def completion_tokens(self) -> int:
        """Generated tokens, the end-of-turn token included (it was sampled and costs a step)."""
        return len(self.token_ids) + (self.finish_reason == "eos")

    @property
    def stopped(self) -> bool:
        """Ended by a stop condition (stop string, end-of-turn token, finished grammar), not by length."""
        return self.finish_reason != "length"


def end_token_ids(tokenizer: Any, model_config: Any = None) -> set[int]:
    """End-of-turn ids: the tokenizer's EOS and the generation config's (may be several)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model_config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured} if configured is not None else set()
    return {int(i) for i in ids if i is not None}


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    settings: DecodingSettings
    end_ids: set[int]
    prefix: Any = None  # the soft prompt's rows [virtual tokens, hidden] (a torch tensor or numpy array)
    grammar: TokenMask | None = None
    on_text: Callable[[str], None] | None = None
    # With a grammar, a stop string only ends generation where the text before it is complete
    # (accepted by the grammar): a ';' inside a SQL string literal is not the end of the query.
    stop_gate: Callable[[str], bool] | None = None
    # Checked before every step: a server sets it when the client has gone or the deadline passed.
    should_stop: Callable[[], bool] | None = None
    expert: str | None = None  # whose adapter decodes it (None: the base model)
    # Token ids never shown in text (the base tokenizer's own special tokens); anything else,
    # including tokens an expert added, is decoded as text. None: every special token is hidden.
    hidden_ids: frozenset[int] | None = None
    # Report each token's log-probability and this many alternatives (None: none are computed).
    top_logprobs: int | None = None
    # Called with each token's log-probabilities and where its text starts (for streaming them).
    on_logprob: Callable[[TokenLogprob, int], None] | None = None


class GenerationCancelledError(Exception):
    """``should_stop`` said to stop: the client disconnected or the request timed out."""


class SequenceState:
    """One generation's decoding state, advanced one token at a time by whoever owns the forward
    passes (the single-sequence loop below, or a batch scheduler stepping many sequences at once)."""

    def __init__(self, tokenizer: Any, request: GenerationRequest) -> None:
        self.request, self.settings = request, request.settings
        self.sampler = Sampler(request.settings)
        self.stops = StopMatcher(tokenizer, request.settings.stop_sequences, request.hidden_ids)
        self.seen = np.asarray(request.prompt_ids, dtype=np.int64)
        self.started = time.perf_counter()
        self.first_token_s, self.text, self.steps = 0.0, "", 0
        self.reason: FinishReason | None = None
        self.logprobs: list[TokenLogprob] = []

    @property
    def capacity(self) -> int:
        virtual = 0 if self.request.prefix is None else int(self.request.prefix.shape[0])
        return virtual + len(self.request.prompt_ids) + self.settings.max_tokens

    def advance(self, logits: Any) -> int | None:
        """Choose the next token from ``logits``; the token to feed next, or ``None`` when finished.

        Raises:
            GenerationCancelledError: ``should_stop`` said so (client gone, deadline passed).
        """
        request = self.request
        if request.should_stop is not None and request.should_stop():
            raise GenerationCancelledError(f"cancelled after {self.steps} tokens")
        logits = as_logits(logits)
        history = self.seen if self.settings.repetition_penalty != 1.0 else None
        if request.top_logprobs is not None:
            token = self._choose_with_logprobs(logits, history, request.top_logprobs)
        elif request.grammar is not None:
            token = constrained_choice(self.sampler, logits, history, request.grammar)
        else:
            token = self.sampler.choose(logits, history)
        self.first_token_s = self.first_token_s or time.perf_counter() - self.started
        self.steps += 1
        if token in request.end_ids:
            self.reason = "eos"
            return None
        if request.grammar is not None:
            request.grammar.accept(token)
        result = self.stops.push(token)
        while result.stopped and request.stop_gate is not None and not request.stop_gate(result.text):
            result = self.stops.decline(result)
        self.text = result.text
        if request.on_text is not None and (delta := self.stops.stream_delta(result)):
            request.on_text(delta)
        if result.stopped or (request.grammar is not None and request.grammar.finished()):
            self.reason = "stop" if result.stopped else "grammar"
            return None
        self.seen = np.append(self.seen, np.int64(token))
        if self.steps >= self.settings.max_tokens:
            self.reason = "length"
            return None
        return token

    def _choose_with_logprobs(self, logits: np.ndarray, history: np.ndarray | None, top_n: int) -> int:
        """Choose as :meth:`advance` would, from the full masked distribution, and record it."""
        grammar = self.request.grammar
        processed = self.sampler.processed(grammar.mask(logits) if grammar is not None else logits, history)
        token = self.sampler.pick(processed)
        entry = token_logprob(log_softmax(processed), token, top_n)
        self.logprobs.append(entry)
        if self.request.on_logprob is not None:
            self.request.on_logprob(entry, self.stops.lengths[-1] if self.stops.lengths else 0)
        return token

    def _text_logprobs(self) -> list[TokenLogprob] | None:
        """The recorded log-probabilities of the tokens that made the returned text (a stop string's
        tokens and the end-of-turn token are not part of it)."""
        if self.request.top_logprobs is None:
            return None
        starts = [0, *self.stops.lengths]
        kept = [lp for lp, start in zip(self.logprobs, starts, strict=False) if start < len(self.text)]
        return kept[: len(self.stops.ids)]

    def result(self) -> GenerationResult:
        elapsed = time.perf_counter() - self.started
        reason = self.reason or "length"
        return GenerationResult(
            self.text,
            reason,
            self.stops.ids,
            len(self.request.prompt_ids),
            self.first_token_s,
            elapsed,
            self._text_logprobs(),
        )


def generate(decoder: Decoder, tokenizer: Any, request: GenerationRequest) -> GenerationResult:
    """Decode one completion. The KV cache is created here and dropped at the end."""
    state = SequenceState(tokenizer, request)
    cache = decoder.new_cache(state.capacity)
    logits = decoder.forward(cache, state.seen, request.prefix)
    while (token := state.advance(logits)) is not None:
        logits = decoder.forward(cache, np.array([token], dtype=np.int64))
    return state.result()
