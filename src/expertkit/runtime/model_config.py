"""A base model's ``config.json`` and ``generation_config.json`` as the fast start reads them, and
which architectures the lean decoder covers. Nothing here imports torch: the ONNX decoder's
one-shot path decides from these files alone."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from expertkit.safepath import UnsafePathError, read_bounded

MAX_CONFIG_BYTES = 1 << 20
SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a bounded file, or ``None`` when it is missing, too big or not an object."""
    try:
        data = json.loads(read_bounded(path, path.name, MAX_CONFIG_BYTES))
    except (OSError, ValueError, UnsafePathError):
        return None
    return data if isinstance(data, dict) else None


def lean_supported(config: Any) -> bool:
    """Whether the lean decoder (and the fast start) runs this architecture exactly."""
    return (
        config.model_type in SUPPORTED_TYPES
        and getattr(config, "hidden_act", "silu") == "silu"
        and not getattr(config, "use_sliding_window", False)
        and not getattr(config, "mlp_bias", False)
    )


def _rope_theta(data: dict[str, Any]) -> float | None:
    """The RoPE base when the model uses plain (unscaled) rotary embeddings, else ``None``."""
    params = data.get("rope_parameters") or {}
    scaling = data.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta", data.get("rope_theta", 10000.0))
    return float(theta) if kind == "default" and isinstance(theta, int | float) else None


def fast_config(model_dir: Path) -> SimpleNamespace | None:
    """The model's config as attributes, when the lean decoder can run it straight from its files."""
    data = read_json(model_dir / "config.json")
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
    data = read_json(model_dir / "generation_config.json") or {}
    value = data.get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return {int(v) for v in values if isinstance(v, int)}
