"""Peak-memory estimate for a training run, before it starts (the DIO seed's VRAM estimator).

Parameter counts are exact: the model is built on PyTorch's ``meta`` device (no memory, no
weights read) and the manifest's adapter is attached with PEFT, so the trainable count is PEFT's
own. Activation memory per token per decoder layer uses ``34·h + 22·i`` bytes in bf16 (``h``
hidden size, ``i`` MLP size): the tensors a Llama-style block saves for backward with a
memory-efficient attention kernel (no ``s²`` score matrix), calibrated on SmolLM2-135M on this
CPU; fp32 doubles it. DoRA adds ``4`` bytes per token per output feature of each adapted layer
(measured). On CPU, per-step tensors are scaled by :data:`CPU_ALLOCATOR_FACTOR` for allocator
fragmentation. Gradient checkpointing keeps one ``h``-wide bf16 input per layer plus one
layer's full activations. Supervised-only logits cost ``N_supervised × vocab × 12`` bytes (fp32
logits, their softmax and gradient). On CPU, the process's resident memory after importing
torch, transformers and PEFT is measured and added: it is part of what ``ru_maxrss`` reports.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.manifest.sections import Adapter
from expertkit.models.hardware import device_memory_mib
from expertkit.train.adapters import attach_adapter
from expertkit.train.plan import TrainPlan
from expertkit.training_meta import read_training_meta

MIB = 2**20
ADAMW_STATE_BYTES = 8  # exp_avg + exp_avg_sq, fp32
DEFAULT_SUPERVISED_RATIO = 0.3
DORA_BYTES_PER_OUTPUT = 4  # per token, per output feature of an adapted layer (measured: 3.9)
# glibc malloc keeps freed blocks: at identical shapes, the SQL expert's peak RSS grew from 6.3 GB (4 steps)
# to 7.5 GB (30 steps). Per-step tensors on CPU are scaled by this; CUDA reports max_allocated, unaffected.
CPU_ALLOCATOR_FACTOR = 1.2


@dataclass(frozen=True)
class MemoryEstimate:
    components: dict[str, float]  # MiB each
    activations_with_checkpointing: float
    activations_without_checkpointing: float
    gradient_checkpointing: bool
    trainable_parameters: int
    total_parameters: int

    @property
    def total(self) -> float:
        return sum(self.components.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "components_mib": {k: round(v, 1) for k, v in self.components.items()},
            "total_mib": round(self.total, 1),
            "activations_mib": {
                "with_checkpointing": round(self.activations_with_checkpointing, 1),
                "without_checkpointing": round(self.activations_without_checkpointing, 1),
            },
            "gradient_checkpointing": self.gradient_checkpointing,
            "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters,
        }


def parameter_counts(model_dir: Path, adapter: Adapter | None) -> tuple[int, int, int]:
    """(trainable, total, summed output width of the adapted layers) with ``adapter``, built on ``meta``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    if adapter is None:
        total = sum(p.numel() for p in model.parameters())
        return total, total, 0
    targets = set(adapter.target_modules)
    adapted = sum(m.weight.shape[0] for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets)
    peft_model = attach_adapter(model, adapter)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in peft_model.parameters()), adapted


def runtime_baseline_mib() -> float:
    """Resident memory of this process now (torch, transformers, PEFT imported; no model loaded)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def activation_bytes(config: Any, tokens: int, bf16: bool, checkpointing: bool) -> float:
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    width = 2 if bf16 else 4
    full_layer = (34 * h + 22 * i) * width / 2 * tokens
    if checkpointing:
        return layers * h * width * tokens + full_layer
    return layers * full_layer


def estimate_memory(
    model_dir: Path, adapter: Adapter | None, plan: TrainPlan, seq_length: int, supervised_ratio: float | None = None
) -> MemoryEstimate:
    """Expected peak memory of training with ``plan`` (batch size, precision, checkpointing)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    trainable, total, adapted = parameter_counts(model_dir, adapter)
    frozen_width = 2 if plan.precision.bf16 and adapter is not None else 4
    tokens = plan.batch_size * seq_length
    supervised = tokens * (supervised_ratio if supervised_ratio is not None else DEFAULT_SUPERVISED_RATIO)
    with_ckpt = activation_bytes(config, tokens, plan.precision.bf16, True)
    without_ckpt = activation_bytes(config, tokens, plan.precision.bf16, False)
    components = {
        "weights": (total - trainable) * frozen_width / MIB,
        "trainable (fp32)": trainable * 4 / MIB,
        "gradients": trainable * 4 / MIB,
        "optimizer states": trainable * ADAMW_STATE_BYTES / MIB,
        "activations": (with_ckpt if plan.gradient_checkpointing else without_ckpt) / MIB,
        "logits (supervised only)": supervised * config.vocab_size * 12 / MIB,
    }
    if adapter is not None and adapter.type == "dora":
        # PEFT's DoRA keeps the base and LoRA outputs of each adapted layer for its magnitude rescaling.
        components["DoRA activations"] = DORA_BYTES_PER_OUTPUT * adapted * tokens / MIB
    scale = CPU_ALLOCATOR_FACTOR if plan.precision.device == "cpu" else 1.0  # the table and the note agree
    if plan.precision.device == "cpu":
        for name in ("activations", "DoRA activations"):
            if name in components:
                components[name] *= scale
        components["runtime (torch, libraries)"] = runtime_baseline_mib()
    return MemoryEstimate(
        components, scale * with_ckpt / MIB, scale * without_ckpt / MIB, plan.gradient_checkpointing, trainable, total
    )


@dataclass(frozen=True)
class EstimateReport:
    estimate: MemoryEstimate
    batch_size: int
    seq_length: int
    device: str
    measured_mib: float | None  # peak of the last real run with the same settings, if any
    measured_source: str | None
    available_mib: float | None = None  # the device's memory (RAM, or the GPU's)

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
        """(estimate − measured) / measured."""
        return (self.estimate.total - self.measured_mib) / self.measured_mib if self.measured_mib else None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.estimate.to_json(),
            "batch_size": self.batch_size,
            "max_seq_length": self.seq_length,
            "device": self.device,
            "measured_peak_mib": self.measured_mib,
            "measured_source": self.measured_source,
            "error": round(self.error, 4) if self.error is not None else None,
            "available_mib": round(self.available_mib) if self.available_mib is not None else None,
            "fits": self.fits,
        }


def last_run_peak(meta_path: Path, batch_size: int, seq_length: int, device: str) -> float | None:
    """Measured peak from ``training_meta.json`` when that run used the same batch, length and device."""
    meta = read_training_meta(meta_path.parent) if meta_path.is_file() else None
    if meta is None or meta.plan.get("batch_size") != batch_size or meta.max_seq_length() != seq_length:
        return None
    value = meta.metrics.cuda_max_allocated_mib if device == "cuda" else meta.metrics.cpu_peak_rss_mib
    return float(value) if value is not None else None


def estimate_expert(
    target: Path, model: str | None = None, batch_size: int | None = None, max_seq_length: int | None = None
) -> EstimateReport:
    """Estimate for the expert's manifest (optionally another batch size or length), beside the
    measured peak of its last run when that run used the same settings."""
    from dataclasses import replace

    from expertkit.manifest.sections import TrainingConfig
    from expertkit.models.context import open_expert
    from expertkit.train.adapters import adapter_to_train
    from expertkit.train.job import weights_dir_for
    from expertkit.train.outputs import META_FILE
    from expertkit.train.plan import resolve_plan

    context = open_expert(target, model)
    loaded, entry = context.loaded, context.entry
    config = loaded.manifest.training.config if loaded.manifest.training else None
    plan = resolve_plan(config, entry)
    plan = replace(plan, batch_size=batch_size or plan.batch_size)
    length = max_seq_length or (config or TrainingConfig()).setting("max_seq_length")
    adapter = None if plan.full_finetune else adapter_to_train(entry.adapters)
    estimate = estimate_memory(context.resolved.path, adapter, plan, length)
    meta_path = weights_dir_for(loaded, entry) / META_FILE
    measured = last_run_peak(meta_path, plan.batch_size, length, plan.precision.device)
    source = str(meta_path) if measured is not None else None
    available = device_memory_mib(plan.precision.device)
    return EstimateReport(estimate, plan.batch_size, length, plan.precision.device, measured, source, available)
