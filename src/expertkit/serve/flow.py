"""A request's way through the server, shared by every route: prepare it (resolve the model,
render and tokenise the prompt, compile a client grammar, check it fits the context), then run it
on the generation worker, whole or streamed. Routes only shape what comes back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.generate import GenerationCancelledError, TokenLogprob
from expertkit.runtime.grammar import CompiledGrammar, GrammarError, GrammarSpec, compile_grammar
from expertkit.serve import completions as comp
from expertkit.serve.errors import APIError
from expertkit.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from expertkit.serve.state import ServerState
from expertkit.serve.tool_calls import ToolPlan, plan_tools
from expertkit.serve.worker import Job


@dataclass
class Prepared:
    """Everything a request needs before it decodes."""

    target: comp.Target
    messages: list[dict[str, str]]
    ids: list[int]
    prompt: str  # for routing and the access log
    tools: ToolPlan | None = None
    ask_extra: dict[str, Any] = field(default_factory=dict)


async def prepare_chat(request: Request, state: ServerState, body: ChatCompletionRequest) -> Prepared:
    messages = comp.chat_messages(body)
    if body.tools:
        prepared = await _prepare_tools(state, body, messages)
    else:
        grammar, validation = comp.response_grammar(body, state.config.schema_limits)
        compiled = await compile_client_grammar(state, grammar) if grammar is not None else None
        ids = await state.off_loop(state.engine.prompt_ids, messages)
        target = await _target(state, body, messages[-1]["content"])
        extra = {"grammar": grammar, "compiled_grammar": compiled, "validation": validation, "prompt_ids": ids}
        prepared = Prepared(target, messages, ids, messages[-1]["content"], ask_extra=extra)
    return _admit(request, state, body, prepared)


async def prepare_completion(request: Request, state: ServerState, body: CompletionRequest) -> Prepared:
    text = comp.completion_prompt(body)
    ids = await state.off_loop(_tokenise, state.engine.tokenizer, text)
    target = await _target(state, body, text)
    return _admit(request, state, body, Prepared(target, [], ids, text, ask_extra={"prompt_ids": ids}))


async def _target(state: ServerState, body: SamplingFields, prompt: str, tools: bool = False) -> comp.Target:
    # Routing runs manifest regexes (time-bounded) and an embedder: never on the event loop.
    config = state.config
    return await state.off_loop(
        comp.resolve_target, state.engine, config.base_id, state.router, body.model, prompt, tools
    )


async def _prepare_tools(state: ServerState, body: ChatCompletionRequest, messages: list[dict[str, str]]) -> Prepared:
    """Chat with ``tools``: the answering expert's contract renders the prompt and the call grammar."""
    if body.response_format is not None and body.response_format.type != "text":
        raise APIError(400, "response_format cannot be combined with tools", param="response_format")
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
    target = await _target(state, body, prompt, tools=True)
    plan = await state.off_loop(plan_tools, state.engine, target.expert, body, state.config.schema_limits)
    compiled = await compile_client_grammar(state, plan.grammar, "tools") if plan.grammar is not None else None
    ids = await state.off_loop(state.engine.prompt_ids, plan.messages)
    extra: dict[str, Any] = {
        "grammar": plan.grammar,
        "compiled_grammar": compiled,
        "validation": plan.validation,
        "prompt_ids": ids,
    }
    if plan.grammar is None:  # tool_choice none: text, without the expert's own (call) grammar
        extra["use_grammar"] = False
    return Prepared(target, plan.messages, ids, prompt, plan, extra)


def _admit(request: Request, state: ServerState, body: SamplingFields, prepared: Prepared) -> Prepared:
    """Check the request fits (and log it); the context left caps ``max_tokens``."""
    prefix = state.engine.prefix_length(prepared.target.expert)
    prepared.ask_extra["max_tokens_cap"] = check_request(state, body, len(prepared.ids) + prefix)
    request.state.log = {"model": prepared.target.model_id, "prompt_tokens": len(prepared.ids)}
    if state.config.log_prompts:
        request.state.log["prompt"] = prepared.prompt[:200]
    return prepared


def _tokenise(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


async def compile_client_grammar(
    state: ServerState, spec: GrammarSpec, param: str = "response_format"
) -> CompiledGrammar:
    """Compile a client's grammar on a helper thread, bounded in time (the compiled grammar is cached)."""
    engine = state.engine
    work = state.off_loop(compile_grammar, engine.tokenizer, engine.vocab_size, spec, pool=state.compilers)
    try:
        return await asyncio.wait_for(work, timeout=state.config.compile_timeout_s)
    except TimeoutError:
        state.metrics.error("grammar_timeout")
        raise APIError(
            422,
            f"{param} took over {state.config.compile_timeout_s:g} s to compile into a grammar",
            param=param,
            code="grammar_too_complex",
        ) from None
    except GrammarError as exc:
        raise APIError(400, f"{param}: {exc.message}", param=param, code="invalid_schema") from exc


def check_request(state: ServerState, body: SamplingFields, prompt_tokens: int) -> int:
    """The most tokens the context leaves after the prompt; refuses options we cannot honour,
    prompts beyond the context and a ``max_tokens`` that does not fit."""
    if (feature := body.unsupported()) is not None:
        raise APIError(400, f"{feature} is not supported by this server", param=feature, code="unsupported")
    if body.stream and body.n > 1:
        raise APIError(400, "n > 1 cannot be streamed", param="n", code="invalid_value")
    context = min(state.engine.context_length, state.worker.scheduler.max_positions)  # what a batch slot holds
    requested = body.max_completion_tokens or body.max_tokens
    if prompt_tokens >= context:
        raise APIError(
            400,
            f"the prompt is {prompt_tokens} tokens; the context is {context}",
            param="messages",
            code="context_length_exceeded",
        )
    if requested is not None and prompt_tokens + requested > context:
        raise APIError(
            400,
            f"prompt ({prompt_tokens}) + max_tokens ({requested}) exceeds the context of {context} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return context - prompt_tokens


async def run(request: Request, state: ServerState, body: SamplingFields, prepared: Prepared) -> comp.Outcome:
    """Generate the request's choices and wait for them (cancelled if the client goes away)."""

    def start(job: Job, scheduler: BatchScheduler) -> None:
        options = comp.ask_options(body, **prepared.ask_extra)
        comp.start_choices(job, scheduler, state.engine, prepared.target, prepared.messages, options, body.n)

    job = state.worker.submit(start, state.config.timeout_s)
    outcome: comp.Outcome = await await_job(request, job)
    outcome.tools = prepared.tools
    count_tokens(state, outcome)
    request.state.log["completion_tokens"] = outcome.usage().completion_tokens
    return outcome


def start_stream(
    state: ServerState, body: SamplingFields, prepared: Prepared
) -> tuple[Job, asyncio.Queue[tuple[str, Any]]]:
    """Start one streamed choice: the queue receives ``("text", piece)`` and ``("logprob", (entry,
    start))`` as they are decided; the job completes with the :class:`Outcome`."""
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def start(job: Job, scheduler: BatchScheduler) -> None:
        def on_text(text: str) -> None:
            job.deliver(events.put_nowait, ("text", text))

        def on_logprob(entry: TokenLogprob, at: int) -> None:
            job.deliver(events.put_nowait, ("logprob", (entry, at)))

        logprobs = {"on_logprob": on_logprob} if body.top_logprobs_wanted() is not None else {}
        options = comp.ask_options(body, on_text=on_text, **logprobs, **prepared.ask_extra)
        comp.start_choices(job, scheduler, state.engine, prepared.target, prepared.messages, options, 1)

    job = state.worker.submit(start, state.config.timeout_s)
    # the job's end comes after every event it delivered (one thread, one order): mark it in the queue
    job.future.add_done_callback(lambda _: events.put_nowait(("end", None)))
    return job, events


async def next_event(job: Job, events: asyncio.Queue[tuple[str, Any]]) -> tuple[str, Any] | None:
    """The next streamed event, or ``None`` once the job is done and every event was read."""
    event = await events.get()
    return None if event[0] == "end" else event


async def await_job(request: Request, job: Job) -> Any:
    """The job's result, cancelling it if the client goes away; maps cancellations to errors."""
    while not job.future.done():
        if await request.is_disconnected():
            job.cancelled.set()
        await asyncio.wait([job.future], timeout=0.1)
    try:
        return job.future.result()
    except (GenerationCancelledError, TimeoutError) as exc:
        if job.cancelled.is_set():
            raise APIError(499, "the client closed the request", code="client_closed") from exc
        raise APIError(504, "the request timed out", code="timeout") from exc


def count_tokens(state: ServerState, outcome: comp.Outcome) -> None:
    usage = outcome.usage()
    state.metrics.tokens.labels(expert=outcome.target.expert or "base").inc(usage.completion_tokens)
    result = outcome.answers[-1].result if outcome.answers else None
    if result is not None and result.total_s > 0:
        state.metrics.tokens_per_s.set(result.completion_tokens / result.total_s)


def stream_failure(exc: BaseException) -> APIError:
    """What a stream reports in-band when generation fails after the headers went out."""
    return exc if isinstance(exc, APIError) else APIError(500, f"generation failed: {type(exc).__name__}")
