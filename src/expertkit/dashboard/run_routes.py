"""The runs pages (``/runs``, ``/runs/{key}``), their JSON (``/api/runs…``) and the live curve stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from expertkit.dashboard.render import page
from expertkit.dashboard.run_view import diff, run_view
from expertkit.dashboard.runs import RunSource, find_run, find_runs, summary_row

STREAM_EVERY_S = 1.0


def install_run_routes(app: FastAPI, expert_dirs: Callable[[], list[Path]]) -> None:
    """``expert_dirs()``: the expert directories to look in now (configured, and those jobs name)."""

    def runs() -> list[RunSource]:
        return find_runs(expert_dirs())

    def one(key: str) -> RunSource:
        run = find_run(expert_dirs(), key)
        if run is None:
            raise HTTPException(404, f"no run {key!r}")
        return run

    def others(run: RunSource) -> list[dict[str, Any]]:
        return [summary_row(r) for r in runs() if r.expert == run.expert and r.key != run.key]

    @app.get("/runs", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        return page(request, "runs.html", "runs", runs=[summary_row(r) for r in runs()])

    @app.get("/runs/{key}", response_class=HTMLResponse)
    def run_page(request: Request, key: str, against: str | None = None) -> HTMLResponse:
        run = one(key)
        rows = diff(run, one(against)) if against else None
        view = run_view(run)
        context: dict[str, Any] = {"run": view, "key": key, "others": others(run), "against": against, "diff": rows}
        return page(request, "run.html", "runs", **context)

    @app.get("/api/runs")
    def list_runs() -> list[dict[str, Any]]:
        return [summary_row(r) for r in runs()]

    @app.get("/api/runs/{key}")
    def show_run(key: str) -> dict[str, Any]:
        return {"key": key, **run_view(one(key)), "others": others(one(key))}

    @app.get("/api/runs/{key}/diff")
    def diff_runs(key: str, against: str) -> list[dict[str, Any]]:
        return diff(one(key), one(against))

    @app.get("/api/stream/runs/{key}")
    async def run_stream(request: Request, key: str, max_events: int | None = None) -> StreamingResponse:
        """Server-sent ``run`` events (summary and curves as JSON) whenever the run's events file changes."""
        run = await asyncio.to_thread(one, key)
        return StreamingResponse(_run_events(request, run, max_events), media_type="text/event-stream")


def _signature(run: RunSource) -> tuple[int, float] | None:
    try:
        stat = run.events.stat() if run.events else None
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime) if stat else None


async def _run_events(request: Request, run: RunSource, max_events: int | None) -> AsyncIterator[str]:
    last: Any = object()
    sent = 0
    while not await request.is_disconnected():
        now = await asyncio.to_thread(_signature, run)
        if now != last:
            last = now
            view = await asyncio.to_thread(run_view, run)  # reads the files off the event loop
            body = json.dumps({"summary": view["summary"], "curves": view["curves"], "ledger": view["ledger"]})
            sent += 1
            yield f"event: run\ndata: {body}\n\n"
            if max_events is not None and sent >= max_events:
                return
        await asyncio.sleep(STREAM_EVERY_S)
