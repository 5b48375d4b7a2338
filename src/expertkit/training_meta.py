"""``training_meta.json`` as a type: what a finished run records beside its weights.

A shared module (like :mod:`expertkit.layout`) because the file crosses stages: training writes it,
and stages that may not import training read it. :mod:`expertkit.train.finish` builds a
:class:`TrainingMeta` and writes ``to_json()``; packaging (the lock), the runtime (an unpackaged
expert's base-model and template checks), the memory estimator and the phase ledger read it back
with :func:`read_training_meta`. The file is written by us but read from directories users hand us,
so reading is lenient where older expertkit versions wrote less (missing sections default to empty)
and strict about types (a wrong one is a clear error); unknown keys are kept, so a file round-trips
unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expertkit.errors import ExpertkitError
from expertkit.layout import TRAINING_META


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class ExpertRecord(_Record):
    name: str | None = None
    version: str | None = None


class ModelIdentity(_Record):
    """A base model by content (its weights' sha256), not only by name: what the training meta and
    the lock both record, and what loading an expert checks."""

    name: str | None = None
    weights_sha256: str | None = None
    architecture: str | None = None
    vocab_size: int | None = None
    num_parameters: int | None = None


class BaseModelRecord(ModelIdentity):
    """The base model the run trained on, and where it was."""

    path: str | None = None


class DataRecord(_Record):
    lineage_hash: str | None = None
    cache: str | None = None


class PhaseRecord(_Record):
    name: str
    init_from: str | None = None


class ParameterCount(_Record):
    trainable: int
    total: int


class SelectionRecord(_Record):
    """Which checkpoint was kept and why (:mod:`expertkit.train.selection`)."""

    best_step: int | None = None
    reason: str | None = None
    stopped_early: bool = False
    guards: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)
    checkpoint: str | None = None


class FinalMetrics(_Record):
    steps: int | None = None
    epochs: float | None = None
    final_train_loss: float | None = None
    final_eval_loss: float | None = None
    best_eval_loss: float | None = None
    tokens_seen: int | None = None
    tokens_per_s: float | None = None
    wall_time_s: float | None = None
    cpu_peak_rss_mib: float | None = None
    cuda_max_allocated_mib: float | None = None  # written only when CUDA is present


class TrainingMeta(_Record):
    expert: ExpertRecord = Field(default_factory=ExpertRecord)
    manifest: dict[str, Any] = Field(default_factory=dict)
    base_model: BaseModelRecord = Field(default_factory=BaseModelRecord)
    chat_template_sha256: str | None = None
    template_probe: dict[str, Any] | None = None
    special_tokens: dict[str, Any] = Field(default_factory=dict)
    data: DataRecord = Field(default_factory=DataRecord)
    plan: dict[str, Any] = Field(default_factory=dict)
    optimizer: Any = None
    parameters: ParameterCount | None = None
    new_token_ids: list[int] = Field(default_factory=list)
    resumed_from: str | None = None
    phase: PhaseRecord | None = None
    selection: SelectionRecord = Field(default_factory=SelectionRecord)
    metrics: FinalMetrics = Field(default_factory=FinalMetrics)
    libraries: dict[str, str] = Field(default_factory=dict)

    @property
    def records_template(self) -> bool:
        """Whether the run recorded its chat template's hash (older files may not have)."""
        return "chat_template_sha256" in self.model_fields_set

    def max_seq_length(self) -> int | None:
        value = self.manifest.get("training", {}).get("config", {}).get("max_seq_length")
        return value if isinstance(value, int) else None

    def to_json(self) -> dict[str, Any]:
        """The file's JSON, keys in the order they were always written."""
        data = self.model_dump(mode="json")
        if data["metrics"].get("cuda_max_allocated_mib") is None:
            data["metrics"].pop("cuda_max_allocated_mib", None)
        return data


class TrainingMetaError(ExpertkitError):
    """``training_meta.json`` is not what a training run writes."""


def parse_training_meta(data: Any, where: str) -> TrainingMeta:
    try:
        return TrainingMeta.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise TrainingMetaError(
            f"{where}: {location}: {first['msg']}", "re-train the expert, or restore the file the run wrote"
        ) from exc


def read_training_meta(directory: Path) -> TrainingMeta | None:
    """The meta in ``directory``, or ``None`` when there is none."""
    path = directory / TRAINING_META
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TrainingMetaError(f"{path}: not valid JSON: {exc}", "re-train the expert") from exc
    return parse_training_meta(data, str(path))
