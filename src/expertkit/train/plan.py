"""The resolved training plan: manifest values, CLI overrides and defaults, decided once.

Everything the loop needs is on :class:`TrainPlan`; nothing downstream reads the manifest's
optional fields again, so a default lives in exactly one place (here) and ``training_meta.json``
records the values actually used.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

from expertkit.errors import UsageError
from expertkit.manifest.model import BaseModelEntry
from expertkit.manifest.sections import OptimizerConfig, Selection, TrainingConfig
from expertkit.models.hardware import cpu_supports_bf16

DEFAULT_LR_ADAPTER = 2e-4
DEFAULT_LR_FULL = 2e-5


@dataclass(frozen=True)
class Precision:
    """Compute dtype of the frozen weights and whether autocast runs; trainable params stay fp32."""

    bf16: bool
    device: str
    reason: str

    @property
    def frozen_dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"


@dataclass(frozen=True)
class TrainPlan:
    epochs: float
    max_steps: int | None
    learning_rate: float
    batch_size: int
    gradient_accumulation_steps: int
    scheduler: str
    warmup_steps: int | None
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    optimizer: OptimizerConfig
    neftune_alpha: float | None
    gradient_checkpointing: bool
    full_finetune: bool
    quantization: str
    precision: Precision
    eval_steps: int | None
    logging_steps: int
    seed: int
    selection: Selection
    report_to: list[str] = field(default_factory=list)
    attention: str = "sdpa"
    dataloader_num_workers: int = 0
    dataloader_pin_memory: bool = False
    dataloader_prefetch_factor: int | None = None
    dataloader_persistent_workers: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["optimizer"] = self.optimizer.model_dump(mode="json", exclude_none=True)
        data["selection"] = self.selection.model_dump(mode="json")
        return data


def resolve_precision(requested: bool | str | None, device: str) -> Precision:
    """bf16 when asked (``true``), or by default/``auto`` when the device runs it natively."""
    import torch

    if device == "cuda":
        native = torch.cuda.is_bf16_supported()
        where = "this GPU"
    else:
        native = cpu_supports_bf16()
        where = "this CPU (avx512_bf16/amx_bf16)"
    if requested is False:
        return Precision(False, device, "bf16: false in the manifest")
    if requested is True and not native:
        raise UsageError(
            f"training.config.bf16 is true but {where} has no native bf16 support",
            'set "bf16": "auto" or false',
        )
    if native:
        return Precision(True, device, f"bf16 autocast: supported natively by {where}")
    return Precision(False, device, f"fp32: {where} has no native bf16")


def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_plan(config: TrainingConfig | None, entry: BaseModelEntry, max_steps: int | None = None) -> TrainPlan:
    """Resolve the manifest's training config (plus a ``--max-steps`` override) into a plan."""
    c = config or TrainingConfig()
    optimizer = (
        c.optimizer if isinstance(c.optimizer, OptimizerConfig) else OptimizerConfig(type=c.setting("optimizer"))
    )
    full = bool(c.setting("full_finetune"))
    quantization = c.quantization or entry.quantization or c.setting("quantization")
    if full and quantization != "none":
        raise UsageError(
            "training.config.full_finetune cannot train a quantized base model",
            "drop quantization, or train an adapter (QLoRA) instead",
        )
    device = training_device()
    if quantization != "none" and device != "cuda":
        raise UsageError(
            f"quantization {quantization!r} (QLoRA via bitsandbytes) needs a CUDA GPU; this machine has none",
            'set "quantization": "none" to train in bf16/fp32 on CPU',
        )
    if optimizer.type == "paged_adamw_8bit" and device != "cuda":
        raise UsageError(
            "optimizer paged_adamw_8bit (bitsandbytes) needs a CUDA GPU; this machine has none",
            'use "optimizer": "adamw" (or "muon") on CPU',
        )
    if "tensorboard" in (c.report_to or []) and importlib.util.find_spec("tensorboard") is None:
        raise UsageError('report_to ["tensorboard"] needs the tensorboard package', "pip install tensorboard")
    steps = max_steps or c.max_steps
    return TrainPlan(
        epochs=c.setting("epochs"),
        max_steps=steps,
        learning_rate=c.learning_rate or (DEFAULT_LR_FULL if full else DEFAULT_LR_ADAPTER),
        batch_size=c.setting("batch_size"),
        gradient_accumulation_steps=c.setting("gradient_accumulation_steps"),
        scheduler=c.setting("scheduler"),
        warmup_steps=c.warmup_steps,
        warmup_ratio=c.setting("warmup_ratio"),
        weight_decay=c.setting("weight_decay"),
        max_grad_norm=c.setting("max_grad_norm"),
        optimizer=optimizer,
        neftune_alpha=c.neftune_alpha or None,
        gradient_checkpointing=bool(c.setting("gradient_checkpointing")),
        full_finetune=full,
        quantization=quantization,
        precision=resolve_precision(c.setting("bf16"), device),
        eval_steps=c.eval_steps or c.save_steps,  # a checkpoint at every evaluation: one cadence
        logging_steps=c.setting("logging_steps"),
        seed=c.setting("seed"),
        selection=c.selection or Selection(),
        report_to=list(c.report_to or []),
        attention="sdpa" if c.setting("use_sdpa") else "eager",
        dataloader_num_workers=c.setting("dataloader_num_workers"),
        dataloader_pin_memory=bool(c.setting("dataloader_pin_memory")) and device == "cuda",
        dataloader_prefetch_factor=c.dataloader_prefetch_factor if c.dataloader_num_workers else None,
        dataloader_persistent_workers=bool(c.dataloader_persistent_workers) and bool(c.dataloader_num_workers),
    )
