"""What a training run is, as types: the request (options only), the job resolved before the loop,
how its rows fall into optimizer updates, and the result. Shared by ``run``, ``finish`` and the
workflows above training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.errors import ExpertkitError
from expertkit.layout import CHECKPOINT_DIR, WEIGHTS_DIR
from expertkit.manifest.load import LoadedManifest
from expertkit.manifest.model import BaseModelEntry
from expertkit.models.resolve import ResolvedModel
from expertkit.naming import normalise_model_name
from expertkit.train.plan import TrainPlan
from expertkit.train.selection import BestCheckpointSelector
from expertkit.training_meta import TrainingMeta


class TrainingInterruptedError(ExpertkitError):
    exit_code = 130


@dataclass(frozen=True)
class TrainRequest:
    target: Path
    model: str | None = None
    resume: bool = False
    max_steps: int | None = None
    progress: bool = True
    phase: str | None = None  # one phase of training.phases (see expertkit.train.phases)
    init_from: Path | None = None  # start from these published weights (the previous phase's)
    eval_steps: int | None = None  # overrides training.config.eval_steps (evaluate + checkpoint every N steps)
    eval_samples: int = 2  # greedy generations from the eval split at each evaluation, into events.jsonl


@dataclass(frozen=True)
class TrainResult:
    """A finished run: where its weights are, what it measured, and ``meta``, the
    ``training_meta.json`` written beside the weights (``None`` on the non-main ranks of a DDP run)."""

    weights_dir: Path
    meta: TrainingMeta | None
    curve: Path | None

    @property
    def metrics(self) -> RunMetrics:
        return RunMetrics.from_meta(self.meta or TrainingMeta())


@dataclass(frozen=True)
class RunMetrics:
    """What a run measured and which checkpoint it kept (read from its training meta)."""

    steps: int | None
    epochs: float | None
    final_train_loss: float | None
    best_eval_loss: float | None
    best_step: int | None
    checkpoint: str | None
    reason: str | None
    tokens_seen: int | None
    tokens_per_s: float | None
    wall_time_s: float | None
    peak_rss_mib: float | None

    @classmethod
    def from_meta(cls, meta: TrainingMeta) -> RunMetrics:
        m, s = meta.metrics, meta.selection
        return cls(
            m.steps,
            m.epochs,
            m.final_train_loss,
            m.best_eval_loss,
            s.best_step,
            s.checkpoint,
            s.reason,
            m.tokens_seen,
            m.tokens_per_s,
            m.wall_time_s,
            m.cpu_peak_rss_mib,
        )


def weights_dir_for(loaded: LoadedManifest, entry: BaseModelEntry) -> Path:
    """``weights/<normalised-model>/`` beside the manifest: one directory per base model."""
    return loaded.root / WEIGHTS_DIR / normalise_model_name(entry.name)


MIN_UPDATES_PER_EPOCH = 4  # fewer, and a small dataset is learned in a handful of optimizer updates


@dataclass(frozen=True)
class EpochShape:
    """How the training rows fall into optimizer updates: what ``--max-steps N`` amounts to."""

    rows: int  # training rows (packed rows when packing is on)
    rows_per_update: int
    updates_per_epoch: int
    packed: bool  # several examples share a row

    def epochs(self, steps: int) -> float:
        return steps / self.updates_per_epoch

    def advice(self) -> str | None:
        """A note when an epoch is so few updates that a small dataset will barely be learned."""
        if self.updates_per_epoch >= MIN_UPDATES_PER_EPOCH:
            return None
        fix = "set training.config.packing to false, or lower" if self.packed else "lower"
        return (
            f"an epoch is {self.updates_per_epoch} optimizer update(s) ({self.rows} training rows, "
            f"{self.rows_per_update} per update): with this little data, {fix} "
            "training.config.gradient_accumulation_steps"
        )


def epoch_shape(plan: TrainPlan, packing: dict[str, Any], world_size: int) -> EpochShape:
    rows_per_update = plan.batch_size * plan.gradient_accumulation_steps * world_size
    rows = max(packing["train"]["rows"], 1)
    packed = packing["train"]["rows"] < packing["train"]["examples"]
    return EpochShape(rows, rows_per_update, math.ceil(rows / rows_per_update), packed)


@dataclass
class TrainJob:
    """Everything resolved before the loop starts."""

    loaded: LoadedManifest
    entry: BaseModelEntry
    resolved: ResolvedModel
    plan: TrainPlan
    prepared: Any
    tokenizer: Any
    trainable: Any
    weights_dir: Path
    resume_from: Path | None
    selector: BestCheckpointSelector
    run_info: dict[str, Any]
    total_steps: int
    eval_steps: int
    shape: EpochShape

    @property
    def checkpoints(self) -> Path:
        return self.weights_dir / CHECKPOINT_DIR
