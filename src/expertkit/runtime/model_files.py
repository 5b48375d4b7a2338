"""A base model and its LoRA experts read straight from their files, for the lean decoder's fast start.

Why by hand: building a transformers model object and wrapping it with PEFT costs seconds of
imports and module construction before the first token, while the lean decoder only needs the
tensors. The files are read by :mod:`expertkit.runtime.file_tensors` (safetensors only, headers
bounded), the config by :mod:`expertkit.runtime.model_config` and whether an adapter is a plain LoRA
or DoRA by :mod:`expertkit.runtime.lora_file`, none of them importing torch. This module holds what
computes with torch: the default rotary tables, the factors read into fp32 tensors, a LoRA merged
as PEFT merges it, and a LoRA or DoRA as the lean decoder's deltas. A DoRA runs as deltas over the
base decoder, never merged by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import torch

from expertkit.runtime.lora_deltas import ExpertDeltas, Factors, dora_rescale, fused_deltas
from expertkit.runtime.lora_file import LoraFactors


class DefaultRope:
    """Rotary cos/sin tables as transformers' default ``rotary_emb`` computes them (fp32, then cast)."""

    def __init__(self, config: SimpleNamespace) -> None:
        heads = int(config.num_attention_heads)
        dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim
        self.inv_freq = 1.0 / (config.rope_theta_value**exponents)

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv = self.inv_freq[None, :, None].float().expand(positions.shape[0], -1, 1)
        freqs = (inv @ positions[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def merged(base: Mapping[str, torch.Tensor], lora: LoraFactors) -> dict[str, torch.Tensor]:
    """``base`` with the LoRA merged as PEFT merges it (adapter factors in fp32): ``W + (B @ A) * scale``
    in fp32 (one ``addmm``), stored in the weight's dtype; the tests hold it equal to PEFT's merge."""
    if lora.dora:
        raise ValueError("a DoRA is not merged by hand: it runs as deltas (deltas_from)")
    out = dict(base)
    for name, (a, b) in lora.factors.items():
        weight = base[name]
        out[name] = torch.addmm(weight.float(), b, a, alpha=lora.scale).to(weight.dtype)
    return out


def deltas_from(lora: LoraFactors, base: Mapping[str, torch.Tensor], layers: int) -> ExpertDeltas | None:
    """The LoRA as the lean decoder's deltas (scale folded into B, fp32; a DoRA's per-row rescale
    ``m / ‖W + ΔW‖`` from the base weight, as :func:`lora_deltas` computes it from PEFT's modules)."""
    adapted: dict[tuple[int, str], Factors] = {}
    for name, (a, b) in lora.factors.items():
        parts = name.split(".")  # model.layers.<i>.<self_attn|mlp>.<module>.weight
        b_scaled = b * lora.scale  # fp32, as the deltas compute
        m = lora.magnitudes.get(name)
        key = (int(parts[2]), parts[-2])
        adapted[key] = (a, b_scaled) if m is None else (a, b_scaled, dora_rescale(base[name], a, b_scaled, m))

    def out_of(index: int, module: str) -> int:
        group = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        return int(base[f"model.layers.{index}.{group}.{module}.weight"].shape[0])

    return fused_deltas(adapted, layers, out_of)
