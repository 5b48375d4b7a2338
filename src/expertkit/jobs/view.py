"""What ``jobs list``, ``jobs show`` and ``workers list`` read: queue order, progress, worker state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from expertkit.events import EVENTS_FILE, eta_seconds, read_events
from expertkit.jobs.model import Job
from expertkit.jobs.outcomes import expert_dir
from expertkit.jobs.store import WorkerInfo
from expertkit.layout import WEIGHTS_DIR

STATE_ORDER = {"running": 0, "queued": 1, "waiting": 2, "succeeded": 3, "failed": 3, "cancelled": 3}


def ordered(jobs: list[Job]) -> list[Job]:
    """Running, then queued in the order they will run, then waiting, then finished (newest first)."""
    active = sorted((j for j in jobs if STATE_ORDER[j.state] < 3), key=lambda j: (STATE_ORDER[j.state], -j.priority))
    finished = sorted((j for j in jobs if STATE_ORDER[j.state] == 3), key=lambda j: -j.id)
    return active + finished


def progress(job: Job) -> dict[str, Any]:
    """Where a training job's current run stands, from its ``events.jsonl`` (empty for other kinds)."""
    if job.kind != "train" or not job.attempts:
        return {}
    started = job.attempts[-1].started_at
    files = [p for p in (expert_dir(job) / WEIGHTS_DIR).glob(f"*/{EVENTS_FILE}") if p.stat().st_mtime >= started]
    if not files:
        return {}
    events = read_events(max(files, key=lambda p: p.stat().st_mtime))
    starts = [e for e in events if e.get("event") == "start"]
    steps = [e for e in events if e.get("event") == "step"]
    evals = [e for e in events if e.get("event") == "eval"]
    found: dict[str, Any] = {}
    if starts:
        found["steps"] = (
            f"{steps[-1]['step'] if steps else starts[-1].get('from_step', 0)}/{starts[-1].get('total_steps')}"
        )
    if steps:
        found["loss"] = _rounded(steps[-1].get("loss"))
        found["tokens_per_s"] = _rounded(steps[-1].get("tokens_per_s"), 1)
    if evals:
        found["eval_loss"] = _rounded(evals[-1].get("eval_loss"))
    ends = [e for e in events if e.get("event") == "end"]
    if ends:
        found["ended"] = ends[-1].get("status")
    elif (eta := eta_seconds(events, time.time())) is not None:
        found["eta"] = f"{int(eta) // 60}m{int(eta) % 60:02d}s"
    return found


def _rounded(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def worker_state(info: WorkerInfo, lease_s: float, now: float) -> str:
    if info.stopping:
        return "stopped"
    return "alive" if now - info.heartbeat < lease_s else "lost"


def events_path(job: Job) -> Path | None:
    files = list((expert_dir(job) / WEIGHTS_DIR).glob(f"*/{EVENTS_FILE}"))
    return max(files, key=lambda p: p.stat().st_mtime) if files else None
