"""A curriculum (MyPT's phased SFT): ``training.phases`` trained in order, each phase starting from
the adapter the one before it published.

This module holds what a phase *is* (its config, its directory, the ledger); running the phases in
order with a gate after each is a workflow (:mod:`expertkit.workflows.curriculum`). A phase is an
ordinary run of :func:`~expertkit.train.run.train_expert` with the phase's sources (plus its replay
share of earlier phases' examples, :mod:`expertkit.data.replay`) and its own learning rate and
length; its published weights are kept in ``weights/<model>/phases/<NN>-<name>/`` and recorded in
``phases.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertkit.errors import ExpertkitError
from expertkit.fsutil import atomic_directory, write_text_atomic
from expertkit.layout import ADAPTER_SUBDIR, PHASES_DIR, SOFT_PROMPT_DIR, TRAINING_META
from expertkit.manifest.sections import TrainingConfig, TrainingPhase

PHASES_LEDGER = "phases.json"


class GateFailedError(ExpertkitError):
    """A phase missed the evaluation gate: the curriculum stops there."""


@dataclass(frozen=True)
class PhaseOutcome:
    index: int
    phase: TrainingPhase
    weights_dir: Path
    meta: dict[str, Any]
    gate_failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        metrics = self.meta.get("metrics", {})
        return {
            "index": self.index,
            "name": self.phase.name,
            "phase": self.phase.model_dump(mode="json"),
            "data_hash": self.meta.get("data", {}).get("lineage_hash"),
            "steps": metrics.get("steps"),
            "tokens_seen": metrics.get("tokens_seen"),
            "wall_time_s": metrics.get("wall_time_s"),
            "best_eval_loss": metrics.get("best_eval_loss"),
            "gate": {"passed": not self.gate_failures, "failures": self.gate_failures},
        }


AfterPhase = Callable[[PhaseOutcome], list[str]]


def phase_config(config: TrainingConfig | None, phase: TrainingPhase) -> TrainingConfig:
    """The run's training config for one phase: the phase's learning rate and length win."""
    base = config or TrainingConfig()
    update: dict[str, Any] = {}
    if phase.learning_rate is not None:
        update["learning_rate"] = phase.learning_rate
    if phase.epochs is not None or phase.max_steps is not None:
        update["epochs"] = phase.epochs or base.epochs
        update["max_steps"] = phase.max_steps
    return base.model_copy(update=update)


def phase_dir(weights_dir: Path, index: int, phase: TrainingPhase) -> Path:
    return weights_dir / PHASES_DIR / f"{index + 1:02d}-{phase.name}"


def snapshot_phase(weights_dir: Path, target: Path) -> None:
    """Keep a phase's published adapter (and soft prompts, meta) before the next phase replaces it."""
    with atomic_directory(target, replace=True) as staged:
        for name in (ADAPTER_SUBDIR, SOFT_PROMPT_DIR):
            if (weights_dir / name).is_dir():
                shutil.copytree(weights_dir / name, staged / name)
        shutil.copy2(weights_dir / TRAINING_META, staged / TRAINING_META)


def read_ledger(weights_dir: Path) -> list[dict[str, Any]]:
    path = weights_dir / PHASES_DIR / PHASES_LEDGER
    return json.loads(path.read_text(encoding="utf-8"))["phases"] if path.is_file() else []


def write_ledger(weights_dir: Path, outcomes: list[dict[str, Any]]) -> None:
    path = weights_dir / PHASES_DIR / PHASES_LEDGER
    write_text_atomic(path, json.dumps({"phases": outcomes}, indent=2, ensure_ascii=False) + "\n")


def finished_phases(weights_dir: Path, phases: list[TrainingPhase]) -> list[dict[str, Any]]:
    """The ledger's leading phases that match the manifest's and passed their gate (for resume)."""
    done = []
    for index, (record, phase) in enumerate(zip(read_ledger(weights_dir), phases, strict=False)):
        same = record.get("phase") == phase.model_dump(mode="json")
        if not same or not record["gate"]["passed"] or not phase_dir(weights_dir, index, phase).is_dir():
            break
        done.append(record)
    return done
