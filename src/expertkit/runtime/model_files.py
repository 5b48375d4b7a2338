"""A base model and its LoRA experts read straight from their files, for the lean decoder's fast start.

Why by hand: building a transformers model object and wrapping it with PEFT costs seconds of
imports and module construction before the first token, while the lean decoder only needs the
tensors. This module reads ``config.json`` and the ``*.safetensors`` weights (safetensors only,
sizes bounded), a plain LoRA's factors from its adapter files, and computes the default rotary
tables, all with torch and safetensors alone. A DoRA is read too (its magnitudes); it runs as
deltas over the base decoder, never merged by hand. Anything it does not cover exactly (RoPE scaling,
regex targets, rank or alpha patterns, modules_to_save, LoRA biases) is refused here, and the
engine falls back to transformers + PEFT (:func:`plain_lora` returns ``None``,
:func:`fast_config` returns ``None``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from expertkit.runtime.llama_decoder import lean_supported
from expertkit.runtime.lora_deltas import PROJECTIONS, ExpertDeltas, Factors, dora_rescale, fused_deltas
from expertkit.safepath import UnsafePathError, read_bounded

MAX_CONFIG_BYTES = 1 << 20
# PEFT options that change what a LoRA computes beyond W + B·A·scale (DoRA is read, these are not).
EXOTIC = ("lora_bias", "use_qalora", "use_bdlora", "alora_invocation_tokens", "target_parameters",
          "trainable_token_indices", "layer_replication")  # fmt: skip
MAGNITUDE = ".lora_magnitude_vector"  # a DoRA magnitude's key suffix in PEFT's saved adapter
LAYER_WEIGHT = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.[a-z]+_proj\.weight")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(read_bounded(path, path.name, MAX_CONFIG_BYTES))
    except (OSError, ValueError, UnsafePathError):
        return None
    return data if isinstance(data, dict) else None


def _rope_theta(data: dict[str, Any]) -> float | None:
    """The RoPE base when the model uses plain (unscaled) rotary embeddings, else ``None``."""
    params = data.get("rope_parameters") or {}
    scaling = data.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta", data.get("rope_theta", 10000.0))
    return float(theta) if kind == "default" and isinstance(theta, int | float) else None


def fast_config(model_dir: Path) -> SimpleNamespace | None:
    """The model's config as attributes, when the lean decoder can run it straight from its files."""
    data = _json(model_dir / "config.json")
    if data is None or _rope_theta(data) is None:
        return None
    config = SimpleNamespace(**data)
    config.rope_theta_value = _rope_theta(data)
    # Values transformers would fill with a class default must be written out here, else transformers decides.
    required = ["model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
    required += ["rms_norm_eps", "max_position_embeddings", "vocab_size"]
    if not all(isinstance(getattr(config, k, None), int | float | str) for k in required) or not lean_supported(config):
        return None
    return config


def generation_end_ids(model_dir: Path) -> set[int]:
    """End-of-turn ids from ``generation_config.json`` (an int or a list), if any."""
    data = _json(model_dir / "generation_config.json") or {}
    value = data.get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return {int(v) for v in values if isinstance(v, int)}


class FileTensors(Mapping[str, torch.Tensor]):
    """The model's safetensors tensors by name, each read (memory-mapped) and cast to ``dtype`` on
    first use and kept: a decoder that needs only some of them (the ONNX decoder: the embedding
    table) never pays for casting the rest. Shapes come from the files' headers without reading."""

    def __init__(self, model_dir: Path, dtype: torch.dtype) -> None:
        from safetensors import safe_open

        self.dtype = dtype
        self._files: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(path), "pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    self._files[name] = path
                    self.shapes[name] = tuple(handle.get_slice(name).get_shape())
        self._read: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._read:
            from safetensors import safe_open

            with safe_open(str(self._files[name]), "pt") as handle:
                self._read[name] = handle.get_tensor(name).to(self.dtype)
        return self._read[name]

    def stored(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as the file stores it (not cast, not kept)."""
        from safetensors import safe_open

        with safe_open(str(self._files[name]), "pt") as handle:
            return handle.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


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


@dataclass
class LoraFactors:
    """A LoRA's (or DoRA's) factors by base weight name (``model.layers.0.self_attn.q_proj.weight``)."""

    scale: float
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # weight name -> (A [r, in], B [out, r])
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)  # DoRA: weight name -> m [out]

    @property
    def dora(self) -> bool:
        return bool(self.magnitudes)

    def nbytes(self) -> int:
        pairs = sum(t.numel() * t.element_size() for pair in self.factors.values() for t in pair)
        return pairs + sum(t.numel() * t.element_size() for t in self.magnitudes.values())


def _plain_config(config: dict[str, Any]) -> float | None:
    """The LoRA's (or DoRA's) scale when its config is one :class:`LoraFactors` expresses exactly."""
    targets = config.get("target_modules")
    r, alpha = config.get("r"), config.get("lora_alpha")
    plain = (
        config.get("peft_type") == "LORA"
        and config.get("bias", "none") == "none"
        and not any(config.get(key) for key in EXOTIC)
        and not config.get("modules_to_save")
        and not config.get("rank_pattern")
        and not config.get("alpha_pattern")
        and not config.get("layers_to_transform")
        and not config.get("fan_in_fan_out")
        and isinstance(targets, list)
        and set(targets) <= set(PROJECTIONS)
        and isinstance(r, int)
        and r > 0
        and isinstance(alpha, int | float)
    )
    if not plain or not isinstance(r, int) or not isinstance(alpha, int | float):
        return None
    return float(alpha) / (r**0.5 if config.get("use_rslora") else r)


def plain_lora(adapter_dir: Path, shapes: Mapping[str, tuple[int, ...]]) -> LoraFactors | None:
    """The adapter's factors (and a DoRA's magnitudes) in fp32, or ``None`` when it is not a LoRA or
    DoRA on the projections whose every tensor matches a base weight's shape (the engine then loads
    it with PEFT)."""
    from safetensors.torch import load_file

    config = _json(adapter_dir / "adapter_config.json")
    scale = _plain_config(config) if config is not None else None
    weights = adapter_dir / "adapter_model.safetensors"
    if config is None or scale is None or not weights.is_file():
        return None
    raw = load_file(str(weights))
    dora = bool(config.get("use_dora"))
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    magnitudes: dict[str, torch.Tensor] = {}
    for key, a in raw.items():
        if key.endswith(".lora_B.weight") or (dora and key.endswith(MAGNITUDE)):
            continue  # read beside their A
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
        if not key.endswith(".lora_A.weight") or not LAYER_WEIGHT.fullmatch(name):
            return None  # anything else (embeddings, extra modules, magnitudes without DoRA): not plain
        b, target = raw.get(key.replace(".lora_A.", ".lora_B.")), shapes.get(name)
        if b is None or target is None or a.shape[1] != target[1] or b.shape != (target[0], a.shape[0]):
            return None
        factors[name] = (a.float(), b.float())
        if dora:  # DoRA rescales each output row of W + dW: a base bias or a missing magnitude, PEFT decides
            m = raw.get(key.removesuffix(".lora_A.weight") + MAGNITUDE)
            if m is None or m.shape != (target[0],) or name.removesuffix("weight") + "bias" in shapes:
                return None
            magnitudes[name] = m.float()
    return LoraFactors(scale, factors, magnitudes) if factors else None


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
