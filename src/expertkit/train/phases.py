"""A curriculum (MyPT's phased SFT): ``training.phases`` trained in order, each phase starting from
the adapter the one before it published.

A phase is an ordinary run of :func:`~expertkit.train.run.train_expert` with the phase's sources
(plus its replay share of earlier phases' examples, :mod:`expertkit.data.replay`) and its own
learning rate and length; its published weights are kept in ``weights/<model>/phases/<NN>-<name>/``
and recorded in ``phases.json``. ``after_phase`` (the evaluation gate, given by the caller: training
does not import evaluation) may stop the curriculum by returning failures. With ``resume``, phases
already finished on the same data are skipped and the interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertkit.errors import ExpertkitError
from expertkit.fsutil import atomic_directory, write_text_atomic
from expertkit.layout import ADAPTER_SUBDIR, SOFT_PROMPT_DIR, TRAINING_META
from expertkit.manifest.sections import TrainingConfig, TrainingPhase
from expertkit.train.checkpoints import newest_checkpoint

if TYPE_CHECKING:
    from expertkit.train.run import TrainRequest

PHASES_DIR = "phases"
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


def run_phases(
    request: TrainRequest,
    phases: list[TrainingPhase],
    after_phase: AfterPhase | None = None,
    on_start: Callable[[Any, Any], None] | None = None,
) -> list[PhaseOutcome]:
    """Train every phase in order (the phases this call trained are returned); stop with
    :class:`GateFailedError` when ``after_phase`` fails one.

    ``request`` is for the whole curriculum; each phase runs it with ``phase`` and ``init_from`` set.
    """
    from expertkit.train.run import CHECKPOINT_DIR, train_expert

    weights_dir = _weights_dir(request)
    ledger = finished_phases(weights_dir, phases) if request.resume else []
    init_from = phase_dir(weights_dir, len(ledger) - 1, phases[len(ledger) - 1]) if ledger else None
    outcomes: list[PhaseOutcome] = []
    for index in range(len(ledger), len(phases)):
        phase = phases[index]
        resume = request.resume and newest_checkpoint(weights_dir / CHECKPOINT_DIR) is not None
        phase_request = replace(request, phase=phase.name, init_from=init_from, resume=resume)
        result = train_expert(phase_request, on_start=on_start)
        target = phase_dir(result.weights_dir, index, phase)
        snapshot_phase(result.weights_dir, target)
        # the phase is kept in its snapshot; its checkpoints would only confuse the next phase's --resume
        shutil.rmtree(result.weights_dir / CHECKPOINT_DIR, ignore_errors=True)
        outcome = PhaseOutcome(index, phase, result.weights_dir, result.meta)
        if phase.gate and after_phase is not None:
            outcome = replace(outcome, gate_failures=after_phase(outcome))
        outcomes.append(outcome)
        ledger.append(outcome.to_json())
        write_ledger(result.weights_dir, ledger)
        if outcome.gate_failures:
            raise GateFailedError(
                f"phase {index + 1} ({phase.name}) missed the evaluation gate:\n  "
                + "\n  ".join(outcome.gate_failures),
                f"its weights are in {target}; later phases were not trained",
            )
        init_from = target
    return outcomes


def _weights_dir(request: TrainRequest) -> Path:
    from expertkit.manifest.load import load_manifest
    from expertkit.train.run import weights_dir_for

    loaded = load_manifest(request.target)
    return weights_dir_for(loaded, loaded.manifest.base_model(request.model))
