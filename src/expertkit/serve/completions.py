"""Run an API request on the engine: pick the expert (``model``), honour ``response_format`` and
the request's overrides, generate ``n`` choices, and shape OpenAI responses and stream chunks."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from expertkit.jsonschema_guard import DEFAULT_SCHEMA_LIMITS, SchemaLimits, schema_problem
from expertkit.manifest.sections import DecodingConfig
from expertkit.runtime.answer import Answer, AskOptions, AskPlan, plan_answer
from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.engine import Engine
from expertkit.runtime.generate import GenerationResult
from expertkit.runtime.grammar import GrammarSpec
from expertkit.runtime.routing import Router, RoutingDecision
from expertkit.serve.errors import APIError
from expertkit.serve.logprobs import TokenTexts, chat_logprobs, text_logprobs
from expertkit.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, lone_surrogate
from expertkit.serve.responses import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChunkChoice,
    CompletionChunk,
    ExpertkitExtension,
    TextChoice,
    TextCompletion,
    Usage,
    ValidationRecord,
)
from expertkit.serve.tool_calls import ToolPlan
from expertkit.serve.worker import Job

FINISH = {"stop": "stop", "eos": "stop", "grammar": "stop", "length": "length"}


@dataclass
class Target:
    """Which expert answers (``None``: the base model) and, for ``auto``, the routing decision."""

    expert: str | None
    model_id: str
    routing: RoutingDecision | None = None


def resolve_target(
    engine: Engine, base_id: str, router: Router | None, model: str, prompt: str, tools: bool = False
) -> Target:
    if model == "auto" and tools:
        return _tool_target(engine, router, prompt)
    if model == "auto":
        if router is None:
            only = next(iter(engine.experts), None)
            return Target(only, only or base_id)
        decision = router.route(prompt)
        return Target(decision.expert, decision.expert or base_id, decision)
    if model == base_id:
        return Target(None, base_id)
    name, _, version = model.partition("@")
    expert = engine.experts.get(name)
    if expert is None or (version and expert.files.loaded.manifest.version != version):
        available = ", ".join([base_id, "auto", *engine.experts])
        raise APIError(
            404, f"the model {model!r} does not exist; available: {available}", param="model", code="model_not_found"
        )
    return Target(name, model)


def _tool_target(engine: Engine, router: Router | None, prompt: str) -> Target:
    """``auto`` with ``tools``: an expert whose contract declares tools (the router's pick among them)."""
    candidates = [name for name in engine.experts if engine.decoding_of(name).tools is not None]
    if not candidates:
        raise APIError(
            400,
            "model 'auto' with tools needs an expert whose contract declares tools (training.decoding.tools)",
            param="model",
            code="model_not_found",
        )
    if len(candidates) == 1 or router is None:
        return Target(candidates[0], candidates[0])
    decision = router.route(prompt)
    if decision.expert not in candidates:
        scores = decision.scores
        best = max(candidates, key=lambda n: (len(scores[n].patterns), len(scores[n].keywords), scores[n].score))
        decision = RoutingDecision(best, f"{decision.reason}; the likeliest expert that declares tools", scores)
    return Target(decision.expert, decision.expert or candidates[0], decision)


def response_grammar(
    request: ChatCompletionRequest, limits: SchemaLimits = DEFAULT_SCHEMA_LIMITS
) -> tuple[GrammarSpec | None, DecodingConfig | None]:
    """``response_format`` as a grammar and the matching validator (``None``: the expert's own).

    A schema is checked up front (size, depth, enum values, only local ``$ref``, valid for its
    draft): a bad one is this request's 400, never a failure on the generation thread.
    """
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None, None
    if fmt.type == "json_object":
        return GrammarSpec("json", source="response_format json_object"), DecodingConfig(validation="json")
    if fmt.json_schema is None:
        raise APIError(
            400, "response_format json_schema needs a json_schema", param="response_format", code="invalid_value"
        )
    schema = fmt.json_schema.schema_
    problem = schema_problem(schema, limits)
    if problem is not None:
        raise APIError(
            400, f"response_format.json_schema.schema: {problem}", param="response_format", code="invalid_schema"
        )
    spec = GrammarSpec("json_schema", json.dumps(schema, sort_keys=True), f"response_format {fmt.json_schema.name}")
    return spec, DecodingConfig(validation="json_schema", json_schema=schema)


@dataclass
class Outcome:
    target: Target
    answers: list[Answer] = field(default_factory=list)
    tools: ToolPlan | None = None

    def usage(self) -> Usage:
        prompt = self.answers[0].result.prompt_tokens if self.answers else 0
        completion = sum(a.result.completion_tokens for a in self.answers)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def extension(self) -> ExpertkitExtension:
        return ExpertkitExtension(
            expert=self.target.expert,
            routing=self.target.routing.to_json() if self.target.routing else None,
            validation=[ValidationRecord(valid=a.validation.valid, error=a.validation.error) for a in self.answers],
            decoding=self.answers[0].settings.to_json(),
            attempts=[a.attempts for a in self.answers],
        )


def ask_options(request: SamplingFields, **extra: Any) -> AskOptions:
    """The request's decoding options; ``extra`` (grammar, validation, prompt ids, ...) takes precedence."""
    options: dict[str, Any] = {
        "overrides": request.overrides(),
        "use_grammar": request.expertkit.use_grammar,
        "use_validation": request.expertkit.validate_output,
        "override_source": "request",
        "top_logprobs": request.top_logprobs_wanted(),
    }
    return AskOptions(**{**options, **extra})


def start_choices(
    job: Job,
    scheduler: BatchScheduler,
    engine: Engine,
    target: Target,
    messages: list[dict[str, str]],
    options: AskOptions,
    n: int,
) -> None:
    """Queue ``n`` answers on the batch scheduler; ``job`` completes with the :class:`Outcome` once
    every choice is judged (an invalid one is resampled while its retries last). With a seed,
    choice ``i`` uses seed + i (reproducible and distinct)."""
    answers: list[Answer | None] = [None] * n
    seed = (options.overrides or {}).get("seed")
    for index in range(n):
        overrides = dict(options.overrides or {})
        if seed is not None:
            overrides["seed"] = seed + index
        choice = AskOptions(**{**options.__dict__, "overrides": overrides, "should_stop": job.should_stop})
        if index > 0:
            choice.on_text, choice.on_logprob = None, None
        plan = plan_answer(engine, target.expert, messages, choice)
        _attempt(job, scheduler, plan, answers, index, 0, target)


def _attempt(
    job: Job,
    scheduler: BatchScheduler,
    plan: AskPlan,
    answers: list[Answer | None],
    index: int,
    attempt: int,
    target: Target,
) -> None:
    def done(result: GenerationResult | BaseException) -> None:
        if isinstance(result, BaseException):
            job.fail(result)
            return
        try:  # whatever judging or resampling raises belongs to this request alone
            answer = plan.judge(attempt, result)
            if answer is None:
                _attempt(job, scheduler, plan, answers, index, attempt + 1, target)
                return
        except Exception as exc:
            job.fail(exc)
            return
        answers[index] = answer
        if all(a is not None for a in answers):
            job.complete(Outcome(target, [a for a in answers if a is not None]))

    scheduler.submit(plan.request(attempt), done)


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_choice(index: int, answer: Answer, tools: ToolPlan | None, texts: TokenTexts) -> ChatChoice:
    """One choice: text, or ``tool_calls`` (content null, finish ``tool_calls``) when the answer is a call."""
    result = answer.result
    calls = tools.calls(answer.text, result.finish_reason) if tools is not None else None
    message = AssistantMessage(content=None if calls else answer.text, tool_calls=calls)
    logprobs = chat_logprobs(texts, result.logprobs) if result.logprobs is not None else None
    finish = "tool_calls" if calls else FINISH[result.finish_reason]
    return ChatChoice(index=index, message=message, logprobs=logprobs, finish_reason=finish)


def chat_response(outcome: Outcome, created: int, ident: str, texts: TokenTexts) -> ChatCompletion:
    choices = [chat_choice(i, a, outcome.tools, texts) for i, a in enumerate(outcome.answers)]
    model, usage, extension = outcome.target.model_id, outcome.usage(), outcome.extension()
    return ChatCompletion(id=ident, created=created, model=model, choices=choices, usage=usage, expertkit=extension)


def text_response(outcome: Outcome, created: int, ident: str, texts: TokenTexts) -> TextCompletion:
    choices = [
        TextChoice(
            index=i,
            text=a.text,
            logprobs=text_logprobs(texts, a.result.logprobs) if a.result.logprobs is not None else None,
            finish_reason=FINISH[a.result.finish_reason],
        )
        for i, a in enumerate(outcome.answers)
    ]
    model, usage, extension = outcome.target.model_id, outcome.usage(), outcome.extension()
    return TextCompletion(id=ident, created=created, model=model, choices=choices, usage=usage, expertkit=extension)


def chunk(
    ident: str, created: int, model: str, delta: dict[str, Any] | None, finish: str | None, chat: bool
) -> CompletionChunk:
    """One stream chunk; ``delta`` ``None`` gives a chunk without choices (the closing usage chunk)."""
    if delta is None:
        choices = []
    elif chat:
        choices = [ChunkChoice(delta=delta, finish_reason=finish)]
    else:
        choices = [ChunkChoice(text=delta.get("content", ""), finish_reason=finish)]
    kind: Literal["chat.completion.chunk", "text_completion"] = "chat.completion.chunk" if chat else "text_completion"
    return CompletionChunk(id=ident, object=kind, created=created, model=model, choices=choices)


def now() -> int:
    return int(time.time())


def _encodable(text: str, param: str) -> str:
    if lone_surrogate(text):
        raise APIError(
            400, f"{param} holds a lone UTF-16 surrogate (not valid Unicode text)", param=param, code="invalid_value"
        )
    return text


def chat_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
    """The conversation as role and text (``developer`` reads as ``system``); tool turns need ``tools``."""
    try:
        texts = [("system" if m.role == "developer" else m.role, m.text()) for m in request.messages]
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages", code="invalid_value") from exc
    for i, message in enumerate(request.messages):
        for call in message.tool_calls or []:
            _encodable(call.function.arguments, f"messages[{i}].tool_calls")
        if (message.tool_calls or message.role == "tool") and not request.tools:
            raise APIError(
                400,
                f"messages[{i}] is a tool turn; send the request's tools too (calls are read beside their tools)",
                param=f"messages[{i}]",
                code="invalid_value",
            )
    return [
        {"role": role, "content": _encodable(text, f"messages[{i}].content")} for i, (role, text) in enumerate(texts)
    ]


def completion_prompt(request: CompletionRequest) -> str:
    try:
        return _encodable(request.text(), "prompt")
    except ValueError as exc:
        raise APIError(400, str(exc), param="prompt", code="invalid_value") from exc
