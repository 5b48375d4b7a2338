"""The dashboard application: server-rendered pages (readable without JavaScript) and the JSON API
under ``/api/`` that backs them, over the job queue and its worker registry."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from expertkit.dashboard.board import LOG_LINES, HintCache, board_context, board_events, log_tail, run_of
from expertkit.dashboard.experts import installed_experts
from expertkit.dashboard.hints import all_hints
from expertkit.dashboard.memory_routes import install_memory_routes
from expertkit.dashboard.render import error_json, page
from expertkit.dashboard.run_routes import install_run_routes
from expertkit.dashboard.runs import find_runs
from expertkit.dashboard.security import COOKIE, OPEN_PATHS, authorised, json_post, same_origin
from expertkit.errors import ExpertkitError
from expertkit.jobs.model import KINDS, LEVELS, Job, default_level, pipeline
from expertkit.jobs.outcomes import expert_dir, job_log
from expertkit.jobs.store import JobQueue, display_url
from expertkit.jobs.view import ordered, progress, worker_state
from expertkit.package.reverify import reverify_installed
from expertkit.serve.guards import RequestGuard

STATIC = Path(__file__).parent / "static"
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = 8800
    queue_url: str | None = None
    api_key: str | None = None
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    lease_s: float = 30.0  # a worker silent this long is shown as lost
    expert_dirs: tuple[Path, ...] = ()  # whose runs to show besides the home's records and the jobs' experts


class Submission(BaseModel):
    kind: str
    expert: str
    options: list[str] = Field(default_factory=list, max_length=64)
    priority: str | None = None  # default: high for spar, else normal
    retries: int = Field(default=2, ge=0, le=20)
    after: int | None = None
    then: list[str] = Field(default_factory=list, max_length=8)


class Level(BaseModel):
    level: str


class Move(BaseModel):
    before: int


def build_dashboard(config: DashboardConfig) -> Any:
    """The ASGI app: guards (Host, body size) around the FastAPI routes."""
    queue = JobQueue(config.queue_url)
    app = FastAPI(title="expertkit dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    _install_guards(app, config)
    expert_dirs = lambda: known_expert_dirs(queue, config)  # noqa: E731
    hints = HintCache(
        lambda: all_hints(queue.jobs(), queue.workers(), find_runs(expert_dirs()), installed_experts(), config.lease_s)
    )
    _install_pages(app, queue, config, hints)
    _install_api(app, queue, config, hints)
    install_run_routes(app, expert_dirs)
    calculator = install_memory_routes(app)
    app.router.add_event_handler("shutdown", calculator.close)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    loopback_only = config.api_key is None
    return RequestGuard(app, MAX_BODY, config.allowed_hosts, loopback_only, lambda kind: None)


def known_expert_dirs(queue: JobQueue, config: DashboardConfig) -> list[Path]:
    """The configured expert directories, then those the queue's jobs name (each once, in that order)."""
    found = dict.fromkeys(d.resolve() for d in config.expert_dirs)
    for job in queue.jobs():
        found.setdefault(expert_dir(job).resolve(), None)
    return list(found)


def _install_guards(app: FastAPI, config: DashboardConfig) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        api = request.url.path.startswith("/api/")
        if request.url.path not in OPEN_PATHS and not authorised(request, config.api_key):
            return error_json(401, "missing or wrong key") if api else RedirectResponse("/login", status_code=303)
        if request.method == "POST" and (not same_origin(request) or (api and not json_post(request))):
            return error_json(403, "cross-site or non-JSON request refused", "POST JSON from the dashboard or a script")
        response: Response = await call_next(request)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return error_json(exc.status_code, str(exc.detail))
        return page(request, "error.html", "error", status=exc.status_code, message=str(exc.detail))

    @app.exception_handler(ExpertkitError)
    async def user_error(request: Request, exc: ExpertkitError) -> Response:
        if request.url.path.startswith("/api/"):
            return error_json(404 if exc.message.startswith("no job") else 400, exc.message, exc.hint)
        return page(request, "error.html", "error", status=404, message=exc.message)


def _install_pages(app: FastAPI, queue: JobQueue, config: DashboardConfig, hints: HintCache) -> None:
    """Handlers that read the backend are plain functions: FastAPI runs them off the event loop."""
    app.state.queue_url = display_url(queue.url)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse("/jobs", status_code=303)

    @app.get("/jobs", response_class=HTMLResponse)
    async def jobs_page(request: Request) -> HTMLResponse:
        values = await asyncio.to_thread(lambda: board_context(queue.jobs(), hints))
        dirs = await asyncio.to_thread(known_expert_dirs, queue, config)
        return page(request, "jobs.html", "jobs", kinds=KINDS, expert_dirs=dirs, **values)

    @app.get("/api/stream/board")
    async def board_stream(request: Request, max_events: int | None = None) -> StreamingResponse:
        """Server-sent events: the board, rendered, whenever it changes (checked every second)."""
        events = board_events(request, lambda: board_context(queue.jobs(), hints), max_events)
        return StreamingResponse(events, media_type="text/event-stream")

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: int) -> HTMLResponse:
        job = queue.get(job_id)
        attempts = [
            {**a.model_dump(), "seconds": f"{(a.finished_at or time.time()) - a.started_at:.0f}"} for a in job.attempts
        ]
        context: dict[str, Any] = {"job": job, "attempts": attempts, "progress": progress(job), "log_lines": LOG_LINES}
        context["run"] = run_of(job)
        return page(request, "job.html", "jobs", log=log_tail(job_log(job)), **context)

    @app.get("/workers", response_class=HTMLResponse)
    def workers_page(request: Request) -> HTMLResponse:
        now = time.time()
        rows = [
            {
                **w.model_dump(),
                "memory": f"{(w.memory_mib or 0) / 1024:.0f} GiB",
                "jobs": ", ".join(map(str, w.jobs)) or "-",
                "heartbeat": f"{now - w.heartbeat:.0f} s ago",
                "state": worker_state(w, config.lease_s, now),
            }
            for w in queue.workers()
        ]
        return page(request, "workers.html", "workers", workers=rows)

    @app.get("/experts", response_class=HTMLResponse)
    def experts_page(request: Request) -> HTMLResponse:
        return page(request, "experts.html", "experts", experts=installed_experts())

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> HTMLResponse:
        return page(request, "login.html", "login")

    @app.post("/login")
    async def login(request: Request) -> Response:
        given = parse_qs((await request.body()).decode("utf-8", errors="replace")).get("key", [""])[0]
        if config.api_key is None or not authorised_key(given, config.api_key):
            return page(request, "login.html", "login", status=401, failed=True)
        response = RedirectResponse("/jobs", status_code=303)
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
        return response


def authorised_key(given: str, key: str) -> bool:
    import hmac

    return hmac.compare_digest(given.encode(), key.encode())


def _install_api(app: FastAPI, queue: JobQueue, config: DashboardConfig, hints: HintCache) -> None:
    @app.get("/api/hints")
    def list_hints() -> list[dict[str, Any]]:
        return [h.to_json() for h in hints.get()]

    @app.get("/api/jobs")
    def list_jobs(state: str | None = None) -> list[dict[str, Any]]:
        return [j.model_dump(mode="json") for j in ordered(queue.jobs()) if state is None or j.state == state]

    @app.get("/api/jobs/{job_id}")
    def show_job(job_id: int) -> dict[str, Any]:
        job = queue.get(job_id)
        return {**job.model_dump(mode="json"), "progress": progress(job)}

    @app.get("/api/workers")
    def list_workers() -> list[dict[str, Any]]:
        now = time.time()
        return [{**w.model_dump(mode="json"), "state": worker_state(w, config.lease_s, now)} for w in queue.workers()]

    @app.get("/api/experts")
    def list_experts() -> list[dict[str, Any]]:
        return installed_experts()

    @app.post("/api/experts/verify")
    def verify_experts() -> list[dict[str, Any]]:
        """Every installed expert re-checked now (files, lock, signature against the keys trusted now)."""
        return [r.to_json() for r in reverify_installed()]

    @app.post("/api/jobs", status_code=201)
    def submit(body: Submission) -> dict[str, Any]:
        return _submit(queue, body).model_dump(mode="json")

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: int) -> dict[str, Any]:
        return queue.cancel(job_id).model_dump(mode="json")

    @app.post("/api/jobs/{job_id}/retry")
    def retry(job_id: int) -> dict[str, Any]:
        return queue.retry(job_id).model_dump(mode="json")

    @app.post("/api/jobs/{job_id}/priority")
    def priority(job_id: int, body: Level) -> dict[str, Any]:
        return queue.set_level(job_id, _level(body.level)).model_dump(mode="json")

    @app.post("/api/jobs/{job_id}/move")
    def move(job_id: int, body: Move) -> dict[str, Any]:
        return queue.move_before(job_id, body.before).model_dump(mode="json")


def _level(value: str) -> Any:
    from expertkit.errors import UsageError

    if value not in LEVELS:
        raise UsageError(f"priority {value!r} is not a level", f"one of: {', '.join(LEVELS)}")
    return value


def _submit(queue: JobQueue, body: Submission) -> Job:
    from expertkit.errors import UsageError
    from expertkit.jobs.model import KINDS

    if body.kind not in KINDS:
        raise UsageError(f"unknown job kind {body.kind!r}", f"one of: {', '.join(KINDS)}")
    expert = Path(body.expert)
    if not expert.is_absolute() or not expert.exists():
        raise UsageError(f"{body.expert}: not an existing absolute path", "give the path every worker will see")
    try:
        steps = pipeline(body.then)
    except ValueError as exc:
        raise UsageError(str(exc), "e.g. then: [eval, gate, package]") from exc
    level = _level(body.priority or default_level(body.kind))
    return queue.submit(body.kind, expert, body.options, level, body.retries, body.after, steps)  # type: ignore[arg-type]


def run_dashboard(config: DashboardConfig) -> None:
    """Serve until stopped (uvicorn, one process: the pages are cheap reads of the queue and files)."""
    import uvicorn

    uvicorn.run(build_dashboard(config), host=config.host, port=config.port, log_level="warning", access_log=False)
