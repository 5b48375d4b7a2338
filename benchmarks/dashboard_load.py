"""Dashboard page-load times with 1,000 jobs in the queue and a 10,000-step run.

A private home gets a SQLite queue holding 1,000 jobs (running, queued, waiting and finished, with
attempts), a recorded 10,000-step run (a step event per step, an evaluation with samples every 10
steps) and a worker registry; a real dashboard (uvicorn on loopback) serves it and each page is
fetched over HTTP ``--repeat`` times (median and worst reported, after one warm-up). The anchor,
measured in the same run, is reading the same data without rendering: ``JobQueue.jobs()`` for the
board and a cold ``read_events`` of the run's file for the run page (the dashboard parses each line once
and reads on from where it ended, so its warm pages cost less than the cold anchor).

    .venv/bin/python benchmarks/dashboard_load.py [--jobs 1000] [--steps 10000] [--repeat 5]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill_queue(url: str, jobs: int, expert: Path) -> None:
    from expertkit.jobs.model import Attempt
    from expertkit.jobs.store import JobQueue, WorkerInfo

    queue = JobQueue(url)
    now = time.time()
    for i in range(jobs):
        job = queue.submit(
            "train" if i % 3 else "eval", expert, ["--max-steps", str(10 + i)], ("high", "normal", "low")[i % 3]
        )
        if i % 10 == 0:  # a tenth finished, the rest queued; a few running
            attempt = Attempt(
                number=1, worker="w", started_at=now - 60, finished_at=now, exit_code=0, outcome="succeeded"
            )
            queue.save(job.model_copy(update={"state": "succeeded", "attempts": [attempt]}))
        elif i < 5:
            queue.save(
                job.model_copy(update={"state": "running", "attempts": [Attempt(number=1, worker="w", started_at=now)]})
            )
    for n in range(8):
        queue.beat(WorkerInfo(name=f"w{n}", host="h", pid=n, version="0", started_at=now, heartbeat=now, jobs=[]))


def write_run(expert: Path, steps: int) -> str:
    from expertkit.events import EVENTS_FILE
    from expertkit.runs import archive_run, new_run_id, register_run

    run_id = new_run_id()
    weights = expert / "weights" / "model"
    weights.mkdir(parents=True)
    t0 = time.time() - steps
    lines = [{"event": "start", "time": t0, "total_steps": steps, "from_step": 0, "run_id": run_id}]
    for step in range(1, steps + 1):
        lines.append({"event": "step", "time": t0 + step, "step": step, "loss": 2.0 / step**0.3, "learning_rate": 1e-4,
                      "tokens_per_s": 180.0, "tokens_seen": step * 2048, "peak_rss_mib": 7000.0})  # fmt: skip
        if step % 10 == 0:
            decision = {
                "step": step,
                "train_loss": 1.0,
                "ratio": 1.1,
                "best": True,
                "eligible": True,
                "reason": "lower",
            }
            lines.append(
                {"event": "eval", "time": t0 + step, "step": step, "eval_loss": 1.0 + 1 / step, "selection": decision}
            )
            sample = {
                "prompt": "CREATE TABLE t (a INT);\nQuestion: how many?" * 4,
                "output": "SELECT 1",
                "gold": "SELECT 1",
            }
            lines.append({"event": "samples", "time": t0 + step, "step": step, "samples": [sample, sample]})
    lines.append({"event": "end", "time": t0 + steps + 1, "step": steps, "status": "finished"})
    (weights / EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in lines))
    (weights / "training_meta.json").write_text(
        json.dumps({"expert": {"name": "bench"}, "manifest": {"name": "bench"}})
    )
    archive_run(register_run(run_id, "bench", expert, weights, "model"), None)
    return run_id


def timed(client: httpx.Client, path: str, repeat: int) -> dict[str, float]:
    client.get(path)  # warm-up
    times, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, (path, response.status_code)
        size = len(response.content)
    return {
        "median_ms": round(1000 * statistics.median(times), 1),
        "max_ms": round(1000 * max(times), 1),
        "bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    os.environ["EXPERTKIT_HOME"] = str(home)
    import uvicorn

    from expertkit import events as events_module
    from expertkit.dashboard.app import DashboardConfig, build_dashboard
    from expertkit.events import read_events
    from expertkit.jobs.store import JobQueue

    expert = home / "bench-expert"
    expert.mkdir()
    url = f"sqlite:///{home / 'queue.db'}"
    fill_queue(url, args.jobs, expert)
    run_id = write_run(expert, args.steps)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_dashboard(DashboardConfig(queue_url=url)), port=port, log_level="error")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    pages = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for path in ("/jobs", "/api/jobs", "/runs", f"/runs/{run_id}", f"/api/runs/{run_id}", "/workers", "/experts",
                     "/api/hints", "/api/stream/board?max_events=1"):  # fmt: skip
            pages[path] = timed(client, path, args.repeat)
        points = max(len(c["x"]) for c in client.get(f"/api/runs/{run_id}").json()["curves"].values())
    server.should_exit = True
    queue = JobQueue(url)
    start = time.perf_counter()
    for _ in range(args.repeat):
        queue.jobs()
    jobs_read_ms = 1000 * (time.perf_counter() - start) / args.repeat
    events = home / "runs" / "bench" / run_id / "events.jsonl"
    start = time.perf_counter()
    for _ in range(args.repeat):
        events_module._PARSED.clear()  # a cold parse each time (the dashboard reads on from the last offset)
        read_events(events)
    events_read_ms = 1000 * (time.perf_counter() - start) / args.repeat
    for path, figures in pages.items():
        median, worst = figures["median_ms"], figures["max_ms"]
        print(f"{path:40s} median {median:8.1f} ms  max {worst:8.1f} ms  {figures['bytes']:>9,} B")
    print(json.dumps({
        "jobs": args.jobs, "run_steps": args.steps, "events_file_bytes": events.stat().st_size,
        "pages": pages, "curve_points_max": points,
        "anchor_queue_read_ms": round(jobs_read_ms, 1), "anchor_events_read_ms": round(events_read_ms, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
