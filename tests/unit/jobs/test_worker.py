"""Workers running real jobs as child processes on a SQLite queue: success and permanent failure,
a pipeline stopped by its gate, cancel (SIGINT → checkpoint → exit 130), SIGTERM to a worker, and a
SIGKILLed worker whose training job another worker resumes to the same adapter."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from expertkit.jobs.model import pipeline
from expertkit.jobs.store import JobQueue
from expertkit.jobs.worker import Worker, WorkerConfig
from expertkit.train.job import TrainRequest
from expertkit.train.run import train_expert
from unit.train.helpers import write_tiny_expert

# A launcher like ``python -m expertkit`` whose training steps take 0.3 s, so a test can act mid-run.
SLOW_CLI = """
import sys, time
from transformers import TrainerCallback
import expertkit.train.run as run

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.3)

built = run.build_trainer
def slow(*args, **kwargs):
    trainer = built(*args, **kwargs)
    trainer.add_callback(Slow())
    return trainer
run.build_trainer = slow
from expertkit.cli import main
sys.argv = ["expert-cli", *sys.argv[1:]]
main()
"""
CONFIG = {"max_steps": 12, "eval_steps": 2, "logging_steps": 1}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: Any) -> Path:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def slow_launcher(tmp_path: Path) -> list[str]:
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI, encoding="utf-8")
    return [sys.executable, str(script)]


def adapter(expert: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next((expert / "weights").iterdir()) / "adapter" / "adapter_model.safetensors"))


def wait_until(condition: Any, timeout: float = 180, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def checkpointed(expert: Path, step: int) -> bool:
    found = list((expert / "weights").glob("*/checkpoints/checkpoint-*/.ledger.json"))
    return any(int(p.parent.name.split("-")[1]) >= step for p in found)


@pytest.mark.slow  # child processes
def test_success_permanent_failure_and_a_gate_that_stops_the_pipeline(
    tmp_path: Path, tiny_llama_dir: Path, home: Path
) -> None:
    queue = JobQueue(f"sqlite:///{tmp_path / 'q.db'}")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"schema_version": "2.0", "name": "x"}')
    broken = queue.submit("prepare", bad, [], retries=3)
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir], config={"max_steps": 2, "eval_steps": 2})
    rows = [{"messages": [{"role": "user", "content": "Say 1"}, {"role": "assistant", "content": "1"}]}] * 2
    (expert / "set.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    manifest = json.loads((expert / "manifest.json").read_text())
    manifest["evaluation"] = {
        "sets": [{"name": "say", "path": "set.jsonl", "format": "jsonl"}],
        "thresholds": {"exact_match": {"min": 1.01}},
    }
    (expert / "manifest.json").write_text(json.dumps(manifest))
    train = queue.submit("train", expert, ["--eval-samples", "0"], then=pipeline(["eval", "gate", "package"]))
    worker = Worker(queue, WorkerConfig(name="w1", once=True, backoff_s=0.1))
    for _ in range(4):
        worker.run()
    failed = queue.get(broken.id)
    assert failed.state == "failed" and len(failed.attempts) == 1 and failed.attempts[0].exit_code == 1  # never retried
    assert "error:" in Path(failed.log or "").read_text()
    assert queue.get(train.id).state == "succeeded"
    evaluation, package = [j for j in queue.jobs() if j.id > train.id]
    assert (evaluation.kind, evaluation.options, evaluation.state) == ("eval", ["--gate"], "failed")
    assert package.kind == "package" and package.state == "cancelled"
    assert package.error == f"not run: job {evaluation.id} (eval) failed: exit 1: see {evaluation.log}"
    assert not list(tmp_path.glob("*.expert"))


@pytest.mark.slow
def test_cancel_interrupts_with_a_checkpoint_and_retry_resumes(
    tmp_path: Path, tiny_llama_dir: Path, home: Path
) -> None:
    queue = JobQueue(f"sqlite:///{tmp_path / 'q.db'}")
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir], config=CONFIG)
    job = queue.submit("train", expert, ["--eval-samples", "0"])
    config = WorkerConfig(name="w1", once=True, launcher=slow_launcher(tmp_path))
    runner = Worker(queue, config)
    import threading

    thread = threading.Thread(target=runner.run)
    thread.start()
    wait_until(lambda: checkpointed(expert, 2), what="a checkpoint")
    queue.cancel(job.id)
    thread.join(timeout=120)
    cancelled = queue.get(job.id)
    assert cancelled.state == "cancelled" and cancelled.attempts[-1].exit_code == 130
    assert checkpointed(expert, 2) and not checkpointed(expert, 12)
    queue.retry(job.id)
    Worker(queue, WorkerConfig(name="w2", once=True)).run()
    done = queue.get(job.id)
    assert done.state == "succeeded" and len(done.attempts) == 2
    assert "--resume" in Path(done.log or "").read_text().split("attempt 2")[1] or checkpointed(expert, 12)


@pytest.mark.slow
def test_a_killed_worker_is_lost_and_its_training_finishes_elsewhere_with_the_same_adapter(
    tmp_path: Path, tiny_llama_dir: Path, home: Path, queue_url: str
) -> None:
    reference = write_tiny_expert(tmp_path / "reference", [tiny_llama_dir], config=CONFIG)
    train_expert(TrainRequest(reference, progress=False, eval_samples=0))
    url = queue_url  # SQLite and a real Redis server
    queue = JobQueue(url)
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir], config=CONFIG)
    job = queue.submit("train", expert, ["--eval-samples", "0"])
    launcher = " ".join(slow_launcher(tmp_path))
    cli = [sys.executable, "-m", "expertkit", "worker", "--queue", url, "--lease", "3", "--launcher", launcher]
    first = subprocess.Popen([*cli, "--name", "doomed"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_until(lambda: checkpointed(expert, 4), what="a checkpoint on the first worker")
    first.send_signal(signal.SIGKILL)
    first.wait()
    time.sleep(3.5)  # its lease runs out (a running worker would notice on its own; --once checks once)
    second = subprocess.run([*cli, "--name", "rescuer", "--once"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    done = queue.get(job.id)
    assert [(a.worker, a.outcome) for a in done.attempts] == [("doomed", "lost"), ("rescuer", "succeeded")]
    assert done.state == "succeeded"
    states = subprocess.run(
        [sys.executable, "-m", "expertkit", "workers", "list", "--queue", url, "--lease", "3", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert {w["name"]: w["state"] for w in json.loads(states.stdout)} == {"doomed": "lost", "rescuer": "stopped"}
    expected, got = adapter(reference), adapter(expert)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_sigterm_checkpoints_requeues_and_exits_0(tmp_path: Path, tiny_llama_dir: Path, home: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    queue = JobQueue(url)
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir], config=CONFIG)
    job = queue.submit("train", expert, ["--eval-samples", "0"])
    launcher = " ".join(slow_launcher(tmp_path))
    worker = subprocess.Popen(
        [sys.executable, "-m", "expertkit", "worker", "--queue", url, "--name", "w", "--launcher", launcher],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ},
    )
    wait_until(lambda: checkpointed(expert, 2), what="a checkpoint")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    requeued = queue.get(job.id)
    assert requeued.state == "queued" and requeued.attempts[-1].outcome == "interrupted"
    assert requeued.attempts[-1].exit_code == 130 and checkpointed(expert, 2)


@pytest.mark.slow
def test_two_workers_drain_twenty_jobs_each_run_once(tmp_path: Path, home: Path, queue_url: str) -> None:
    queue = JobQueue(queue_url)
    runs = tmp_path / "runs.txt"
    for i in range(20):
        (tmp_path / f"e{i}").mkdir()
        queue.submit("prepare", tmp_path / f"e{i}", [])
    launcher = shlex.join(["sh", "-c", f'echo "$4" >> {runs}; sleep 0.05', "sh"])
    cli = [sys.executable, "-m", "expertkit", "worker", "--queue", queue_url, "--launcher", launcher]
    workers = [subprocess.Popen([*cli, "--name", name], stdout=subprocess.DEVNULL) for name in ("a", "b")]
    wait_until(lambda: all(j.state == "succeeded" for j in queue.jobs()), what="the queue to drain")
    listed = {w.name for w in queue.workers()}
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    lines = runs.read_text().split()
    assert sorted(lines) == sorted(str((tmp_path / f"e{i}").resolve()) for i in range(20))  # each once
    assert all(len(j.attempts) == 1 for j in queue.jobs())
    assert listed == {"a", "b"} and {j.attempts[0].worker for j in queue.jobs()} == {"a", "b"}


def test_out_of_memory_and_crashes_are_retried_with_backoff(tmp_path: Path, home: Path, queue_url: str) -> None:
    queue = JobQueue(queue_url)
    job = queue.submit("prepare", tmp_path, [], retries=1)
    exits = tmp_path / "exits"
    launcher = ["sh", "-c", f"echo x >> {exits}; exit 75", "sh"]  # 75: expertkit's "out of memory"
    config = WorkerConfig(name="w", once=True, launcher=launcher, backoff_s=0.2)
    Worker(queue, config).run()
    retrying = queue.get(job.id)
    assert retrying.state == "queued" and retrying.attempts[-1].outcome == "retrying" and retrying.retry_at
    Worker(queue, config).run()  # the backoff has not passed: nothing to run
    assert len(queue.get(job.id).attempts) == 1
    time.sleep(0.3)
    Worker(queue, config).run()
    failed = queue.get(job.id)
    assert failed.state == "failed" and [a.exit_code for a in failed.attempts] == [75, 75]
    assert failed.error is not None and failed.error.startswith("exit 75 after 2 attempts")


def test_concurrency_runs_jobs_side_by_side(tmp_path: Path, home: Path, queue_url: str) -> None:
    queue = JobQueue(queue_url)
    spans = tmp_path / "spans"
    for i in range(2):
        (tmp_path / f"e{i}").mkdir()  # two expert directories: one job each at a time
        queue.submit("prepare", tmp_path / f"e{i}", [])
    launcher = [
        "sh",
        "-c",
        f'echo "start $(date +%s.%N)" >> {spans}; sleep 1; echo "end $(date +%s.%N)" >> {spans}',
        "sh",
    ]
    Worker(queue, WorkerConfig(name="w", once=True, concurrency=2, launcher=launcher)).run()
    assert all(j.state == "succeeded" for j in queue.jobs())
    marks = [line.split() for line in spans.read_text().splitlines()]
    assert [kind for kind, _ in marks[:2]] == ["start", "start"]  # both started before either ended


def test_a_stopping_worker_requeues_any_interrupted_job(tmp_path: Path, home: Path, queue_url: str) -> None:
    """click turns SIGINT into exit 1 ("Aborted!"): that is an interruption here, not a user error."""
    _stop_a_running_job(tmp_path, queue_url)


def test_a_worker_started_with_sigint_ignored_still_interrupts_its_job(
    tmp_path: Path, home: Path, queue_url: str
) -> None:
    """A shell ignores SIGINT for what it starts in the background (``expert-cli worker &`` in a
    script), exec keeps an ignored signal ignored, and a shell cannot trap it: the job would run on."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _stop_a_running_job(tmp_path, queue_url)
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_a_running_job(tmp_path: Path, queue_url: str) -> None:
    import threading

    queue = JobQueue(queue_url)
    job = queue.submit("eval", tmp_path, [])
    launcher = ["sh", "-c", 'trap "exit 1" INT; echo trapped; sleep 30 & wait', "sh"]
    worker = Worker(queue, WorkerConfig(name="w", once=True, launcher=launcher))
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_until(lambda: queue.get(job.id).state == "running", what="the job to start")
    log = Path(str(queue.get(job.id).log))
    wait_until(lambda: log.exists() and "trapped" in log.read_text(), what="the job's trap")
    worker._stop(signal.SIGTERM, None)
    thread.join(timeout=30)
    requeued = queue.get(job.id)
    assert requeued.state == "queued" and requeued.attempts[-1].outcome == "interrupted"
    assert requeued.attempts[-1].exit_code == 1
