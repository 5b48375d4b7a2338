"""Background jobs (the Task Master): they run only while no foreground job waits and the device is
idle (the idle reading is injected here), make way for a foreground job at their next checkpoint, and
the built-in tasks (baselines for installed experts, re-verification) are submitted once."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from expertkit.jobs.housekeeping import submit_background_tasks
from expertkit.jobs.store import JobQueue
from expertkit.jobs.worker import Worker, WorkerConfig
from expertkit.package.store import install_package
from unit.jobs.test_worker import CONFIG, checkpointed, slow_launcher, wait_until
from unit.train.helpers import write_tiny_expert

NO_OP = ["true"]


def test_background_waits_for_an_empty_queue_and_an_idle_device(tmp_path: Path, queue_url: str) -> None:
    queue = JobQueue(queue_url)
    later = queue.submit("prepare", tmp_path, [], "background")
    first = queue.submit("prepare", tmp_path, [], "low")
    idle = {"now": False}
    config = WorkerConfig(name="w", once=True, launcher=NO_OP, background=True, idle=lambda: idle["now"])
    Worker(queue, config).run()
    assert queue.get(first.id).state == "succeeded" and queue.get(later.id).state == "queued"
    Worker(queue, config).run()  # nothing in front of it, but the device is busy
    assert queue.get(later.id).state == "queued"
    Worker(queue, WorkerConfig(name="plain", once=True, launcher=NO_OP, idle=lambda: True)).run()
    assert queue.get(later.id).state == "queued"  # a worker without --background never takes it
    idle["now"] = True
    Worker(queue, config).run()
    assert queue.get(later.id).state == "succeeded"


def test_a_foreground_job_stops_background_training_at_a_checkpoint(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    queue = JobQueue(f"sqlite:///{tmp_path / 'q.db'}")
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir], config=CONFIG)
    chore = queue.submit("train", expert, ["--eval-samples", "0"], "background")
    config = WorkerConfig(name="w", once=True, launcher=slow_launcher(tmp_path), background=True, idle=lambda: True)
    thread = threading.Thread(target=Worker(queue, config).run)
    thread.start()
    wait_until(lambda: checkpointed(expert, 2), what="a checkpoint")
    urgent = queue.submit("prepare", tmp_path, [], "high")
    thread.join(timeout=120)
    yielded = queue.get(chore.id)
    assert yielded.state == "queued" and yielded.attempts[-1].outcome == "yielded"
    assert yielded.attempts[-1].exit_code == 130 and checkpointed(expert, 2) and not checkpointed(expert, 12)
    assert queue.claim("next", lambda: True) == queue.get(urgent.id)  # the foreground job first


def test_built_in_background_tasks_are_submitted_once(built: Any, tmp_path: Path, queue_url: str) -> None:
    record, _ = install_package(built.path)
    installed = Path(record.path)
    queue = JobQueue(queue_url)
    first = submit_background_tasks(queue)
    assert [j.kind for j in first] == ["verify"]  # the tiny expert ships no evaluation set
    assert submit_background_tasks(queue) == []  # already queued
    config = WorkerConfig(name="w", once=True, background=True, idle=lambda: True)
    Worker(queue, config).run()
    assert queue.get(first[0].id).state == "succeeded"  # `list --verify`: every installed expert checks out
    manifest = json.loads((installed / "manifest.json").read_text())
    manifest["evaluation"] = {"sets": [{"name": "shipped", "path": "README.md", "format": "jsonl"}]}
    (installed / "manifest.json").write_text(json.dumps(manifest))
    again = submit_background_tasks(queue)
    assert [(j.kind, j.options, j.level, j.manifest) for j in again] == [
        ("verify", [], "background", str(installed.parents[1])),
        ("eval", ["--base-only"], "background", str(installed.resolve())),
    ]
    assert queue.claim("plain") is None  # both wait in the background queue
    Worker(queue, config).run()
    verify = queue.get(again[0].id)  # the manifest was changed after install: re-verification says so
    assert verify.state == "failed" and "manifest.json was modified" in Path(verify.log or "").read_text()
