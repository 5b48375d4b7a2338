"""Convert a GGUF checkpoint into a safetensors model directory, once, atomically.

transformers can read GGUF (dequantising every tensor, ~15-20 s for SmolLM2-135M), but refuses
to ``save_pretrained`` a GGUF-loaded model. So: load it, build a fresh model from its config
(without the GGUF quantisation marker), load the state dict, save. Later loads read safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expertkit.errors import ModelLoadError
from expertkit.fsutil import atomic_directory


def load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) dequantised from a GGUF file, in fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, trust_remote_code=False)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(
            f"cannot read GGUF file {gguf_path}: {exc}",
            "check that it is a complete GGUF file of an architecture transformers supports",
        ) from exc
    return model, tokenizer


def _fresh_copy(model: Any) -> Any:
    """A plain (non-GGUF) model with the same weights, which save_pretrained accepts."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    fresh = AutoModelForCausalLM.from_config(config)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    # Tied weights (lm_head = embed_tokens) may legitimately be absent from the state dict.
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion lost tensors: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return fresh


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Write ``target`` as a safetensors + tokenizer + chat-template directory."""
    model, tokenizer = load_gguf(gguf_path)
    fresh = _fresh_copy(model)
    with atomic_directory(target, replace=True) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not _has_chat_template(Path(tmp)):
            raise ModelLoadError(f"{gguf_path} carries no chat template", "use a GGUF file that embeds one")


def _has_chat_template(directory: Path) -> bool:
    from expertkit.models.fingerprint import read_chat_template

    return read_chat_template(directory) is not None
