"""Load a ready base model and its tokenizer with transformers (safetensors only, offline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from expertkit.errors import ModelLoadError
from expertkit.models.lean_tokenizer import PLAIN_FAST_CLASSES, LeanTokenizer, lean_tokenizer
from expertkit.models.pull import ensure_ready
from expertkit.models.resolve import ResolvedModel, ensure_offline, refuse_remote_code
from expertkit.safepath import UnsafePathError, read_bounded

DType = Literal["auto", "float32", "bfloat16", "float16"]


# PLAIN_FAST_CLASSES: tokenizer classes that are transformers' plain tokenizers-backed class, loaded
# through it directly; AutoTokenizer's class resolution imports every model configuration (seconds).


def _tokenizer_class(model_dir: Path) -> Any:
    try:
        config = json.loads(read_bounded(model_dir / "tokenizer_config.json", "tokenizer_config.json", 1 << 22))
    except (OSError, ValueError, UnsafePathError):
        config = {}
    if isinstance(config, dict) and config.get("tokenizer_class") in PLAIN_FAST_CLASSES:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    return AutoTokenizer


def load_tokenizer(resolved: ResolvedModel) -> Any:
    ensure_offline()
    resolved = ensure_ready(resolved)
    refuse_remote_code(resolved.path)
    try:
        return _tokenizer_class(resolved.path).from_pretrained(resolved.path, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer in {resolved.path}: {exc}", "check the model directory"
        ) from exc


def decode_tokenizer(resolved: ResolvedModel) -> Any:
    """The tokenizer for decoding: without transformers when the model's tokenizer allows it
    (:mod:`expertkit.models.lean_tokenizer`), else transformers' own."""
    ensure_offline()
    resolved = ensure_ready(resolved)
    refuse_remote_code(resolved.path)
    try:
        lean = lean_tokenizer(resolved.path)
    except Exception as exc:  # a malformed tokenizer.json: the tokenizers library raises a plain Exception
        raise ModelLoadError(
            f"cannot load the tokenizer in {resolved.path}: {exc}", "check the model directory"
        ) from exc
    return lean if lean is not None else load_tokenizer(resolved)


def transformers_tokenizer(tokenizer: Any) -> Any:
    """transformers' tokenizer for one that may be lean (for code that reads only transformers' own)."""
    return tokenizer.transformers() if isinstance(tokenizer, LeanTokenizer) else tokenizer


def load_model(resolved: ResolvedModel, dtype: DType = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) for a ready model, in eval mode.

    Raises:
        ModelLoadError: the directory is not ready or cannot be loaded.
    """
    resolved = ensure_ready(resolved)
    if not resolved.ready:
        raise ModelLoadError(
            f"base model {resolved.name} is not ready at {resolved.path}",
            f"run: expert-cli models pull {resolved.name}",
        )
    ensure_offline()
    refuse_remote_code(resolved.path)
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path, dtype=torch_dtype, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the model in {resolved.path}: {exc}", "check the model directory") from exc
    model.to(device).eval()
    return model, load_tokenizer(resolved)
