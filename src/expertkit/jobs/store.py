"""The queue backend: job records, the priority queue, claims, locks, retries and the worker registry,
all in Huey's storage (SQLite or Redis, one API).

Keys: ``job:<id>`` the record (JSON); ``worker:<name>`` a worker's registration and heartbeat;
``claim:<id>:<token>`` taken by the one worker that starts that message (put-if-empty: a message
dequeued twice never runs twice); ``lock:<directory>`` the job writing into an expert directory.
The queue holds ``{"id", "token"}`` messages; a record whose token moved on retires older messages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, Field

from expertkit.errors import UsageError
from expertkit.home import expertkit_home
from expertkit.jobs.model import FINISHED, Job, JobKind, Level, Step

QUEUE_ENV = "EXPERTKIT_QUEUE"
NAME = "expertkit"
BACKGROUND = "expertkit-background"  # a queue of its own: foreground workers never see these messages


class WorkerInfo(BaseModel):
    name: str
    host: str
    pid: int
    devices: list[str] = Field(default_factory=list)
    memory_mib: float | None = None
    version: str
    started_at: float
    heartbeat: float
    job: int | None = None
    jobs: list[int] = Field(default_factory=list)  # every job running now (with --concurrency > 1)
    concurrency: int = 1  # slots: an alive worker with fewer jobs than this is idle capacity
    stopping: bool = False


def default_queue_url() -> str:
    return f"sqlite:///{expertkit_home() / 'queue.db'}"


def display_url(url: str) -> str:
    """``url`` fit to print or show: a password in it (``redis://:secret@host``) is masked."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


def open_storage(url: str, name: str = NAME) -> Any:
    """Huey storage for ``sqlite:///PATH`` or ``redis://host:port/db`` (``unix:///path.sock?db=0`` too)."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        from huey.storage import SqliteStorage

        path = Path(parsed.path if url.startswith("sqlite:////") or parsed.netloc == "" else parsed.netloc)
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStorage(name, filename=str(path), timeout=30)
    if parsed.scheme in ("redis", "rediss", "unix"):
        from huey.storage import PriorityRedisStorage

        return PriorityRedisStorage(name, url=url, blocking=False)
    raise UsageError(
        f"queue URL {url!r}: unknown scheme {parsed.scheme!r}",
        "use sqlite:///PATH (one machine) or redis://HOST:PORT/DB (several)",
    )


class JobQueue:
    """Jobs in a queue backend; every method is safe to call from several processes and hosts."""

    def __init__(self, url: str | None = None) -> None:
        import os

        self.url = url or os.environ.get(QUEUE_ENV) or default_queue_url()
        self.storage = open_storage(self.url)
        self.background = open_storage(self.url, BACKGROUND)

    # -- records --------------------------------------------------------------------------
    def save(self, job: Job) -> None:
        self.storage.put_data(f"job:{job.id}", job.model_dump_json().encode("utf-8"))

    def get(self, job_id: int) -> Job:
        raw = self.storage.peek_data(f"job:{job_id}")
        if not isinstance(raw, bytes | str):
            raise UsageError(f"no job {job_id} in {self.url}", "list them: expert-cli jobs list")
        return Job.model_validate_json(raw)

    def jobs(self) -> list[Job]:
        items = self.storage.result_items()
        found = [Job.model_validate_json(v) for k, v in items.items() if _key(k).startswith("job:")]
        return sorted(found, key=lambda j: j.id)

    # -- queueing -------------------------------------------------------------------------
    def submit(
        self,
        kind: JobKind,
        manifest: Path,
        options: list[str],
        level: Level = "normal",
        retries: int = 2,
        after: int | None = None,
        then: list[Step] | None = None,
    ) -> Job:
        """Record a job and queue it (or hold it, ``waiting``, until job ``after`` succeeded); each step
        of ``then`` is recorded at once, waiting on the one before it (so ``jobs list`` shows the whole
        pipeline, and a failure marks the rest as not run)."""
        if after is not None:
            self.get(after)  # exists
        job_id = int(self.storage.incr("job_id"))
        state = "waiting" if after is not None else "queued"
        job = Job(
            id=job_id,
            kind=kind,
            manifest=str(manifest.resolve()),
            options=options,
            level=level,
            order=float(job_id),
            state=state,
            max_retries=retries,
            after=after,
        )
        self.save(job)
        if state == "queued":
            self.enqueue(job)
        previous = job
        for step in then or []:
            previous = self.submit(step.kind, manifest, step.options, level, retries, after=previous.id)
        return job

    def _queue_of(self, job: Job) -> Any:
        return self.background if job.level == "background" else self.storage

    def enqueue(self, job: Job, at: float | None = None) -> None:
        message = json.dumps({"id": job.id, "token": job.token}).encode("utf-8")
        if at is None:
            self._queue_of(job).enqueue(message, priority=job.priority)
        else:
            self.storage.add_to_schedule(message, _timestamp(at))

    def requeue(self, job: Job, at: float | None = None) -> Job:
        """A new message for ``job`` (older ones retire), now or at ``at``."""
        job = job.model_copy(update={"token": job.token + 1, "state": "queued", "retry_at": at})
        self.save(job)
        self.enqueue(job, at)
        return job

    def release_due(self) -> None:
        """Move retries whose backoff has passed into the queue."""
        for message in self.storage.read_schedule(_timestamp(time.time())):
            body = json.loads(message)
            job = self.get(int(body["id"]))
            if job.state == "queued" and job.token == body["token"]:
                self._queue_of(job).enqueue(message, priority=job.priority)

    def foreground_waiting(self) -> bool:
        """Whether a foreground message waits (stale ones count: a background job yields a little early)."""
        return bool(self.storage.queue_size())

    def claim(self, worker: str, background: Callable[[], bool] | None = None) -> Job | None:
        """The next job to run, now owned by ``worker``; stale messages are dropped on the way.
        With ``background``, a background job is taken when no foreground job waits and it says yes
        (the device is idle)."""
        self.release_due()
        job = self._claim_from(self.storage, worker)
        if job is None and background is not None and self.background.queue_size() and background():
            job = self._claim_from(self.background, worker)
        return job

    def _claim_from(self, storage: Any, worker: str) -> Job | None:
        while (message := storage.dequeue()) is not None:
            body = json.loads(message)
            try:
                job = self.get(int(body["id"]))
            except UsageError:
                continue
            if job.state != "queued" or job.token != body["token"] or job.cancel_requested:
                continue
            if not self.storage.put_if_empty(f"claim:{job.id}:{job.token}", worker.encode("utf-8")):
                continue  # another worker started this very message
            return job
        return None

    def peek_levels(self) -> set[str]:
        """Levels of the jobs queued now (what a background task yields to)."""
        return {j.level for j in self.jobs() if j.state == "queued"}

    # -- control --------------------------------------------------------------------------
    def cancel(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job.state in FINISHED:
            raise UsageError(f"job {job_id} already {job.state}", "nothing to cancel")
        if job.state == "running":
            job = job.model_copy(update={"cancel_requested": True})  # the worker interrupts it
        else:
            job = job.model_copy(update={"state": "cancelled", "token": job.token + 1, "cancel_requested": True})
        self.save(job)
        return job

    def retry(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job.state not in ("failed", "cancelled"):
            raise UsageError(f"job {job_id} is {job.state}", "only a failed or cancelled job can be retried")
        fresh = job.model_copy(update={"cancel_requested": False, "error": None, "max_retries": job.max_retries})
        return self.requeue(fresh)

    def set_level(self, job_id: int, level: Level) -> Job:
        job = self._queued(job_id, "change its priority")
        return self.requeue(job.model_copy(update={"level": level}))

    def move_before(self, job_id: int, other_id: int) -> Job:
        """Run ``job_id`` just before ``other_id`` (both queued; it takes the other's level)."""
        job, other = self._queued(job_id, "move it"), self._queued(other_id, "move before it")
        same = [j for j in self.jobs() if j.state == "queued" and j.level == other.level and j.id != job.id]
        earlier = [j.order for j in same if j.order < other.order]
        order = (max(earlier) + other.order) / 2 if earlier else other.order - 1
        return self.requeue(job.model_copy(update={"level": other.level, "order": order}))

    def _queued(self, job_id: int, what: str) -> Job:
        job = self.get(job_id)
        if job.state not in ("queued", "waiting"):
            raise UsageError(f"job {job_id} is {job.state}", f"only a queued job can {what}")
        return job

    # -- locks and workers ----------------------------------------------------------------
    def lock(self, directory: str, job_id: int) -> int | None:
        """Take ``directory`` for ``job_id``; the holder's id when another job has it."""
        if self.storage.put_if_empty(f"lock:{directory}", str(job_id).encode()):
            return None
        holder = self.storage.peek_data(f"lock:{directory}")
        held = int(_key(holder)) if isinstance(holder, bytes | str) else None
        return None if held == job_id else held

    def unlock(self, directory: str, job_id: int) -> None:
        holder = self.storage.peek_data(f"lock:{directory}")
        if isinstance(holder, bytes | str) and _key(holder) == str(job_id):
            self.storage.delete_data(f"lock:{directory}")

    def beat(self, info: WorkerInfo) -> None:
        self.storage.put_data(f"worker:{info.name}", info.model_dump_json().encode("utf-8"))

    def workers(self) -> list[WorkerInfo]:
        items = self.storage.result_items()
        found = [WorkerInfo.model_validate_json(v) for k, v in items.items() if _key(k).startswith("worker:")]
        return sorted(found, key=lambda w: w.name)

    def forget_worker(self, name: str) -> None:
        self.storage.delete_data(f"worker:{name}")


def _key(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _timestamp(at: float) -> Any:
    """Huey's schedule takes a naive local datetime (SQLite and Redis both read it as local time)."""
    import datetime

    return datetime.datetime.fromtimestamp(at)
