"""A LoRA (or DoRA) expert's adapter files, checked without reading its tensors or importing torch.

The engine's fast start decodes a plain LoRA or DoRA on the attention and MLP projections by itself
(merged, as deltas, or as an ONNX graph). Whether an adapter is one is decided here from its
``adapter_config.json`` and its safetensors header alone: every factor's shape must fit the base
weight it adapts. The weights file's SHA-256 names the adapter for the ONNX graph cache, so a
cached graph is found without loading a tensor; :meth:`LoraFile.factors` reads them
(:class:`LoraFactors`, fp32) when a merge, deltas or a build need them, and only then imports
torch. Anything not covered exactly (regex targets, rank or alpha patterns, modules_to_save, LoRA
biases, embeddings) answers ``None``: PEFT loads it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertkit.errors import ModelLoadError
from expertkit.runtime.file_tensors import TensorEntry, safetensors_index
from expertkit.runtime.model_config import read_json

if TYPE_CHECKING:
    import torch

# The lean decoder's fused projections and the model modules that make them, in order.
FUSED = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "out": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
PROJECTIONS = {module: fused for fused, modules in FUSED.items() for module in modules}
# PEFT options that change what a LoRA computes beyond W + B·A·scale (DoRA is read, these are not).
EXOTIC = ("lora_bias", "use_qalora", "use_bdlora", "alora_invocation_tokens", "target_parameters",
          "trainable_token_indices", "layer_replication")  # fmt: skip
MAGNITUDE = ".lora_magnitude_vector"  # a DoRA magnitude's key suffix in PEFT's saved adapter
LAYER_WEIGHT = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.[a-z]+_proj\.weight")
WEIGHTS = "adapter_model.safetensors"


@dataclass
class LoraFile:
    """A plain LoRA's (or DoRA's) files: its scale, and for each adapted base weight
    (``model.layers.0.self_attn.q_proj.weight``) the keys of its A, B and (DoRA) magnitude."""

    weights: Path
    scale: float
    dora: bool
    keys: dict[str, tuple[str, str, str | None]]
    entries: dict[str, TensorEntry] = field(repr=False)
    sha256: str = ""
    _factors: Any = field(default=None, repr=False, compare=False)

    def nbytes(self) -> int:
        """Bytes of the adapter's tensors, as fp32 (how the engine holds them)."""
        used = {k for keys in self.keys.values() for k in keys if k is not None}
        return sum(4 * math.prod(self.entries[k].shape) for k in used)

    def factors(self) -> LoraFactors:
        """The factors (and magnitudes) in fp32 torch tensors, read once (imports torch)."""
        if self._factors is None:
            self._factors = read_factors(self)
        return self._factors


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


def read_factors(lora: LoraFile) -> LoraFactors:
    """``lora``'s factors (and a DoRA's magnitudes) in fp32, each of the shape its header gave.

    Raises:
        ModelLoadError: the file changed since its header was checked.
    """
    from safetensors.torch import load_file  # imports torch

    raw = load_file(str(lora.weights))
    for keys in lora.keys.values():
        for key in keys:
            if key is not None and (key not in raw or tuple(raw[key].shape) != lora.entries[key].shape):
                raise ModelLoadError(f"{lora.weights} changed while it was loaded ({key})", "load the expert again")
    factors = {name: (raw[a].float(), raw[b].float()) for name, (a, b, _) in lora.keys.items()}
    magnitudes = {name: raw[m].float() for name, (_, _, m) in lora.keys.items() if m is not None}
    return LoraFactors(lora.scale, factors, magnitudes)


def plain_scale(config: dict[str, Any]) -> float | None:
    """The LoRA's (or DoRA's) scale when its config is one :class:`LoraFile` expresses exactly."""
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


def plain_lora_file(adapter_dir: Path, shapes: Mapping[str, tuple[int, ...]]) -> LoraFile | None:
    """The adapter as a :class:`LoraFile`, or ``None`` when it is not a LoRA or DoRA on the
    projections whose every tensor matches a base weight's shape (the engine then loads it with PEFT)."""
    config = read_json(adapter_dir / "adapter_config.json")
    scale = plain_scale(config) if config is not None else None
    weights = adapter_dir / WEIGHTS
    if config is None or scale is None or not weights.is_file():
        return None
    entries = safetensors_index(weights)
    dora = bool(config.get("use_dora"))
    keys: dict[str, tuple[str, str, str | None]] = {}
    for key, a in entries.items():
        if key.endswith(".lora_B.weight") or (dora and key.endswith(MAGNITUDE)):
            continue  # read beside their A
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
        if not key.endswith(".lora_A.weight") or not LAYER_WEIGHT.fullmatch(name):
            return None  # anything else (embeddings, extra modules, magnitudes without DoRA): not plain
        b_key, target = key.replace(".lora_A.", ".lora_B."), shapes.get(name)
        b = entries.get(b_key)
        if b is None or target is None or len(a.shape) != 2 or a.shape[1] != target[1]:
            return None
        if b.shape != (target[0], a.shape[0]):
            return None
        m_key = key.removesuffix(".lora_A.weight") + MAGNITUDE if dora else None
        if (
            m_key is not None
        ):  # DoRA rescales each output row of W + dW: a base bias or a missing magnitude, PEFT decides
            m = entries.get(m_key)
            if m is None or m.shape != (target[0],) or name.removesuffix("weight") + "bias" in shapes:
                return None
        keys[name] = (key, b_key, m_key)
    if not keys:
        return None
    return LoraFile(weights, scale, dora, keys, entries, _sha256(weights))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
