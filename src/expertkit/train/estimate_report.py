"""The memory estimate as users ask for it: for an expert's manifest (``expert-cli estimate --expert``)
or for any shape (``expert-cli estimate --base MODEL …``, the dashboard's memory calculator), beside
the measured peaks of past runs of the same shape (from the run records in ``$EXPERTKIT_HOME/runs/``
and the expert's own last run), so the estimator is checked against reality every time it is shown.

A past run has the same shape when it trained the same base model with the same number of trainable
parameters (adapter type, rank and targets, or a full fine-tune) at the same batch size, sequence
length, device, precision, quantisation, optimizer and gradient checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from expertkit.errors import ExpertkitError
from expertkit.manifest.sections import Adapter
from expertkit.models.hardware import device_memory_mib
from expertkit.runs import list_records
from expertkit.train.estimate import MemoryEstimate, MemoryShape, estimate_memory
from expertkit.training_meta import TrainingMeta, read_training_meta

MAX_MEASURED = 10
# GPUs people train small experts on: (shown name, total memory as nvidia-smi reports it, MiB)
GPU_PRESETS: dict[str, tuple[str, float]] = {
    "rtx3090": ("RTX 3090 (24 GB)", 24576),
    "rtx4090": ("RTX 4090 (24 GB)", 24564),
    "a100-40": ("A100 (40 GB)", 40960),
    "a100-80": ("A100 (80 GB)", 81920),
    "h100": ("H100 (80 GB)", 81559),
    "h200": ("H200 (141 GB)", 143771),
}


@dataclass(frozen=True)
class MeasuredRun:
    source: str  # the run record (or training_meta.json) the peak comes from
    expert: str
    peak_mib: float


@dataclass(frozen=True)
class EstimateReport:
    estimate: MemoryEstimate
    shape: MemoryShape
    measured: list[MeasuredRun] = field(default_factory=list)  # past runs of the same shape, newest first
    available_mib: float | None = None  # the device's memory (RAM, or the GPU's)

    @property
    def batch_size(self) -> int:
        return self.shape.batch_size

    @property
    def seq_length(self) -> int:
        return self.shape.seq_length

    @property
    def device(self) -> str:
        return self.shape.device

    @property
    def measured_mib(self) -> float | None:
        return self.measured[0].peak_mib if self.measured else None

    @property
    def measured_source(self) -> str | None:
        return self.measured[0].source if self.measured else None

    @property
    def fits(self) -> bool | None:
        """Whether the estimate leaves a tenth of the device's memory free (``None``: unknown)."""
        return None if self.available_mib is None else self.estimate.total <= 0.9 * self.available_mib

    def advice(self) -> str | None:
        """What to change when the settings do not fit: a batch size that would, or checkpointing."""
        if self.fits is not False or self.available_mib is None:
            return None
        per_row = (
            self.estimate.total - self.estimate.components.get("runtime (torch, libraries)", 0)
        ) / self.batch_size
        rows = max(1, int((0.9 * self.available_mib) // max(per_row, 1.0)))
        steps = [f"training.config.batch_size {min(rows, self.batch_size - 1) or 1} (raise gradient_accumulation_steps "
                 "to keep the effective batch)"]  # fmt: skip
        if not self.estimate.gradient_checkpointing:
            steps.append("training.config.gradient_checkpointing true")
        return (
            f"{self.estimate.total:,.0f} MiB expected, this {self.device} has {self.available_mib:,.0f} MiB: "
            f"set {' or '.join(steps)}"
        )

    @property
    def error(self) -> float | None:
        """(estimate − measured) / measured, against the newest run of the same shape."""
        return (self.estimate.total - self.measured_mib) / self.measured_mib if self.measured_mib else None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.estimate.to_json(),
            "batch_size": self.batch_size,
            "max_seq_length": self.seq_length,
            "device": self.device,
            "shape": self.shape.to_json(),
            "measured_peak_mib": self.measured_mib,
            "measured_source": self.measured_source,
            "measured_runs": [
                {**m.__dict__, "error": round((self.estimate.total - m.peak_mib) / m.peak_mib, 4)}
                for m in self.measured
            ],
            "error": round(self.error, 4) if self.error is not None else None,
            "available_mib": round(self.available_mib) if self.available_mib is not None else None,
            "fits": self.fits,
        }


def same_shape(meta: TrainingMeta, shape: MemoryShape, model: set[str], trainable: int) -> bool:
    """``model``: what the base model goes by (lower case: its name, what was asked for, its directory),
    matched against the run's base model name and the directory it trained from."""
    plan = meta.plan
    precision = plan.get("precision") or {}
    optimizer = (plan.get("optimizer") or {}).get("type", "adamw")
    return (
        ((meta.base_model.name or "").lower() in model or (meta.base_model.path or "").lower() in model)
        and meta.parameters is not None
        and meta.parameters.trainable == trainable
        and plan.get("batch_size") == shape.batch_size
        and meta.max_seq_length() == shape.seq_length
        and precision.get("device") == shape.device
        and bool(precision.get("bf16")) == shape.bf16
        and bool(plan.get("gradient_checkpointing")) == shape.gradient_checkpointing
        and plan.get("quantization", "none") == shape.quantization
        and optimizer == shape.optimizer
    )


def measured_runs(shape: MemoryShape, model: set[str], trainable: int, own: Path | None = None) -> list[MeasuredRun]:
    """Peaks of past runs of this shape: the expert's own last run (``own``), then the run records."""
    candidates = [own] if own is not None else []
    candidates += [r.directory for r in list_records()]
    found: list[MeasuredRun] = []
    seen: set[str] = set()
    for directory in candidates:
        try:
            meta = read_training_meta(directory)
        except ExpertkitError:  # a damaged record is not a measurement
            continue
        if meta is None or not same_shape(meta, shape, model, trainable):
            continue
        metrics = meta.metrics
        peak = metrics.cuda_max_allocated_mib if shape.device == "cuda" else metrics.cpu_peak_rss_mib
        fingerprint = metrics.model_dump_json()
        if peak is None or fingerprint in seen:  # a record holds a copy of the expert's own last run
            continue
        seen.add(fingerprint)
        found.append(MeasuredRun(str(directory), meta.expert.name or "", float(peak)))
    return found[:MAX_MEASURED]


class ShapeRequest(BaseModel):
    """The memory calculator's inputs (``expert-cli estimate --base``, the dashboard's memory page)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        default="SmolLM2-135M-Instruct", min_length=1, max_length=500, description="Any resolvable model."
    )
    adapter: Literal["lora", "dora", "ia3", "lokr", "full"] = Field(default="lora", description="full: no adapter.")
    rank: int = Field(default=16, ge=1, le=4096, description="Adapter rank (LoRA, DoRA, LoKr).")
    targets: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, max_length=64)
    batch_size: int = Field(default=4, ge=1, le=4096)
    seq_length: int = Field(default=1024, ge=16, le=1_048_576)
    precision: Literal["bf16", "fp32"] = "bf16"
    device: Literal["cpu", "cuda"] = "cuda"
    quantization: Literal["none", "int8", "int4"] = "none"
    gradient_checkpointing: bool = False
    optimizer: Literal["adamw", "paged_adamw_8bit", "muon"] = "adamw"
    supervised_ratio: float | None = Field(default=None, gt=0, le=1)

    def adapter_section(self) -> Adapter | None:
        if self.adapter == "full":
            return None
        return Adapter(type=self.adapter, r=self.rank, target_modules=self.targets)

    def memory_shape(self) -> MemoryShape:
        return MemoryShape(
            self.batch_size,
            self.seq_length,
            self.precision == "bf16",
            self.device,
            self.gradient_checkpointing,
            self.quantization if self.adapter != "full" else "none",
            self.optimizer,
            self.supervised_ratio,
        )


def estimate_shape(request: ShapeRequest, available_mib: float | None = None, prepare: bool = True) -> EstimateReport:
    """The estimate for any shape; ``available_mib``: the memory to check it against (a GPU preset);
    ``prepare``: convert an embedded model that was never pulled (else it is an error)."""
    from expertkit.errors import UsageError
    from expertkit.models.pull import ensure_ready
    from expertkit.models.resolve import resolve_model

    resolved = resolve_model(request.model)
    if prepare:
        resolved = ensure_ready(resolved)  # converted once; only its config is read here
    elif not resolved.ready and resolved.kind in ("embedded", "gguf"):
        raise UsageError(f"{request.model} is not pulled yet", f"expert-cli models pull {request.model}")
    shape = request.memory_shape()
    estimate = estimate_memory(resolved.path, request.adapter_section(), shape)
    names = {
        request.model.lower(),
        resolved.name.lower(),
        str(resolved.path).lower(),
        str(resolved.path.resolve()).lower(),
    }
    measured = measured_runs(shape, names, estimate.trainable_parameters)
    if available_mib is None and shape.device == "cpu":
        available_mib = device_memory_mib("cpu")
    return EstimateReport(estimate, shape, measured, available_mib)


def estimate_expert(
    target: Path, model: str | None = None, batch_size: int | None = None, max_seq_length: int | None = None
) -> EstimateReport:
    """Estimate for the expert's manifest (optionally another batch size or length), beside the
    measured peaks of its last run and of recorded runs with the same settings."""
    from expertkit.manifest.sections import TrainingConfig
    from expertkit.models.context import open_expert
    from expertkit.train.adapters import adapter_to_train
    from expertkit.train.job import weights_dir_for
    from expertkit.train.plan import resolve_plan

    context = open_expert(target, model)
    loaded, entry = context.loaded, context.entry
    config = loaded.manifest.training.config if loaded.manifest.training else None
    plan = resolve_plan(config, entry)
    plan = replace(plan, batch_size=batch_size or plan.batch_size)
    length = max_seq_length or (config or TrainingConfig()).setting("max_seq_length")
    adapter = None if plan.full_finetune else adapter_to_train(entry.adapters)
    shape = MemoryShape(
        plan.batch_size,
        length,
        plan.precision.bf16,
        plan.precision.device,
        plan.gradient_checkpointing,
        plan.quantization,
        plan.optimizer.type,
    )
    estimate = estimate_memory(context.resolved.path, adapter, shape)
    own = weights_dir_for(loaded, entry)
    names = {entry.name.lower(), context.resolved.name.lower(), str(context.resolved.path.resolve()).lower()}
    measured = measured_runs(shape, names, estimate.trainable_parameters, own)
    return EstimateReport(estimate, shape, measured, device_memory_mib(plan.precision.device))
