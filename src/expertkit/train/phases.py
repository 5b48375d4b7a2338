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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expertkit.errors import ExpertkitError
from expertkit.fsutil import atomic_directory, write_text_atomic
from expertkit.layout import ADAPTER_SUBDIR, PHASES_DIR, SOFT_PROMPT_DIR, TRAINING_META
from expertkit.manifest.sections import TrainingConfig, TrainingPhase
from expertkit.training_meta import TrainingMeta

PHASES_LEDGER = "phases.json"


class GateFailedError(ExpertkitError):
    """A phase missed the evaluation gate: the curriculum stops there."""


class GateRecord(BaseModel):
    passed: bool
    failures: list[str] = Field(default_factory=list)


class PhaseLedgerEntry(BaseModel):
    """One trained phase in ``phases.json``: what it ran on and whether it passed its gate."""

    model_config = ConfigDict(extra="allow")

    index: int
    name: str
    phase: dict[str, Any]
    data_hash: str | None = None
    steps: int | None = None
    tokens_seen: int | None = None
    wall_time_s: float | None = None
    best_eval_loss: float | None = None
    gate: GateRecord


@dataclass(frozen=True)
class PhaseOutcome:
    index: int
    phase: TrainingPhase
    weights_dir: Path
    meta: TrainingMeta
    gate_failures: list[str] = field(default_factory=list)

    def record(self) -> PhaseLedgerEntry:
        metrics = self.meta.metrics
        return PhaseLedgerEntry(
            index=self.index,
            name=self.phase.name,
            phase=self.phase.model_dump(mode="json"),
            data_hash=self.meta.data.lineage_hash,
            steps=metrics.steps,
            tokens_seen=metrics.tokens_seen,
            wall_time_s=metrics.wall_time_s,
            best_eval_loss=metrics.best_eval_loss,
            gate=GateRecord(passed=not self.gate_failures, failures=self.gate_failures),
        )

    def to_json(self) -> dict[str, Any]:
        return self.record().model_dump(mode="json")


AfterPhase = Callable[[PhaseOutcome], list[str]]


def phase_config(config: TrainingConfig | None, phase: TrainingPhase) -> TrainingConfig:
    """The run's training config for one phase: the phase's learning rate, warm-up and length win."""
    base = config or TrainingConfig()
    update: dict[str, Any] = {}
    if phase.learning_rate is not None:
        update["learning_rate"] = phase.learning_rate
    if phase.warmup_steps is not None:
        update["warmup_steps"], update["warmup_ratio"] = phase.warmup_steps, None
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


class PhaseLedger(BaseModel):
    phases: list[PhaseLedgerEntry] = Field(default_factory=list)


def read_ledger(weights_dir: Path) -> list[PhaseLedgerEntry]:
    """``phases.json``'s entries; an unreadable ledger is an error naming the file (it gates resume)."""
    path = weights_dir / PHASES_DIR / PHASES_LEDGER
    if not path.is_file():
        return []
    try:
        return PhaseLedger.model_validate_json(path.read_bytes()).phases
    except ValidationError as exc:
        raise ExpertkitError(
            f"{path}: not a phase ledger: {exc.errors()[0]['msg']}",
            "delete it to train every phase again, or restore the file",
        ) from exc


def write_ledger(weights_dir: Path, entries: list[PhaseLedgerEntry]) -> None:
    path = weights_dir / PHASES_DIR / PHASES_LEDGER
    text = json.dumps(PhaseLedger(phases=entries).model_dump(mode="json"), indent=2, ensure_ascii=False)
    write_text_atomic(path, text + "\n")


def finished_phases(weights_dir: Path, phases: list[TrainingPhase]) -> list[PhaseLedgerEntry]:
    """The ledger's leading phases that match the manifest's and passed their gate (for resume)."""
    done = []
    for index, (record, phase) in enumerate(zip(read_ledger(weights_dir), phases, strict=False)):
        same = record.phase == phase.model_dump(mode="json")
        if not same or not record.gate.passed or not phase_dir(weights_dir, index, phase).is_dir():
            break
        done.append(record)
    return done
