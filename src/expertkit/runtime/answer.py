"""An expert's answer under its full decoding contract: settings, grammar, stop sequences,
validation, and resampling with another seed when the manifest allows retries."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from expertkit.errors import UsageError
from expertkit.manifest.sections import DecodingConfig
from expertkit.runtime.engine import Engine
from expertkit.runtime.generate import GenerationRequest, GenerationResult, TokenLogprob
from expertkit.runtime.grammar import CompiledGrammar, GrammarSpec, compile_grammar, grammar_for
from expertkit.runtime.output_checks import Validation, ValidationContext, validate_output
from expertkit.runtime.settings import DecodingOverrides, DecodingSettings, Source, resolve_settings


@dataclass
class Answer:
    text: str
    expert: str | None
    result: GenerationResult
    validation: Validation
    settings: DecodingSettings
    attempts: int = 1
    routing: dict[str, Any] | None = None
    quantize: tuple[str, str] = ("none", "default")  # the decoder's weight-only quantisation, and its source
    decoder: tuple[str, str] = ("lean", "default")  # what ran the decode steps, and where that came from

    def to_json(self) -> dict[str, Any]:
        usage = {
            "prompt_tokens": self.result.prompt_tokens,
            "completion_tokens": self.result.completion_tokens,
            "total_tokens": self.result.prompt_tokens + self.result.completion_tokens,
        }
        body = {
            "text": self.text,
            "expert": self.expert,
            "finish_reason": self.result.finish_reason,
            "valid": self.validation.valid,
            "validation_error": self.validation.error,
            "usage": usage,
            "decoding": self.settings.to_json()
            | {
                "quantize": {"value": self.quantize[0], "source": self.quantize[1]},
                "decoder": {"value": self.decoder[0], "source": self.decoder[1]},
            },
            "attempts": self.attempts,
            "timing": {"first_token_s": round(self.result.first_token_s, 4), "total_s": round(self.result.total_s, 4)},
        }
        if self.routing is not None:
            body["routing"] = self.routing
        return body


@dataclass
class AskOptions:
    overrides: DecodingOverrides | None = None
    use_grammar: bool = True
    on_text: Callable[[str], None] | None = None
    on_retry: Callable[[int, Validation], None] | None = None
    should_stop: Callable[[], bool] | None = None
    grammar: GrammarSpec | None = None  # replaces the expert's grammar (an API response_format)
    validation: DecodingConfig | None = None  # replaces the expert's validator settings
    raw_prompt: str | None = None  # a completion prompt used as is, without the chat template
    prompt_ids: list[int] | None = None  # the prompt already tokenised by the caller (a server)
    use_validation: bool = True
    compiled_grammar: CompiledGrammar | None = None  # ``grammar`` already compiled (off the generation thread)
    max_tokens_cap: int | None = None  # what the context leaves after the prompt: max_tokens never exceeds it
    override_source: Source = "cli"  # how ``overrides`` are reported ("request" for the API)
    top_logprobs: int | None = None  # record each token's log-probability and this many alternatives
    on_logprob: Callable[[TokenLogprob, int], None] | None = None  # each token's, as decided (streaming)


def expert_grammar(engine: Engine, name: str | None) -> CompiledGrammar | None:
    if name is None:
        return None
    files = engine.experts[name].files
    spec = grammar_for(engine.decoding_of(name), files.root, untrusted=files.packaged)
    return compile_grammar(engine.tokenizer, engine.vocab_size, spec) if spec else None


def _grammar(engine: Engine, name: str | None, options: AskOptions) -> CompiledGrammar | None:
    if options.compiled_grammar is not None:
        return options.compiled_grammar
    if options.grammar is not None:
        return compile_grammar(engine.tokenizer, engine.vocab_size, options.grammar)
    return expert_grammar(engine, name) if options.use_grammar else None


def _prompt(engine: Engine, messages: list[dict[str, str]], options: AskOptions) -> list[int]:
    if options.prompt_ids is not None:
        return options.prompt_ids
    if options.raw_prompt is not None:
        return [int(i) for i in engine.tokenizer(options.raw_prompt, add_special_tokens=False)["input_ids"]]
    return engine.prompt_ids(messages)


@dataclass
class AskPlan:
    """One answer's plan: the request for each attempt, and the judgement of each result.

    :func:`ask` runs it in a loop; a batch scheduler runs the same plan one attempt at a time.
    """

    engine: Engine
    name: str | None
    options: AskOptions
    settings: DecodingSettings
    grammar: CompiledGrammar | None
    context: ValidationContext
    prompt: list[int]
    base_seed: int
    attempts: int

    def request(self, attempt: int) -> GenerationRequest:
        seeded = replace(self.settings, seed=self.base_seed + attempt, sources=self.settings.sources)
        return self.engine.request(
            self.name,
            self.prompt,
            seeded,
            grammar=self.grammar.matcher() if self.grammar else None,
            on_text=self.options.on_text if attempt == 0 else None,
            stop_gate=self.grammar.accepts if self.grammar else None,
            should_stop=self.options.should_stop,
            top_logprobs=self.options.top_logprobs,
            on_logprob=self.options.on_logprob if attempt == 0 else None,
        )

    def judge(self, attempt: int, result: GenerationResult) -> Answer | None:
        """The answer, or ``None`` when the result is invalid and another attempt remains."""
        validation = validate_output(result.text, result.stopped, self.context)
        if validation.valid is False and attempt + 1 < self.attempts:
            if self.options.on_retry is not None:
                self.options.on_retry(attempt + 1, validation)
            return None
        shown = (
            self.settings if self.settings.seed is not None else replace(self.settings, seed=self.base_seed + attempt)
        )
        quantize, decoder = self.engine.quantize_of(self.name), self.engine.decoder_of(self.name)
        return Answer(
            result.text, self.name, result, validation, shown, attempt + 1, quantize=quantize, decoder=decoder
        )


def _within_context(
    engine: Engine, name: str | None, settings: DecodingSettings, prompt_tokens: int, options: AskOptions
) -> DecodingSettings:
    """``settings`` with ``max_tokens`` lowered to what the context leaves after the prompt (and the
    expert's soft prompt); a prompt that fills the context is a clear error, not a decoder crash."""
    room = engine.context_length - engine.prefix_length(name) - prompt_tokens
    if room < 1:
        raise UsageError(
            f"the prompt is {prompt_tokens} tokens; the model's context is {engine.context_length}",
            "shorten the prompt (or the conversation history: /reset in chat)",
        )
    cap = min(room, options.max_tokens_cap) if options.max_tokens_cap is not None else room
    if settings.max_tokens <= cap:
        return settings
    return replace(settings, max_tokens=max(1, cap), sources={**settings.sources, "max_tokens": "context"})


def plan_answer(engine: Engine, name: str | None, messages: list[dict[str, str]], options: AskOptions) -> AskPlan:
    decoding = engine.decoding_of(name)
    prompt = _prompt(engine, messages, options)
    settings = _within_context(
        engine, name, resolve_settings(options.overrides, decoding, options.override_source), len(prompt), options
    )
    checks = options.validation or (decoding if options.use_validation else DecodingConfig())
    return AskPlan(
        engine=engine,
        name=name,
        options=options,
        settings=settings,
        grammar=_grammar(engine, name, options),
        context=ValidationContext(checks, engine.tokenizer, engine.vocab_size),
        prompt=prompt,
        base_seed=settings.seed if settings.seed is not None else random.randrange(2**31),
        attempts=1 + (decoding.retries or 0),
    )


def ask(engine: Engine, name: str | None, messages: list[dict[str, str]], options: AskOptions | None = None) -> Answer:
    """Generate, validate, and resample up to ``retries`` times (a new seed each time) while invalid."""
    plan = plan_answer(engine, name, messages, options or AskOptions())
    attempt = 0
    while (answer := plan.judge(attempt, engine.execute(plan.request(attempt)))) is None:
        attempt += 1
    return answer
