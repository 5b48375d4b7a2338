"""Action hints over a real queue and real files, and the board's controls as rendered."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from expertkit.dashboard.app import DashboardConfig, build_dashboard
from expertkit.dashboard.hints import gate_hints, overfitting, queue_hints
from expertkit.dashboard.runs import RunSource
from expertkit.jobs.store import JobQueue, WorkerInfo


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(f"sqlite:///{tmp_path / 'queue.db'}")


def worker(name: str, jobs: list[int], concurrency: int = 1, age: float = 0.0) -> WorkerInfo:
    now = time.time()
    return WorkerInfo(name=name, host="h", pid=1, version="0", started_at=now, heartbeat=now - age, jobs=jobs,
                      concurrency=concurrency, devices=["cuda:0"])  # fmt: skip


def run_with(tmp_path: Path, evals: list[tuple[float, float]]) -> RunSource:
    path = tmp_path / "events.jsonl"
    lines = [{"event": "eval", "step": 10 * (i + 1), "eval_loss": loss, "selection": {"ratio": ratio}}
             for i, (loss, ratio) in enumerate(evals)]  # fmt: skip
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return RunSource("20260101-000000-abcdef", "sql", "tiny", 0.0, path, None, None, tmp_path, True)


def test_overfitting_is_a_rising_ratio_with_eval_loss_above_its_best(tmp_path: Path) -> None:
    hint = overfitting(run_with(tmp_path, [(1.2, 1.0), (1.0, 1.05), (1.05, 1.2), (1.1, 1.4)]))
    assert hint is not None and hint.kind == "overfitting" and "1.05 → 1.20 → 1.40" in hint.message
    assert "10.0% above its best (step 20)" in hint.message and hint.link == "/runs/20260101-000000-abcdef"
    assert overfitting(run_with(tmp_path, [(1.2, 1.0), (1.1, 1.1), (1.0, 1.2)])) is None  # eval loss still falls
    assert overfitting(run_with(tmp_path, [(1.0, 1.0), (1.1, 1.3), (1.2, 1.2)])) is None  # the ratio fell once
    assert overfitting(run_with(tmp_path, [(1.0, 1.0), (1.1, 1.3)])) is None  # too few evaluations


def test_queue_hints_name_the_missing_worker_and_the_idle_one(queue: JobQueue, tmp_path: Path) -> None:
    assert queue_hints([], [], 30.0, time.time()) == []
    old = queue.submit("train", tmp_path, [], "normal")
    queue.save(old.model_copy(update={"submitted_at": time.time() - 60}))
    jobs = queue.jobs()
    (nobody,) = queue_hints(jobs, [worker("gone", [], age=120)], 30.0, time.time())
    assert nobody.kind == "queue_idle" and "no worker is alive" in nobody.message
    (idle,) = queue_hints(jobs, [worker("box", [7], concurrency=2)], 30.0, time.time())
    assert idle.kind == "idle_device" and "box (cuda:0: 1 free)" in idle.message and "waited 60 s" in idle.message
    assert queue_hints(jobs, [worker("box", [7])], 30.0, time.time()) == []  # its one slot is busy
    fresh = [j.model_copy(update={"submitted_at": time.time()}) for j in jobs]
    assert queue_hints(fresh, [worker("box", [])], 30.0, time.time()) == []  # a poll away from being claimed


def test_a_failed_gate_is_a_hint() -> None:
    experts: list[dict[str, Any]] = [
        {"name": "sql", "version": "0.2.0", "evaluations": [{"set": "geo", "gate": False}, {"set": "x", "gate": True}]},
        {"name": "json", "version": "0.1.0", "evaluations": [{"set": "bfcl", "gate": None}]},
    ]
    (hint,) = gate_hints(experts)
    assert hint.kind == "failed_gate" and hint.message.startswith("sql 0.2.0") and "on geo;" in hint.message


def test_the_board_shows_hints_and_the_controls_each_state_allows(queue: JobQueue, tmp_path: Path) -> None:
    first = queue.submit("train", tmp_path, [], "normal")
    second = queue.submit("eval", tmp_path, [], "normal")
    third = queue.submit("eval", tmp_path, [], "low")
    done = queue.submit("package", tmp_path, [], "normal")
    queue.cancel(done.id)
    web = TestClient(build_dashboard(DashboardConfig(queue_url=queue.url)), base_url="http://127.0.0.1")
    text = web.get("/jobs").text
    assert 'data-kind="queue_idle"' in text
    assert f'data-action="move" data-job="{second.id}" data-before="{first.id}"' in text
    assert f'data-job="{first.id}" data-before' not in text and f'data-job="{third.id}" data-before' not in text
    assert (
        f'data-action="retry" data-job="{done.id}"' in text and f'data-action="cancel" data-job="{done.id}"' not in text
    )
    assert f'<select data-action="priority" data-job="{first.id}"' in text
    assert [h["kind"] for h in web.get("/api/hints").json()] == ["queue_idle"]
