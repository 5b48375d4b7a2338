"""The FastAPI application: OpenAI routes, health, metrics, authentication and request limits.

Routes are thin: they validate, then :mod:`expertkit.serve.flow` resolves the model, submits one
job to the generation thread and returns the outcome, which the route shapes (chat, completions,
responses). Everything a client can get wrong is a 4xx with an OpenAI error object; nothing
returns a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from expertkit.runtime.engine import Engine
from expertkit.runtime.routing import Router
from expertkit.serve import completions as comp
from expertkit.serve import flow
from expertkit.serve.access import ACCESS_LOG, AccessMiddleware
from expertkit.serve.errors import install_error_handlers
from expertkit.serve.guards import RequestGuard
from expertkit.serve.logprobs import TokenTexts
from expertkit.serve.metrics import ServerMetrics
from expertkit.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from expertkit.serve.responses import Health, ModelCard, ModelList, ResponseBody
from expertkit.serve.responses_api import ResponsesRequest, response_object, to_chat
from expertkit.serve.responses_stream import response_stream
from expertkit.serve.state import ServerConfig, ServerState
from expertkit.serve.stream import StreamSpec, StreamWriter
from expertkit.serve.worker import GenerationWorker

__all__ = ["ServerConfig", "create_app"]


def create_app(engine: Engine, router: Router | None, config: ServerConfig) -> FastAPI:
    metrics = ServerMetrics()
    worker = GenerationWorker(
        engine,
        config.max_queue,
        config.max_batch,
        on_depth=metrics.queue_depth.set,
        mixed=config.mixed_batches,
        prefix_cache_bytes=config.prefix_cache_bytes,
    )
    metrics.watch_prefixes(worker.scheduler.prefixes)
    scheduler = worker.scheduler
    metrics.watch_decoding(lambda: worker.decode_threads, lambda: scheduler.cache.capacity if scheduler.cache else 0)
    state = ServerState(engine, router, config, worker, metrics, int(time.time()), TokenTexts(engine.tokenizer))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(worker.ready.wait)  # listen once the first batch's decoder is built
        if worker.warm_up_error is not None:  # each request that needs it gets its own error
            ACCESS_LOG.warning("warm-up failed: %s", worker.warm_up_error)
        yield
        worker.close()  # graceful shutdown: refuse new work, cancel the queue, finish the running job
        state.helpers.shutdown(wait=False, cancel_futures=True)
        state.compilers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="expertkit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.expertkit = state
    install_error_handlers(app, metrics.error)
    _install_routes(app, state)
    app.add_middleware(AccessMiddleware, state=state)
    app.add_middleware(
        RequestGuard,
        max_body_bytes=config.max_body_bytes,
        allowed_hosts=frozenset(h.lower() for h in config.allowed_hosts),
        loopback_only=config.api_key is None,
        on_error=metrics.error,
    )
    return app


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
        prepared = await flow.prepare_chat(request, state, body)
        return await _answer(request, state, body, prepared, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        prepared = await flow.prepare_completion(request, state, body)
        return await _answer(request, state, body, prepared, chat=False)

    @app.post("/v1/responses")
    async def responses(request: Request, body: ResponsesRequest) -> Response:
        chat_body = to_chat(body)
        prepared = await flow.prepare_chat(request, state, chat_body)
        if body.stream:
            job, events = flow.start_stream(state, chat_body, prepared)
            stream = response_stream(state, body, prepared, job, events)
            return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        outcome = await flow.run(request, state, chat_body, prepared)
        return JSONResponse(response_object(body, outcome).to_json())


async def _answer(
    request: Request, state: ServerState, body: SamplingFields, prepared: flow.Prepared, chat: bool
) -> Response:
    ident, created = comp.completion_id("chatcmpl" if chat else "cmpl"), comp.now()
    if body.stream:
        spec = StreamSpec(prepared.target, prepared.messages, prepared.ask_extra, ident, created, chat, prepared.tools)
        return _stream(state, body, prepared, spec)
    outcome = await flow.run(request, state, body, prepared)
    shape = comp.chat_response if chat else comp.text_response
    return JSONResponse(shape(outcome, created, ident, state.texts).to_json())


def _stream(state: ServerState, body: SamplingFields, prepared: flow.Prepared, spec: StreamSpec) -> StreamingResponse:
    job, events = flow.start_stream(state, body, prepared)
    writer = StreamWriter(spec, state.texts)

    async def sse_events() -> AsyncIterator[str]:
        def sse(payload: ResponseBody) -> str:
            return f"data: {json.dumps(payload.to_json(), ensure_ascii=False)}\n\n"

        try:
            if spec.chat:
                yield sse(writer.chunk({"role": "assistant", "content": ""}))
            while (event := await flow.next_event(job, events)) is not None:
                for piece in writer.event(*event):
                    yield sse(piece)
            try:
                outcome: comp.Outcome = job.future.result()
            except Exception as exc:  # after the headers: report in-stream, as OpenAI does
                yield sse(flow.stream_failure(exc).body())
                yield "data: [DONE]\n\n"
                return
            outcome.tools = spec.tools
            flow.count_tokens(state, outcome)
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
