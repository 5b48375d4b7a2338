"""The jobs board: rows (progress, the run a training job writes, where a job can move), the hints
above them, and the live stream that re-renders the board when it changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import Request

from expertkit.dashboard.hints import Hint
from expertkit.dashboard.render import TEMPLATES
from expertkit.events import read_events
from expertkit.jobs.model import FINISHED, LEVELS, Job
from expertkit.jobs.view import events_path, ordered, progress

LOG_LINES = 200
STREAM_EVERY_S = 1.0
HINTS_EVERY_S = 10.0  # hints read run events and evaluations: recomputed at most this often


def run_of(job: Job) -> str | None:
    """The run id a training job's current attempt writes (from its ``start`` event), if it started."""
    if job.kind != "train" or not job.attempts:
        return None
    path = events_path(job)
    if path is None or path.stat().st_mtime < job.attempts[-1].started_at:
        return None
    starts = [e for e in read_events(path) if e.get("event") == "start"]
    run = starts[0].get("run_id") if starts else None
    return run if isinstance(run, str) else None


def job_row(job: Job, move_before: int | None = None) -> dict[str, Any]:
    running = job.state == "running"
    now = progress(job) if running else {}
    return {
        "id": job.id,
        "kind": job.kind,
        "expert": Path(job.manifest).name,
        "manifest": job.manifest,
        "level": job.level,
        "state": job.state,
        "attempts": len(job.attempts),
        "worker": job.worker,
        "options": " ".join(job.options),
        "progress": " · ".join(f"{k} {v}" for k, v in now.items()),
        "run": run_of(job) if running else None,
        "move_before": move_before,
    }


def board_groups(jobs: list[Job]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows by state, in queue order; a queued job can move before the one ahead of it at its level."""
    rows: list[dict[str, Any]] = []
    ahead: Job | None = None
    for job in ordered(jobs):
        before = ahead.id if ahead is not None and job.state == "queued" and ahead.level == job.level else None
        rows.append(job_row(job, before))
        ahead = job if job.state == "queued" else ahead
    return [(s, [r for r in rows if r["state"] == s]) for s in ("running", "queued", "waiting", *FINISHED)]


class HintCache:
    """The board's hints, recomputed at most every :data:`HINTS_EVERY_S` seconds."""

    def __init__(self, compute: Callable[[], list[Hint]]) -> None:
        self.compute = compute
        self.at, self.hints = 0.0, list[Hint]()

    def get(self) -> list[Hint]:
        if time.monotonic() - self.at > HINTS_EVERY_S:
            self.hints, self.at = self.compute(), time.monotonic()
        return self.hints


def board_context(jobs: list[Job], hints: HintCache) -> dict[str, Any]:
    return {"groups": board_groups(jobs), "hints": hints.get(), "levels": LEVELS}


def log_tail(path: Path, lines: int = LOG_LINES, window: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log, reading at most its last ``window`` bytes (logs can be large)."""
    if not path.is_file():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(path.stat().st_size - window, 0))
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


async def board_events(
    request: Request, context: Callable[[], dict[str, Any]], max_events: int | None
) -> AsyncIterator[str]:
    """One ``board`` event per change (the first at once); ``max_events`` ends the stream (scripts, tests)."""
    template = TEMPLATES.get_template("board.html")
    last, sent = None, 0
    while not await request.is_disconnected():
        values = await asyncio.to_thread(context)  # reads the backend off the event loop
        html = template.render(**values)
        if html != last:
            last, sent = html, sent + 1
            yield "event: board\n" + "".join(f"data: {line}\n" for line in html.splitlines()) + "\n"
            if max_events is not None and sent >= max_events:
                return
        await asyncio.sleep(STREAM_EVERY_S)
