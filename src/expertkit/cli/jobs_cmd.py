"""``expert-cli jobs ...``, ``expert-cli worker`` and ``expert-cli workers list``."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from expertkit.cli.console import out_console, reports_errors
from expertkit.errors import UsageError

jobs_app = typer.Typer(
    help="The job queue: submit, list, show, logs, cancel, retry, priority, move.", no_args_is_help=True
)
workers_app = typer.Typer(help="Workers registered with the queue.", no_args_is_help=True)

QUEUE = typer.Option(None, "--queue", help="Queue URL: sqlite:///PATH or redis://HOST:PORT/DB (env EXPERTKIT_QUEUE).")
JSON = typer.Option(False, "--json", help="Print JSON.")
LEVEL_HELP = "high, normal, low or background (runs only while nothing else waits and the device idles)."


def _queue(url: str | None) -> Any:
    from expertkit.jobs.store import JobQueue

    return JobQueue(url)


def _level(value: str) -> Any:
    from expertkit.jobs.model import LEVELS

    if value not in LEVELS:
        raise UsageError(f"--priority {value!r} is not a level", f"one of: {', '.join(LEVELS)}")
    return value


@jobs_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@reports_errors
def submit(
    ctx: typer.Context,
    kind: str = typer.Argument(..., help="train, eval, package, prepare or spar."),
    manifest: Path = typer.Option(..., "--expert", "--manifest", help="Expert directory or manifest file."),
    priority: str | None = typer.Option(None, "--priority", help=LEVEL_HELP + " Default: high for spar, else normal."),
    retries: int = typer.Option(2, "--retries", min=0, max=20, help="Retries after a crash or a lost worker."),
    after: int | None = typer.Option(None, "--after", help="Run once job ID has succeeded."),
    then: str = typer.Option("", "--then", help="Steps to submit after this one succeeds, e.g. eval,gate,package."),
    queue: str | None = QUEUE,
    as_json: bool = JSON,
) -> None:
    """Queue a job: the command's own options follow (e.g. --max-steps 30); prints the job id."""
    from expertkit.jobs.model import KINDS, default_level, pipeline

    if kind not in KINDS:
        raise UsageError(f"unknown job kind {kind!r}", f"one of: {', '.join(KINDS)}")
    if not manifest.exists():
        raise UsageError(f"{manifest}: no such expert directory or manifest", "give the path every worker will see")
    try:
        steps = pipeline([s.strip() for s in then.split(",") if s.strip()])
    except ValueError as exc:
        raise UsageError(f"--then: {exc}", "e.g. --then eval,gate,package") from exc
    level = _level(priority or default_level(kind))
    job = _queue(queue).submit(kind, manifest, list(ctx.args), level, retries, after, steps)
    if as_json:
        print(job.model_dump_json(indent=2))
        return
    out_console.print(str(job.id))


def _age(seconds: float) -> str:
    return (
        f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"
    )


@jobs_app.command("background")
@reports_errors
def background(queue: str | None = QUEUE, as_json: bool = JSON) -> None:
    """Queue the built-in background tasks (installed experts' re-verification and missing baselines).

    They run on a `worker --background` while nothing else waits and the device idles."""
    from expertkit.jobs.housekeeping import submit_background_tasks

    jobs = submit_background_tasks(_queue(queue))
    if as_json:
        print(json.dumps([j.model_dump(mode="json") for j in jobs], indent=2))
        return
    for job in jobs:
        out_console.print(f"{job.id}: {job.kind} {escape(job.manifest)} {escape(' '.join(job.options))}".rstrip())
    if not jobs:
        out_console.print("nothing to add: every background task is queued or running already")


@jobs_app.command("list")
@reports_errors
def list_jobs(
    state: str | None = typer.Option(None, "--state", help="Only jobs in this state (queued, running, ...)."),
    queue: str | None = QUEUE,
    as_json: bool = JSON,
) -> None:
    """Jobs, in the order they will run (queued) after the ones running, then the finished ones."""
    from expertkit.jobs.view import ordered

    jobs = [j for j in ordered(_queue(queue).jobs()) if state is None or j.state == state]
    if as_json:
        print(json.dumps([j.model_dump(mode="json") for j in jobs], indent=2))
        return
    table = Table("id", "kind", "expert", "priority", "state", "attempts", "worker", "age", title="jobs")
    now = time.time()
    for job in jobs:
        expert = Path(job.manifest).name
        table.add_row(
            str(job.id), job.kind, escape(expert), job.level, job.state, str(len(job.attempts)),
            escape(job.worker or "-"), _age(now - job.submitted_at),
        )  # fmt: skip
    out_console.print(table)


@jobs_app.command("show")
@reports_errors
def show(job_id: int = typer.Argument(...), queue: str | None = QUEUE, as_json: bool = JSON) -> None:
    """One job: state, priority, attempts, worker, timings, progress (from its run events), error."""
    from expertkit.jobs.view import progress

    job = _queue(queue).get(job_id)
    now = progress(job)
    if as_json:
        print(json.dumps({**job.model_dump(mode="json"), "progress": now}, indent=2))
        return
    out_console.print(f"job {job.id}: {job.kind} {escape(job.manifest)} {escape(' '.join(job.options))}")
    out_console.print(f"  state {job.state} · priority {job.level} · retries {job.max_retries}")
    for attempt in job.attempts:
        took = f"{(attempt.finished_at or time.time()) - attempt.started_at:.0f}s"
        out_console.print(
            f"  attempt {attempt.number} on {escape(attempt.worker)}: {attempt.outcome or 'running'} "
            f"(exit {attempt.exit_code}, {took})"
        )
    if now:
        out_console.print("  progress " + " · ".join(f"{k} {v}" for k, v in now.items()))
    if job.error:
        out_console.print(f"  error {escape(job.error)}")
    if job.log:
        out_console.print(f"  log {escape(job.log)}")


@jobs_app.command("logs")
@reports_errors
def logs(
    job_id: int = typer.Argument(...),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job finishes."),
    queue: str | None = QUEUE,
) -> None:
    """The job's log: every attempt's output, in order."""
    from expertkit.jobs.model import FINISHED
    from expertkit.jobs.outcomes import job_log

    jobs = _queue(queue)
    path, offset = job_log(jobs.get(job_id)), 0
    while True:
        if path.is_file():
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        if not follow or jobs.get(job_id).state in FINISHED:
            return
        time.sleep(0.5)


@jobs_app.command("cancel")
@reports_errors
def cancel(job_id: int = typer.Argument(...), queue: str | None = QUEUE) -> None:
    """Cancel a job: a queued one never runs; a running one is interrupted (a training run checkpoints)."""
    job = _queue(queue).cancel(job_id)
    out_console.print(
        f"job {job.id}: {'cancelling (the worker interrupts it)' if job.state == 'running' else job.state}"
    )


@jobs_app.command("retry")
@reports_errors
def retry(job_id: int = typer.Argument(...), queue: str | None = QUEUE) -> None:
    """Queue a failed or cancelled job again (a training job resumes from its newest checkpoint)."""
    job = _queue(queue).retry(job_id)
    out_console.print(f"job {job.id}: queued again")


@jobs_app.command("priority")
@reports_errors
def priority(
    job_id: int = typer.Argument(...), level: str = typer.Argument(..., help=LEVEL_HELP), queue: str | None = QUEUE
) -> None:
    """Change a queued job's priority (it goes to the back of its new level)."""
    job = _queue(queue).set_level(job_id, _level(level))
    out_console.print(f"job {job.id}: priority {job.level}")


@jobs_app.command("move")
@reports_errors
def move(
    job_id: int = typer.Argument(...),
    before: int = typer.Option(..., "--before", help="The queued job it should run just before."),
    queue: str | None = QUEUE,
) -> None:
    """Reorder the queue: run a queued job just before another (it takes the other's priority)."""
    job = _queue(queue).move_before(job_id, before)
    out_console.print(f"job {job.id}: moved before job {before} ({job.level})")


@reports_errors
def worker(
    queue: str | None = QUEUE,
    name: str | None = typer.Option(None, "--name", help="Worker name (default host-pid)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda:N (the child sees only that GPU)."),
    once: bool = typer.Option(False, "--once", help="Run at most one job (per slot), then exit."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, max=64, help="Jobs run side by side."),
    background: bool = typer.Option(
        False, "--background", help="Also run background jobs, while nothing else waits and the device idles."
    ),
    max_load: float = typer.Option(
        0.5, "--idle-below", min=0.0, help="Idle means: GPU utilisation, or CPU load per core, below this."
    ),
    lease: float = typer.Option(30.0, "--lease", min=2.0, help="Seconds without a heartbeat before a worker is lost."),
    poll: float = typer.Option(0.5, "--poll", min=0.01, max=60.0, help="Seconds between looks at an empty queue."),
    launcher: str | None = typer.Option(
        None, "--launcher", help="What runs each job instead of 'python -m expertkit' (e.g. 'nice -n 10 expert-cli')."
    ),
) -> None:
    """Run queued jobs until stopped; SIGTERM interrupts the current job (checkpointed, requeued) and exits 0."""
    from expertkit.jobs.store import display_url
    from expertkit.jobs.worker import Worker, WorkerConfig

    config = WorkerConfig(
        device=device,
        once=once,
        lease_s=lease,
        poll_s=poll,
        background=background,
        max_load=max_load,
        concurrency=concurrency,
    )
    if name:
        config.name = name
    if launcher:
        config.launcher = shlex.split(launcher)
    jobs = _queue(queue)
    out_console.print(f"worker {escape(config.name)} on {escape(display_url(jobs.url))} ({device})")
    say = lambda line: out_console.print(escape(line))  # noqa: E731
    raise typer.Exit(Worker(jobs, config, say).run())


@workers_app.command("list")
@reports_errors
def list_workers(
    queue: str | None = QUEUE,
    lease: float = typer.Option(30.0, "--lease", help="Seconds without a heartbeat before a worker counts as lost."),
    as_json: bool = JSON,
) -> None:
    """The host registry: name, host, devices, memory, version, current job, last heartbeat, state."""
    from expertkit.jobs.view import worker_state

    now = time.time()
    found = _queue(queue).workers()
    if as_json:
        rows = [{**w.model_dump(mode="json"), "state": worker_state(w, lease, now)} for w in found]
        print(json.dumps(rows, indent=2))
        return
    table = Table("name", "host", "devices", "memory", "version", "job", "heartbeat", "state", title="workers")
    for w in found:
        table.add_row(
            escape(w.name), escape(w.host), ",".join(w.devices), f"{(w.memory_mib or 0) / 1024:.0f} GiB",
            w.version, ",".join(map(str, w.jobs)) or str(w.job or "-"), f"{_age(now - w.heartbeat)} ago",
            worker_state(w, lease, now),
        )  # fmt: skip
    out_console.print(table)
