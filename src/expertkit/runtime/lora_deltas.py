"""An expert's LoRA as low-rank deltas beside shared base weights, so sequences of different experts
decode in one batch (the S-LoRA / Punica idea, on a CPU).

A merged decoder holds one expert's weights, so a batch can only hold that expert's sequences. With
the base weights shared and each expert's LoRA kept as its factors, one batch step computes every
projection once for all rows (``x · Wᵀ``) and adds, for each expert present, its delta to its own
rows (``x · Aᵀ · Bᵀ · scale``, grouped by expert). LoRA and DoRA on the attention and MLP
projections qualify. DoRA's merged weight is ``m / ‖W + ΔW‖ · (W + ΔW)`` per output channel, so its
rows are ``(x · Wᵀ + x · ΔWᵀ) · m / ‖W + ΔW‖``: the same delta, then a per-channel rescale whose norm
is computed once, in fp32, from the unquantised base weight (as PEFT computes it), so a quantised
base serves a DoRA expert without rounding its change away. IA³ and LoKr are not low-rank products,
and an adapter on the embedding or the output head would change the shared tables; those experts
keep decoding merged, one expert per batch (:func:`lora_deltas` answers ``None``).

Written here because PEFT applies adapters per module on a whole batch, one active adapter at a
time (its mixed-batch forward re-runs every module per adapter), and the lean decoder fuses
q/k/v and gate/up: the deltas must follow that layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from expertkit.runtime.lora_file import FUSED, PROJECTIONS


class Delta:
    """One fused projection's delta: ``x · a.T · b.T`` (the scale folded into ``b``), in fp32 whatever
    the decode dtype: the factors are small, fp32 keeps the adapter's precision, and on CPUs with AMX
    these skinny products run about 3x faster in fp32 than in bf16 (measured: 31 µs against 96 µs
    for 8 rows of a rank-48 qkv delta; 10 µs against 55 µs for one row). The factors are stored
    transposed, so each product is one plain matrix multiply."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, rescale: torch.Tensor | None = None) -> None:
        self.a_t = a.float().T.contiguous()  # [in, ranks of the parts]
        self.b_t = b.float().T.contiguous()  # [ranks, out], block-diagonal over the fused parts
        self.rescale = None if rescale is None else rescale.float().contiguous()  # DoRA: [out], m / ‖W + ΔW‖

    @property
    def a(self) -> torch.Tensor:
        return self.a_t.T

    @property
    def b(self) -> torch.Tensor:
        return self.b_t.T

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() @ self.a_t) @ self.b_t

    def apply(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The rows ``y = x · Wᵀ`` of the shared weight made this expert's: plus the delta, then (DoRA)
        rescaled per output channel."""
        y = y + self(x)
        return y if self.rescale is None else y * self.rescale

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.a_t, self.b_t) if self.rescale is None else (self.a_t, self.b_t, self.rescale)


@dataclass
class ExpertDeltas:
    """Per layer, the expert's deltas by fused projection name (absent: not adapted)."""

    layers: list[dict[str, Delta]]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for d in layer.values() for t in d.tensors())


# One module's adapter: (A, B·scale), and for DoRA its per-channel rescale m / ‖W + ΔW‖.
Factors = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _block_diagonal(parts: list[Factors | None], outs: list[int]) -> Delta | None:
    """Fuse per-module factors into one delta over the concatenated outputs (a DoRA rescale of 1 on
    the outputs of parts without one)."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    a = torch.cat([p[0] for p in present])
    b = torch.zeros(sum(outs), a.shape[0], dtype=a.dtype)
    rescales = []
    row = column = 0
    for part, out in zip(parts, outs, strict=True):
        if part is not None:
            rank = part[0].shape[0]
            b[row : row + out, column : column + rank] = part[1]
            column += rank
        rescales.append(part[2] if part is not None and len(part) == 3 else torch.ones(out))
        row += out
    dora = any(p is not None and len(p) == 3 for p in parts)
    return Delta(a.contiguous(), b.contiguous(), torch.cat(rescales) if dora else None)


def _lora_factors(module: Any, name: str) -> Factors | bool | None:
    """(A, B·scale[, DoRA rescale]) of adapter ``name`` on ``module``; ``None`` where the module lacks
    it; ``False`` where it has it in a form deltas cannot express (a LoRA bias, a non-linear base, a
    biased or transposed base under DoRA)."""
    if name not in getattr(module, "lora_A", {}):
        return None
    if getattr(module, "lora_bias", {}).get(name):
        return False
    a, b = module.lora_A[name], module.lora_B[name]
    if not isinstance(a, torch.nn.Linear) or not isinstance(b, torch.nn.Linear):
        return False
    scale = float(module.scaling[name])
    a_weight, b_scaled = a.weight.detach().float().clone(), b.weight.detach().float() * scale
    if not getattr(module, "use_dora", {}).get(name):
        return a_weight, b_scaled
    base = module.get_base_layer()
    if getattr(base, "bias", None) is not None or getattr(module, "fan_in_fan_out", False):
        return False
    magnitude = module.lora_magnitude_vector[name].weight.detach().float()
    return a_weight, b_scaled, dora_rescale(base.weight.detach(), a_weight, b_scaled, magnitude)


def dora_rescale(weight: torch.Tensor, a: torch.Tensor, b_scaled: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """DoRA's per-output-channel factor ``m / ‖W + B·A·scale‖`` (row norms), in fp32 from the
    unquantised base weight: what PEFT multiplies the merged weight by."""
    return m / torch.linalg.norm(torch.addmm(weight.float(), b_scaled, a), dim=1)


def lora_deltas(model: Any, name: str) -> ExpertDeltas | None:
    """Adapter ``name`` of a PEFT model as :class:`ExpertDeltas`, or ``None`` when it is not a LoRA or
    DoRA on the decoder's projections only (it must then decode merged)."""
    adapted: dict[tuple[int, str], Factors] = {}
    for path, module in model.named_modules():
        factors = _lora_factors(module, name)
        if factors is None:
            continue
        parts = path.split(".")
        if factors is False or parts[-1] not in PROJECTIONS or "layers" not in parts:
            return None  # adapted somewhere the deltas cannot follow (embeddings, head) or not LoRA
        index = int(parts[parts.index("layers") + 1])
        adapted[(index, parts[-1])] = factors  # type: ignore[assignment]
    blocks = model.get_base_model().model.layers
    return fused_deltas(adapted, len(blocks), lambda index, m: int(_module(blocks[index], m).out_features))


def fused_deltas(
    adapted: dict[tuple[int, str], Factors], layers: int, out_of: Callable[[int, str], int]
) -> ExpertDeltas | None:
    """Per-module ``(A, B·scale[, DoRA rescale])`` by (layer, module name) fused into the lean
    decoder's projections."""
    if not adapted:
        return None
    fused_layers: list[dict[str, Delta]] = []
    for index in range(layers):
        fused: dict[str, Delta] = {}
        for fused_name, modules in FUSED.items():
            outs = [out_of(index, m) for m in modules]
            delta = _block_diagonal([adapted.get((index, m)) for m in modules], outs)
            if delta is not None:
                fused[fused_name] = delta
        fused_layers.append(fused)
    return ExpertDeltas(fused_layers)


def _module(block: Any, name: str) -> Any:
    module = getattr(block.self_attn, name, None) or getattr(block.mlp, name)
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


@dataclass
class RowGroup:
    """The rows of a batch that belong to one expert, and that expert's deltas."""

    rows: torch.Tensor  # row indices into the batch
    deltas: ExpertDeltas
