"""Which experts the native decoder runs, and their factors in its form: a plain LoRA or a DoRA on a
Llama-family model's projections, read from its files (``A``, ``B·scale`` and DoRA's per-row
``m / ‖W + B·A·scale‖``, computed once in fp32 from the unquantised base weight, as PEFT does)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from expertkit.runtime.lora_file import LoraFile
from expertkit.runtime.native_decoder import NAMES, NativeDecoder, NativeWeights, native_unsupported, pack_model

ExpertFactors = dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray | None]]
_BY_NAME = {suffix: key for key, suffix in NAMES.items()}


def _projection(weight_name: str) -> tuple[int, str] | None:
    """``model.layers.3.mlp.up_proj.weight`` -> ``(3, "up")``; ``None`` for anything else."""
    parts = weight_name.split(".")
    if len(parts) != 6 or parts[:2] != ["model", "layers"] or not parts[2].isdigit() or parts[5] != "weight":
        return None
    key = _BY_NAME.get(f"{parts[3]}.{parts[4]}")
    return (int(parts[2]), key) if key else None


def native_gap(config: Any, shapes: Mapping[str, tuple[int, ...]], lora: LoraFile | None) -> str | None:
    """Why the native decoder cannot run this model with this expert (``None``: it can)."""
    if (reason := native_unsupported(config, shapes)) is not None:
        return reason
    if lora is not None:
        for name in lora.keys:
            if _projection(name) is None:
                return f"the expert adapts {name} (the native decoder adds experts to the projections only)"
    return None


def expert_factors(lora: LoraFile, base: Any) -> ExpertFactors:
    """``lora``'s factors as the native decoder adds them; ``base(name)`` gives a base weight in fp32
    (numpy), read only for a DoRA's rescale."""
    import torch

    from expertkit.runtime.lora_deltas import dora_rescale

    factors = lora.factors()
    out: ExpertFactors = {}
    for name, (a, b) in factors.factors.items():
        where = _projection(name)
        assert where is not None  # native_gap checked every name
        b_scaled = b.float() * factors.scale
        rescale = None
        if name in factors.magnitudes:
            with torch.no_grad():
                weight = torch.from_numpy(base(name))
                rescale = dora_rescale(weight, a.float(), b_scaled, factors.magnitudes[name]).numpy()
        out[where] = (a.float().numpy(), b_scaled.numpy(), rescale)
    return out


def native_base(tensors: Any, config: Any, quantize: str) -> NativeWeights:
    """The base model's weights packed for the native decoder, from the fast start's files."""
    return pack_model(lambda name: tensors.float_rows(name)[:], set(tensors.shapes), config, quantize)


def native_decoder(weights: NativeWeights, lora: LoraFile | None, tensors: Any) -> NativeDecoder:
    """A native decoder over ``weights`` with ``lora``'s change (``None``: the base model alone)."""
    expert = expert_factors(lora, lambda name: tensors.float_rows(name)[:]) if lora is not None else None
    return NativeDecoder(weights, expert)
