"""The queue on a real SQLite backend (Huey's storage): priority order, FIFO within a level, reorder,
priority change, cancel, retry, claims that never run a message twice, the worker registry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from expertkit.errors import UsageError
from expertkit.jobs.model import pipeline
from expertkit.jobs.outcomes import reap
from expertkit.jobs.store import JobQueue, WorkerInfo
from expertkit.jobs.view import ordered, worker_state


@pytest.fixture
def queue(queue_url: str) -> JobQueue:
    return JobQueue(queue_url)  # every test runs on SQLite and on a real Redis server


def drain(queue: JobQueue) -> list[int]:
    order = []
    while (job := queue.claim("w")) is not None:
        order.append(job.id)
    return order


def test_high_before_normal_before_low_fifo_within_a_level(queue: JobQueue, tmp_path: Path) -> None:
    ids = {}
    for name, level in [("a", "low"), ("b", "normal"), ("c", "high"), ("d", "normal"), ("e", "high")]:
        ids[name] = queue.submit("train", tmp_path, [], level).id  # type: ignore[arg-type]
    assert [j.id for j in ordered(queue.jobs())] == [ids[n] for n in "cebda"]
    assert drain(queue) == [ids[n] for n in "cebda"]
    assert drain(queue) == []  # each message runs once


def test_move_and_priority_change_reorder_the_queue(queue: JobQueue, tmp_path: Path) -> None:
    a, b, c = (queue.submit("eval", tmp_path, []).id for _ in range(3))
    queue.move_before(c, b)
    low = queue.submit("eval", tmp_path, [], "low").id
    queue.set_level(low, "high")
    queue.move_before(a, c)  # a moves just before c, which is already before b
    assert drain(queue) == [low, a, c, b]


def test_cancel_retry_and_clear_errors(queue: JobQueue, tmp_path: Path) -> None:
    first = queue.submit("train", tmp_path, ["--max-steps", "3"])
    second = queue.submit("train", tmp_path, [])
    assert queue.cancel(first.id).state == "cancelled"
    assert drain(queue) == [second.id]  # the cancelled one's message is retired
    assert queue.retry(first.id).state == "queued"
    assert drain(queue) == [first.id] and queue.get(first.id).options == ["--max-steps", "3"]
    with pytest.raises(UsageError, match="only a failed or cancelled job can be retried"):
        queue.retry(second.id)
    with pytest.raises(UsageError, match="no job 99"):
        queue.get(99)
    with pytest.raises(UsageError, match="unknown scheme 'mysql'"):
        JobQueue("mysql://x")


def test_a_message_dequeued_twice_is_claimed_once(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.submit("eval", tmp_path, [])
    queue.enqueue(job)  # the same message twice (a re-delivery)
    assert drain(queue) == [job.id]


def test_waiting_jobs_and_pipelines(queue: JobQueue, tmp_path: Path) -> None:
    first = queue.submit("train", tmp_path, [])
    after = queue.submit("package", tmp_path, [], after=first.id)
    assert after.state == "waiting" and drain(queue) == [first.id]
    steps = pipeline(["eval", "gate", "package"])
    assert [(s.kind, s.options) for s in steps] == [("eval", ["--gate"]), ("package", ["--require-gate"])]
    head = queue.submit("train", tmp_path, [], then=steps)
    chain = [j for j in queue.jobs() if j.id >= head.id]
    assert [(j.kind, j.state, j.after) for j in chain] == [
        ("train", "queued", None),
        ("eval", "waiting", head.id),
        ("package", "waiting", head.id + 1),
    ]
    with pytest.raises(ValueError, match="unknown pipeline step 'deploy'"):
        pipeline(["deploy"])


def test_the_registry_and_the_reaper(queue: JobQueue, tmp_path: Path) -> None:
    now = time.time()
    for name, beat in (("alive", now), ("gone", now - 100)):
        queue.beat(WorkerInfo(name=name, host="h", pid=1, version="0", started_at=now - 200, heartbeat=beat))
    states = {w.name: worker_state(w, 30, now) for w in queue.workers()}
    assert states == {"alive": "alive", "gone": "lost"}
    queue.submit("train", tmp_path, [])
    job = queue.claim("gone")
    assert job is not None
    from expertkit.jobs.model import Attempt

    running = job.model_copy(
        update={"state": "running", "attempts": [Attempt(number=1, worker="gone", started_at=now)]}
    )
    queue.save(running)
    assert queue.lock(str(tmp_path), job.id) is None and queue.lock(str(tmp_path), 999) == job.id
    reaped = reap(queue, lease_s=30)
    assert [j.id for j in reaped] == [job.id] and reaped[0].state == "queued"
    assert reaped[0].attempts[-1].outcome == "lost" and queue.lock(str(tmp_path), 999) is None  # lock released
    assert reap(queue, lease_s=30) == []  # once
    assert drain(queue) == [job.id]
