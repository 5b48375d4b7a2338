"""A golden 10-step loss curve of the tiny model (as torchtune's recipe tests and TRL's
``tests/invariant`` pin theirs): any change to data rendering, masking, packing, the loss, the
optimizer or the schedule that moves training shows up here, step by step.

Regenerate with ``EXPERTKIT_UPDATE_GOLDEN=1 pytest tests/unit/train/test_golden_loss_curve.py`` and
review the diff: a new curve means training itself changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .helpers import write_tiny_expert

GOLDEN = Path(__file__).parents[2] / "fixtures" / "golden" / "loss_curve_tiny_llama.json"
CONFIG = {"max_steps": 10, "logging_steps": 1, "eval_steps": 5, "learning_rate": 5e-3, "bf16": False, "seed": 42}


def test_ten_step_loss_curve_matches_the_golden_one(tmp_path: Path, tiny_llama_dir: Path) -> None:
    expert = write_tiny_expert(tmp_path / "expert", [tiny_llama_dir], config=CONFIG)
    captured = {}

    def keep(job, trainer) -> None:
        captured["trainer"] = trainer

    from expertkit.train.job import TrainRequest
    from expertkit.train.run import train_expert

    result = train_expert(TrainRequest(expert, progress=False), on_start=keep)
    metrics = result.metrics  # typed, read from the training_meta.json written beside the weights
    assert (metrics.steps, metrics.best_step) == (10, 10) and metrics.checkpoint.startswith("checkpoint-10-")
    assert result.meta is not None and metrics.best_eval_loss == pytest.approx(result.meta.metrics.best_eval_loss)
    history = captured["trainer"].state.log_history
    actual = {
        "train_loss": [round(row["loss"], 6) for row in history if "loss" in row],
        "eval_loss": [round(row["eval_loss"], 6) for row in history if "eval_loss" in row],
        "learning_rate": [row["learning_rate"] for row in history if "learning_rate" in row],
    }
    if os.environ.get("EXPERTKIT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(actual, indent=1) + "\n", encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert len(actual["train_loss"]) == 10 and len(actual["eval_loss"]) == 2
    # fp32 on CPU: the same run gives the same numbers; a small tolerance absorbs BLAS differences
    # between CPUs, far below what a change to masking or the loss moves (tenths).
    assert actual["train_loss"] == pytest.approx(golden["train_loss"], rel=2e-3)
    assert actual["eval_loss"] == pytest.approx(golden["eval_loss"], rel=2e-3)
    assert actual["learning_rate"] == pytest.approx(golden["learning_rate"], rel=1e-9)
    assert actual["train_loss"][-1] < actual["train_loss"][0]  # and it learns
