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

Quantised frozen weights (QLoRA through bitsandbytes) cost 1 byte per parameter (int8) or 0.516
(int4 NF4 with double quantisation: 4 bits, one 8-bit absmax per 64 weights, one fp32 per 256
absmaxes) in every ``nn.Linear`` but the LM head; the rest stays in the compute dtype. Optimizer
state per trainable parameter: AdamW 8 bytes (two fp32 moments), paged 8-bit AdamW 2, Muon 4 on the
2-D hidden matrices it takes (one fp32 momentum) and AdamW's 8 on the rest.

The calculator (``expert-cli estimate --base …``, the dashboard's memory page) and the estimate for a
manifest call the same :func:`estimate_memory` with a :class:`MemoryShape`.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from expertkit.manifest.sections import Adapter
from expertkit.train.adapters import attach_adapter

MIB = 2**20
ADAMW_STATE_BYTES = 8  # exp_avg + exp_avg_sq, fp32
DEFAULT_SUPERVISED_RATIO = 0.3
QUANTIZED_BYTES = {"none": None, "int8": 1.0, "int4": 0.5 + 1 / 64 + 4 / (64 * 256)}
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "paged_adamw_8bit": 2.0}
MUON_HIDDEN_BYTES = 4.0
DORA_BYTES_PER_OUTPUT = 4  # per token, per output feature of an adapted layer (measured: 3.9)
# glibc malloc keeps freed blocks: at identical shapes, the SQL expert's peak RSS grew from 6.3 GB (4 steps)
# to 7.5 GB (30 steps). Per-step tensors on CPU are scaled by this; CUDA reports max_allocated, unaffected.
CPU_ALLOCATOR_FACTOR = 1.2


@dataclass(frozen=True)
class MemoryShape:
    """What the estimate depends on besides the model and the adapter."""

    batch_size: int
    seq_length: int
    bf16: bool
    device: str  # "cpu" or "cuda"
    gradient_checkpointing: bool
    quantization: str = "none"  # of the frozen base weights: none, int8, int4
    optimizer: str = "adamw"  # adamw, paged_adamw_8bit, muon
    supervised_ratio: float | None = None  # share of tokens with a loss (logits memory)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ParameterCounts:
    trainable: int
    total: int
    adapted_width: int  # summed output width of the adapted layers (DoRA's extra activations)
    hidden_trainable: int  # trainable 2-D hidden matrices (what Muon optimises)
    quantizable: int  # frozen parameters in nn.Linear layers other than the LM head (what bitsandbytes quantises)


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


def parameter_counts(model_dir: Path, adapter: Adapter | None) -> ParameterCounts:
    """Parameter counts with ``adapter`` attached (all trainable without one), built on ``meta``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from expertkit.train.optimizers import NOT_HIDDEN

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = sum(
        m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    )
    adapted = 0
    if adapter is not None:
        targets = set(adapter.target_modules)
        adapted = sum(m.weight.shape[0] for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets)
        model = attach_adapter(model, adapter)
    named = [(n, p) for n, p in model.named_parameters() if adapter is None or p.requires_grad]
    hidden = sum(p.numel() for n, p in named if p.ndim == 2 and not any(tag in n for tag in NOT_HIDDEN))
    trainable = sum(p.numel() for _, p in named)
    return ParameterCounts(trainable, sum(p.numel() for p in model.parameters()), adapted, hidden, linear)


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


def optimizer_state_bytes(counts: ParameterCounts, optimizer: str) -> float:
    if optimizer == "muon":
        return counts.hidden_trainable * MUON_HIDDEN_BYTES + (counts.trainable - counts.hidden_trainable) * 8.0
    return counts.trainable * OPTIMIZER_STATE_BYTES.get(optimizer, 8.0)


def weight_bytes(counts: ParameterCounts, shape: MemoryShape, full_finetune: bool) -> float:
    """The frozen base weights: quantised linears (QLoRA) and the rest in the compute dtype."""
    frozen = counts.total - counts.trainable
    width = 2 if shape.bf16 and not full_finetune else 4
    quantized = QUANTIZED_BYTES.get(shape.quantization)
    if quantized is None or full_finetune:
        return frozen * width
    return counts.quantizable * quantized + (frozen - counts.quantizable) * width


def estimate_memory(model_dir: Path, adapter: Adapter | None, shape: MemoryShape) -> MemoryEstimate:
    """Expected peak memory of training ``adapter`` (``None``: a full fine-tune) on ``model_dir``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    counts = parameter_counts(model_dir, adapter)
    tokens = shape.batch_size * shape.seq_length
    ratio = shape.supervised_ratio if shape.supervised_ratio is not None else DEFAULT_SUPERVISED_RATIO
    with_ckpt = activation_bytes(config, tokens, shape.bf16, True)
    without_ckpt = activation_bytes(config, tokens, shape.bf16, False)
    components = {
        "weights": weight_bytes(counts, shape, adapter is None) / MIB,
        "trainable (fp32)": counts.trainable * 4 / MIB,
        "gradients": counts.trainable * 4 / MIB,
        "optimizer states": optimizer_state_bytes(counts, shape.optimizer) / MIB,
        "activations": (with_ckpt if shape.gradient_checkpointing else without_ckpt) / MIB,
        "logits (supervised only)": tokens * ratio * config.vocab_size * 12 / MIB,
    }
    if adapter is not None and adapter.type == "dora":
        # PEFT's DoRA keeps the base and LoRA outputs of each adapted layer for its magnitude rescaling.
        components["DoRA activations"] = DORA_BYTES_PER_OUTPUT * counts.adapted_width * tokens / MIB
    scale = CPU_ALLOCATOR_FACTOR if shape.device == "cpu" else 1.0  # the table and the note agree
    if shape.device == "cpu":
        for name in ("activations", "DoRA activations"):
            if name in components:
                components[name] *= scale
        components["runtime (torch, libraries)"] = runtime_baseline_mib()
    return MemoryEstimate(
        components,
        scale * with_ckpt / MIB,
        scale * without_ckpt / MIB,
        shape.gradient_checkpointing,
        counts.trainable,
        counts.total,
    )
