"""The FastAPI application: OpenAI routes, health, metrics, authentication and request limits.

Routes are thin: they validate, resolve the model, submit one job to the generation thread and
shape the result (``completions``). Everything a client can get wrong is a 4xx with an OpenAI
error object; nothing returns a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from expertkit.jsonschema_guard import DEFAULT_SCHEMA_LIMITS, SchemaLimits
from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.engine import Engine
from expertkit.runtime.generate import GenerationCancelledError, TokenLogprob
from expertkit.runtime.grammar import CompiledGrammar, GrammarError, GrammarSpec, compile_grammar
from expertkit.runtime.routing import Router
from expertkit.serve import completions as comp
from expertkit.serve.errors import APIError, install_error_handlers
from expertkit.serve.guards import RequestGuard
from expertkit.serve.logprobs import TokenTexts
from expertkit.serve.metrics import ServerMetrics
from expertkit.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from expertkit.serve.responses import Health, ModelCard, ModelList, ResponseBody
from expertkit.serve.stream import StreamSpec, StreamWriter
from expertkit.serve.tool_calls import ToolPlan, plan_tools
from expertkit.serve.worker import GenerationWorker, Job

OPEN_PATHS = ("/health",)
T = TypeVar("T")


@dataclass(frozen=True)
class ServerConfig:
    base_id: str
    api_key: str | None = None
    max_queue: int = 32
    max_batch: int = 8
    timeout_s: float = 120.0
    max_body_bytes: int = 1 << 20
    allowed_hosts: frozenset[str] = frozenset()  # Host names accepted besides loopback (without a key: only these)
    compile_timeout_s: float = 10.0  # a response_format grammar that takes longer to compile is a 422
    schema_limits: SchemaLimits = DEFAULT_SCHEMA_LIMITS
    log_prompts: bool = False  # the access log names the prompt (its first 200 characters) only when asked


@dataclass
class ServerState:
    engine: Engine
    router: Router | None
    config: ServerConfig
    worker: GenerationWorker
    metrics: ServerMetrics
    started: int
    texts: TokenTexts
    # Tokenising and routing run here, never on the event loop or the generation thread; client
    # grammars compile on their own threads, so a slow compile never delays tokenising.
    helpers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="expertkit-helper")
    )
    compilers: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="expertkit-compile")
    )

    async def off_loop(self, function: Callable[..., T], *args: Any, pool: ThreadPoolExecutor | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool or self.helpers, function, *args)


def create_app(engine: Engine, router: Router | None, config: ServerConfig) -> FastAPI:
    metrics = ServerMetrics()
    worker = GenerationWorker(engine, config.max_queue, config.max_batch, on_depth=metrics.queue_depth.set)
    state = ServerState(engine, router, config, worker, metrics, int(time.time()), TokenTexts(engine.tokenizer))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()  # graceful shutdown: refuse new work, cancel the queue, finish the running job
        state.helpers.shutdown(wait=False, cancel_futures=True)
        state.compilers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="expertkit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.expertkit = state
    install_error_handlers(app, metrics.error)
    _install_middleware(app, state)
    _install_routes(app, state)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=config.max_body_bytes,
        allowed_hosts=frozenset(h.lower() for h in config.allowed_hosts),
        loopback_only=config.api_key is None,
        on_error=metrics.error,
    )
    return app


def _install_middleware(app: FastAPI, state: ServerState) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await _guarded(request, call_next, state)
        route = request.scope.get("route")  # the matched route's template: one label per route, not per path
        endpoint = getattr(route, "path", None) or "unmatched"
        elapsed = time.perf_counter() - started
        state.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        state.metrics.latency.labels(endpoint=endpoint).observe(elapsed)
        _access_log(request, endpoint, response.status_code, elapsed)
        return response


ACCESS_LOG = logging.getLogger("expertkit.serve.access")


def _access_log(request: Request, endpoint: str, status: int, elapsed: float) -> None:
    """One line per request: method, route, model, status, tokens, latency; never the key, and the
    prompt only with ``--log-prompts``. A stream's line is written when its headers go out."""
    info = getattr(request.state, "log", {})
    tokens = f"{info['prompt_tokens']}+{info['completion_tokens']}" if "completion_tokens" in info else "-"
    line = (
        f"{request.method} {endpoint} model={info.get('model', '-')} status={status} tokens={tokens} "
        f"latency_ms={elapsed * 1000:.0f}"
    )
    if "prompt" in info:
        line += f" prompt={info['prompt']!r}"
    ACCESS_LOG.info(line)


async def _guarded(request: Request, call_next: Any, state: ServerState) -> Response:
    key = state.config.api_key
    if key is not None and request.url.path not in OPEN_PATHS:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            state.metrics.error("unauthorized")
            return APIError(
                401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key"
            ).response()
    response: Response = await call_next(request)
    return response


def _model_card(state: ServerState, ident: str, **extra: Any) -> ModelCard:
    return ModelCard(id=ident, created=state.started, **extra)


def _install_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> Health:
        return Health(status="shutting_down" if state.worker.closing else "ok", queue_depth=state.worker.depth())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> ModelList:
        cards = [_model_card(state, state.config.base_id, parent=None)]
        for name, expert in state.engine.experts.items():
            manifest = expert.files.loaded.manifest
            cards.append(
                _model_card(
                    state,
                    name,
                    parent=state.config.base_id,
                    version=manifest.version,
                    adapter_type=manifest.base_models[0].adapters[0].type,
                    signer=expert.files.signer,  # verified at load; the install record is not trusted
                )
            )
        cards.append(_model_card(state, "auto", parent=state.config.base_id))
        return ModelList(data=cards)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatCompletionRequest) -> Response:
        messages = comp.chat_messages(body)
        if body.tools:
            return await _chat_with_tools(request, state, body, messages)
        grammar, validation = comp.response_grammar(body, state.config.schema_limits)
        compiled = await _compile(state, grammar) if grammar is not None else None
        prompt = messages[-1]["content"]
        ids = await state.off_loop(state.engine.prompt_ids, messages)
        extra: dict[str, Any] = {
            "grammar": grammar,
            "compiled_grammar": compiled,
            "validation": validation,
            "prompt_ids": ids,
        }
        return await _complete(request, state, body, messages, ids, prompt, **extra)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        text = comp.completion_prompt(body)
        ids = await state.off_loop(_tokenise, state.engine.tokenizer, text)
        return await _complete(request, state, body, [], ids, text, prompt_ids=ids)


async def _chat_with_tools(
    request: Request, state: ServerState, body: ChatCompletionRequest, messages: list[dict[str, str]]
) -> Response:
    """Chat with ``tools``: the answering expert's contract renders the prompt and the call grammar."""
    if body.response_format is not None and body.response_format.type != "text":
        raise APIError(400, "response_format cannot be combined with tools", param="response_format")
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
    engine, config = state.engine, state.config
    target = await state.off_loop(comp.resolve_target, engine, config.base_id, state.router, body.model, prompt, True)
    plan = await state.off_loop(plan_tools, engine, target.expert, body, config.schema_limits)
    compiled = await _compile(state, plan.grammar, "tools") if plan.grammar is not None else None
    ids = await state.off_loop(engine.prompt_ids, plan.messages)
    extra: dict[str, Any] = {
        "grammar": plan.grammar,
        "compiled_grammar": compiled,
        "validation": plan.validation,
        "prompt_ids": ids,
    }
    if plan.grammar is None:  # tool_choice none: text, without the expert's own (call) grammar
        extra["use_grammar"] = False
    return await _complete(request, state, body, plan.messages, ids, prompt, target=target, tools=plan, **extra)


def _tokenise(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


async def _compile(state: ServerState, spec: GrammarSpec, param: str = "response_format") -> CompiledGrammar:
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


def _check_request(state: ServerState, body: SamplingFields, prompt_tokens: int) -> int:
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


async def _complete(
    request: Request,
    state: ServerState,
    body: SamplingFields,
    messages: list[dict[str, str]],
    ids: list[int],
    prompt: str,
    target: comp.Target | None = None,
    tools: ToolPlan | None = None,
    **ask_extra: Any,
) -> Response:
    # Routing runs manifest regexes (time-bounded) and an embedder: never on the event loop.
    if target is None:
        target = await state.off_loop(
            comp.resolve_target, state.engine, state.config.base_id, state.router, body.model, prompt
        )
    ask_extra["max_tokens_cap"] = _check_request(state, body, len(ids) + state.engine.prefix_length(target.expert))
    request.state.log = {"model": target.model_id, "prompt_tokens": len(ids)}
    if state.config.log_prompts:
        request.state.log["prompt"] = prompt[:200]
    chat = isinstance(body, ChatCompletionRequest)
    ident, created = comp.completion_id("chatcmpl" if chat else "cmpl"), comp.now()
    if body.stream:
        stream = StreamSpec(target, messages, ask_extra, ident, created, chat, tools)
        return _stream(request, state, body, stream)

    def start(job: Job, scheduler: BatchScheduler) -> None:
        options = comp.ask_options(body, **ask_extra)
        comp.start_choices(job, scheduler, state.engine, target, messages, options, body.n)

    job = state.worker.submit(start, state.config.timeout_s)
    outcome = await _await_job(request, job)
    outcome.tools = tools
    _count_tokens(state, outcome)
    request.state.log["completion_tokens"] = outcome.usage().completion_tokens
    shape = comp.chat_response if chat else comp.text_response
    return JSONResponse(shape(outcome, created, ident, state.texts).to_json())


async def _await_job(request: Request, job: Job) -> Any:
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


def _count_tokens(state: ServerState, outcome: comp.Outcome) -> None:
    usage = outcome.usage()
    state.metrics.tokens.labels(expert=outcome.target.expert or "base").inc(usage.completion_tokens)
    result = outcome.answers[-1].result if outcome.answers else None
    if result is not None and result.total_s > 0:
        state.metrics.tokens_per_s.set(result.completion_tokens / result.total_s)


def _stream(request: Request, state: ServerState, body: SamplingFields, spec: StreamSpec) -> StreamingResponse:
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def start(job: Job, scheduler: BatchScheduler) -> None:
        def on_text(text: str) -> None:
            job.deliver(events.put_nowait, ("text", text))

        def on_logprob(entry: TokenLogprob, at: int) -> None:
            job.deliver(events.put_nowait, ("logprob", (entry, at)))

        logprobs = {"on_logprob": on_logprob} if body.top_logprobs_wanted() is not None else {}
        options = comp.ask_options(body, on_text=on_text, **logprobs, **spec.ask_extra)
        comp.start_choices(job, scheduler, state.engine, spec.target, spec.messages, options, 1)

    job = state.worker.submit(start, state.config.timeout_s)
    writer = StreamWriter(spec, state.texts)

    async def sse_events() -> AsyncIterator[str]:
        def sse(payload: ResponseBody) -> str:
            return f"data: {json.dumps(payload.to_json(), ensure_ascii=False)}\n\n"

        try:
            if spec.chat:
                yield sse(writer.chunk({"role": "assistant", "content": ""}))
            while not (job.future.done() and events.empty()):
                try:
                    kind, value = await asyncio.wait_for(events.get(), timeout=0.1)
                except TimeoutError:
                    continue
                for piece in writer.event(kind, value):
                    yield sse(piece)
            try:
                outcome: comp.Outcome = job.future.result()
            except Exception as exc:  # after the headers: report in-stream, as OpenAI does
                error = exc if isinstance(exc, APIError) else APIError(500, f"generation failed: {type(exc).__name__}")
                yield sse(error.body())
                yield "data: [DONE]\n\n"
                return
            outcome.tools = spec.tools
            _count_tokens(state, outcome)
            for piece in writer.finish(outcome):
                yield sse(piece)
            if body.include_usage:
                usage = comp.chunk(spec.ident, spec.created, spec.target.model_id, None, None, spec.chat)
                yield sse(usage.model_copy(update={"usage": outcome.usage()}))
            yield "data: [DONE]\n\n"
        finally:
            if not job.future.done():
                job.cancelled.set()  # the client went away mid-stream
                state.metrics.error("client_disconnected")

    return StreamingResponse(sse_events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
