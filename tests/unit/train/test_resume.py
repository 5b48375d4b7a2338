"""Kill -9 mid-run, resume: same adapter as an uninterrupted run. Ctrl-C: checkpoint, then stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from expertkit.events import EVENTS_FILE, read_events
from expertkit.train.checkpoints import checkpoint_step, complete_checkpoints
from expertkit.train.job import TrainRequest
from expertkit.train.run import train_expert

from .helpers import write_tiny_expert

CONFIG = {"max_steps": 12, "eval_steps": 4, "logging_steps": 1, "batch_size": 2}
SLOW_RUN = """
import sys, time
from pathlib import Path
from transformers import TrainerCallback
from expertkit.train.job import TrainingInterruptedError, TrainRequest
from expertkit.train.run import train_expert

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        print(f"step {state.global_step}", flush=True)
        time.sleep(0.4)

try:
    train_expert(TrainRequest(Path(sys.argv[1]), progress=False), on_start=lambda job, t: t.add_callback(Slow()))
except TrainingInterruptedError as error:
    print(error.message, error.hint)
    sys.exit(error.exit_code)
"""


def checkpoints_of(expert: Path) -> list[Path]:
    weights = expert / "weights"
    models = list(weights.iterdir()) if weights.is_dir() else []
    return complete_checkpoints(models[0] / "checkpoints") if models else []


def final_adapter(expert: Path) -> dict[str, torch.Tensor]:
    checkpoints = checkpoints_of(expert)
    last = max(checkpoints, key=lambda p: checkpoint_step(p) or 0)
    assert checkpoint_step(last) == CONFIG["max_steps"]
    return load_file(str(last / "adapter" / "adapter_model.safetensors"))


def start_slow_run(tmp_path: Path, expert: Path) -> subprocess.Popen:
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN, encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(script), str(expert)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for_checkpoint(expert: Path, process: subprocess.Popen, min_step: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [checkpoint_step(p) or 0 for p in checkpoints_of(expert)]
        if found and max(found) >= min_step:
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before a checkpoint: {process.stdout.read() if process.stdout else ''}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("no checkpoint appeared in time")


@pytest.mark.slow  # subprocesses (make test runs every tier; -m "not slow" for a quick pass)
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path, tiny_llama_dir: Path) -> None:
    reference = write_tiny_expert(tmp_path / "reference", [tiny_llama_dir], config=CONFIG)
    train_expert(TrainRequest(reference, progress=False))
    expected = final_adapter(reference)

    killed = write_tiny_expert(tmp_path / "killed", [tiny_llama_dir], config=CONFIG)
    process = start_slow_run(tmp_path, killed)
    wait_for_checkpoint(killed, process, min_step=4)
    process.send_signal(signal.SIGKILL)
    process.wait()
    steps = [checkpoint_step(p) for p in checkpoints_of(killed)]
    assert steps and max(s or 0 for s in steps) < CONFIG["max_steps"], "the kill must land mid-run"

    train_expert(TrainRequest(killed, resume=True, progress=False))
    got = final_adapter(killed)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery")
def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path: Path, tiny_llama_dir: Path) -> None:
    expert = write_tiny_expert(tmp_path / "expert", [tiny_llama_dir], config={**CONFIG, "eval_steps": 100})
    process = start_slow_run(tmp_path, expert)
    assert process.stdout is not None
    for line in process.stdout:  # training (and its Ctrl-C handler) is running once steps are reported
        if line.startswith("step 2"):
            break
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 130, output
    assert "expert-cli train --resume" in output
    checkpoints = checkpoints_of(expert)
    assert len(checkpoints) == 1 and 2 <= (checkpoint_step(checkpoints[0]) or 0) < CONFIG["max_steps"]
    events = read_events(checkpoints[0].parents[1] / EVENTS_FILE)
    assert events[-1]["event"] == "end" and events[-1]["status"] == "interrupted"  # watchers see why it stopped


def test_same_seed_gives_the_same_loss_curve(tmp_path: Path, tiny_llama_dir: Path) -> None:
    curves = []
    for name in ("first", "second"):
        expert = write_tiny_expert(tmp_path / name, [tiny_llama_dir], config={"logging_steps": 1})
        meta = train_expert(TrainRequest(expert, progress=False)).meta
        assert meta is not None
        curves.append([o["eval_loss"] for o in meta.selection.history] + [meta.metrics.final_train_loss])
    assert curves[0] == curves[1]
