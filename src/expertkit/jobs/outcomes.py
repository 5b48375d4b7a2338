"""What happens to a job after an attempt: the attempt closed with its outcome, the jobs waiting on it
queued or marked not run, and the reaper that requeues the job of a worker that stopped heartbeating."""

from __future__ import annotations

import time
from pathlib import Path

from expertkit.home import expertkit_home
from expertkit.jobs.model import Job
from expertkit.jobs.store import JobQueue
from expertkit.layout import MANIFEST_FILE


def job_log(job: Job) -> Path:
    return expertkit_home() / "jobs" / f"{job.id}.log"


def expert_dir(job: Job) -> Path:
    path = Path(job.manifest)
    return path.parent if path.name == MANIFEST_FILE or path.is_file() else path


def closed(job: Job, code: int | None, outcome: str) -> Job:
    """``job`` with its last attempt finished now, with exit ``code`` and ``outcome``."""
    if not job.attempts:
        return job
    last = job.attempts[-1].model_copy(update={"finished_at": time.time(), "exit_code": code, "outcome": outcome})
    return job.model_copy(update={"attempts": [*job.attempts[:-1], last]})


def follow_up(queue: JobQueue, job: Job) -> None:
    """After ``job`` finished: queue the jobs waiting on it, or mark them (and theirs) as not run."""
    for waiting in [j for j in queue.jobs() if j.after == job.id and j.state == "waiting"]:
        if job.state == "succeeded":
            queue.requeue(waiting)
        else:
            reason = f"job {job.id} ({job.kind}) {job.state}: {job.error or ''}".rstrip(": ")
            queue.save(waiting.model_copy(update={"state": "cancelled", "error": f"not run: {reason}"}))
            follow_up(queue, queue.get(waiting.id))


def reap(queue: JobQueue, lease_s: float) -> list[Job]:
    """Requeue running jobs whose worker stopped heartbeating (any worker may call this)."""
    alive = {w.name: w for w in queue.workers()}
    now, reaped = time.time(), []
    for job in [j for j in queue.jobs() if j.state == "running"]:
        worker = alive.get(job.worker or "")
        if worker is not None and now - worker.heartbeat < lease_s:
            continue
        if not queue.storage.put_if_empty(f"reaped:{job.id}:{job.token}", b"1"):
            continue  # another worker reaped it
        queue.unlock(str(expert_dir(job)), job.id)
        job = closed(job, None, "lost")
        if len(job.attempts) <= job.max_retries:
            reaped.append(queue.requeue(job))
            continue
        failed = job.model_copy(update={"state": "failed", "error": f"worker {job.attempts[-1].worker} was lost"})
        queue.save(failed)
        follow_up(queue, failed)
        reaped.append(failed)
    return reaped
