"""Which experts the native decoder runs, and their factors in its form: a plain LoRA or a DoRA on a
Llama-family model's projections, read from its files (``A``, ``B·scale`` and DoRA's per-row
``m / ‖W + B·A·scale‖``, computed once in fp32 from the unquantised base weight, as PEFT does)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from expertkit.runtime.file_tensors import FloatRows
from expertkit.runtime.lora_file import LoraFile
from expertkit.runtime.native_cache import load_packed, packed_dir, save_packed
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
    """``lora``'s factors as the native decoder adds them, read as fp32 numpy (no torch); ``base(name)``
    gives a base weight in fp32 numpy, read only for a DoRA's rescale ``m / ‖W + B·A·scale‖`` per row."""
    out: ExpertFactors = {}
    for name, (a_key, b_key, m_key) in lora.keys.items():
        where = _projection(name)
        assert where is not None  # native_gap checked every name
        a = FloatRows(lora.entries[a_key])[:]
        b_scaled = FloatRows(lora.entries[b_key])[:] * np.float32(lora.scale)
        rescale = None
        if m_key is not None:
            merged = base(name) + b_scaled @ a
            rescale = (FloatRows(lora.entries[m_key])[:] / np.linalg.norm(merged, axis=1)).astype(np.float32)
        out[where] = (a, b_scaled, rescale)
    return out


def native_base(tensors: Any, config: Any, quantize: str, weights_sha256: str) -> NativeWeights:
    """The base model's weights packed for the native decoder: mapped from the packed copy on disk,
    else packed from the fast start's files (and that copy written for the next process)."""
    target = packed_dir(weights_sha256, quantize)
    shapes = dict(tensors.shapes)
    if (cached := load_packed(target, config, shapes, quantize)) is not None:
        return cached
    weights = pack_model(lambda name: tensors.float_rows(name)[:], set(shapes), config, quantize)
    with contextlib.suppress(OSError):  # a read-only home: packed again next time
        shutil.rmtree(target, ignore_errors=True)  # a damaged or stale copy, if any
        save_packed(weights, target)
    return weights


def native_decoder(weights: NativeWeights, lora: LoraFile | None, tensors: Any) -> NativeDecoder:
    """A native decoder over ``weights`` with ``lora``'s change (``None``: the base model alone)."""
    expert = expert_factors(lora, lambda name: tensors.float_rows(name)[:]) if lora is not None else None
    return NativeDecoder(weights, expert)
