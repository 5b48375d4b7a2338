"""What the job queue costs: throughput of no-op jobs, submit-to-start latency, and the extra wall time
of one training job run through the queue instead of directly.

- ``sqlite_jobs_per_s`` / ``redis_jobs_per_s``: 200 no-op jobs (the launcher is ``true``) drained by 2
  workers, from the first submit to the last job recorded as succeeded. The Redis server is started
  here on a Unix socket in a temp dir (``redis-server`` on PATH; ``make test`` installs it).
- ``submit_to_start_p50_s``: 20 jobs submitted one at a time to an idle worker (SQLite), each after
  the previous finished: the median from submit to the worker starting it.
- ``train_job_overhead_s``: the embedded model, ``train --max-steps 1`` on a scaffolded expert (its
  data prepared beforehand), run directly as ``python -m expertkit train`` and through the queue with a
  worker already waiting; the difference of the two wall times (goal: < 1 s).

Last line: {"sqlite_jobs_per_s": …, "redis_jobs_per_s": …, "submit_to_start_p50_s": …,
"train_job_overhead_s": …, "train_direct_s": …, "train_queued_s": …}
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

JOBS = 200


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    server = shutil.which("redis-server") or shutil.which("valkey-server")
    if server is None:
        raise SystemExit("redis-server is not on PATH (make test installs it)")
    socket = directory / "redis.sock"
    process = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(socket), "--dir", str(directory), "--save", "",
         "--appendonly", "no", "--logfile", str(directory / "redis.log")],
    )  # fmt: skip
    while not socket.exists():
        time.sleep(0.02)
    try:
        yield f"unix://{socket}?db=0"
    finally:
        process.terminate()
        process.wait()


@contextmanager
def workers(url: str, count: int, launcher: str | None = None) -> Iterator[None]:
    cli = [sys.executable, "-m", "expertkit", "worker", "--queue", url, "--poll", "0.05"]
    cli += ["--launcher", launcher] if launcher else []
    started = [subprocess.Popen([*cli, "--name", f"bench-{i}"], stdout=subprocess.DEVNULL) for i in range(count)]
    try:
        yield
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            process.wait(timeout=60)


def wait_done(queue: object, job_ids: list[int], timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = {queue.get(i).state for i in job_ids}  # type: ignore[attr-defined]
        if states <= {"succeeded", "failed", "cancelled"}:
            if states != {"succeeded"}:
                raise SystemExit(f"jobs ended {states}")
            return
        time.sleep(0.02)
    raise SystemExit("timed out")


def throughput(url: str, work: Path) -> float:
    from expertkit.jobs.store import JobQueue

    queue = JobQueue(url)
    with workers(url, 2, "true"):
        time.sleep(3)  # both workers up and polling
        started = time.perf_counter()
        ids = [queue.submit("prepare", work, []).id for _ in range(JOBS)]
        wait_done(queue, ids)
        return JOBS / (time.perf_counter() - started)


def submit_to_start(url: str, work: Path) -> float:
    from expertkit.jobs.store import JobQueue

    queue = JobQueue(url)
    delays = []
    with workers(url, 1, "true"):
        time.sleep(3)
        for _ in range(20):
            job = queue.submit("prepare", work, [])
            wait_done(queue, [job.id])
            done = queue.get(job.id)
            delays.append(done.attempts[0].started_at - done.submitted_at)
    return statistics.median(delays)


def train_overhead(work: Path) -> tuple[float, float]:
    from expertkit.jobs.store import JobQueue

    expert = work / "bench-expert"
    subprocess.run([sys.executable, "-m", "expertkit", "init", str(expert)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "expertkit", "data", "prepare", "--expert", str(expert)], check=True)
    train = ["train", "--expert", str(expert), "--max-steps", "1", "--eval-samples", "0"]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "expertkit", *train], check=True, capture_output=True)
    direct = time.perf_counter() - started
    url = f"sqlite:///{work / 'train-queue.db'}"
    queue = JobQueue(url)
    with workers(url, 1):
        time.sleep(3)
        started = time.perf_counter()
        job = queue.submit("train", expert, train[3:])
        wait_done(queue, [job.id])
        queued = time.perf_counter() - started
    return direct, queued


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="expertkit-queue-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("EXPERTKIT_HOME", str(work / "home"))
        sqlite = throughput(f"sqlite:///{work / 'q.db'}", work)
        (work / "redis").mkdir()
        with redis_server(work / "redis") as url:
            redis = throughput(url, work)
        latency = submit_to_start(f"sqlite:///{work / 'latency.db'}", work)
        direct, queued = train_overhead(work)
    result = {
        "sqlite_jobs_per_s": round(sqlite, 1),
        "redis_jobs_per_s": round(redis, 1),
        "submit_to_start_p50_s": round(latency, 3),
        "train_job_overhead_s": round(queued - direct, 2),
        "train_direct_s": round(direct, 2),
        "train_queued_s": round(queued, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
