"""What the engine checks before it attaches an expert: its lock, its control tokens beside the
other experts', its adapter's rank and its soft prompt against the base model; and the one file
it reads of the expert besides the adapter (the soft prompt)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertkit.errors import ModelLoadError, UsageError
from expertkit.package.lock import TrainedWith, lock_from_meta
from expertkit.package.references import ExpertFiles
from expertkit.runtime.file_tensors import FloatRows, safetensors_index
from expertkit.safepath import UnsafePathError, read_bounded

MAX_CONTROL_TOKENS, MAX_CONTROL_TOKEN_CHARS = 256, 64


@dataclass
class Expert:
    files: ExpertFiles
    soft_prompt: np.ndarray | None  # [virtual tokens, hidden], fp32
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.files.loaded.manifest.name


def lock_of(files: ExpertFiles, notes: list[str]) -> TrainedWith | None:
    if files.lock is not None:
        return files.lock.trained_with()
    meta = files.training_meta()
    if meta is None:
        notes.append(f"{files.root}: no expert.lock.json or training_meta.json; base model and template unchecked")
        return None
    return lock_from_meta(meta)


def soft_prompt(files: ExpertFiles) -> np.ndarray | None:
    """The expert's soft prompts, concatenated in manifest order, fp32 (``None`` without one); read
    from their safetensors files without torch."""
    parts = []
    for prompt in files.loaded.manifest.soft_prompts:
        path = files.soft_prompt_dir / f"{prompt.name}.safetensors"
        if not path.is_file():
            raise ModelLoadError(f"soft prompt {prompt.name!r} is configured but {path} is missing")
        entry = safetensors_index(path).get("prompt_embeddings")
        if entry is None:
            raise ModelLoadError(f"{path} holds no 'prompt_embeddings' tensor", "re-train or re-install the expert")
        parts.append(FloatRows(entry)[:])
    return np.concatenate(parts) if parts else None


def check_control_tokens(files: ExpertFiles, tokens: list[str], others: list[Expert]) -> None:
    """Control tokens are scoped by refusal: the tokenizer is shared, so an expert's added tokens
    would change how every other expert's prompts tokenise. Experts in one engine must declare
    the same control tokens (or none); the counts and lengths are bounded."""
    if len(tokens) > MAX_CONTROL_TOKENS or any(len(t) > MAX_CONTROL_TOKEN_CHARS or not t for t in tokens):
        raise UsageError(
            f"{files.root}: training.dataset.special_tokens lists {len(tokens)} tokens; at most "
            f"{MAX_CONTROL_TOKENS} of 1 to {MAX_CONTROL_TOKEN_CHARS} characters are accepted",
            "declare only the control tokens the expert was trained with",
        )
    for other in others:
        dataset = other.files.loaded.manifest.training.dataset if other.files.loaded.manifest.training else None
        theirs = set(dataset.special_tokens) if dataset else set()
        if theirs != set(tokens):
            raise UsageError(
                f"{files.loaded.manifest.name} and {other.name} declare different control tokens "
                f"({sorted(set(tokens) ^ theirs)[:5]}); loaded together, one expert's tokens would "
                "change how the other's prompts are tokenised",
                "serve them in separate processes (one expert-cli serve each)",
            )


def check_bounds(expert: Expert, config: Any, context_length: int) -> None:
    """An adapter's rank and a soft prompt's length within what the base model makes sensible."""
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    path = expert.files.adapter_dir / "adapter_config.json"
    try:
        adapter = json.loads(read_bounded(path, "adapter_config.json", 1 << 20))
    except (OSError, ValueError, UnsafePathError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}", "re-train or re-install the expert") from exc
    rank = adapter.get("r") if isinstance(adapter, dict) else None
    if hidden and isinstance(rank, int) and not 0 < rank <= hidden:
        raise ModelLoadError(f"{path}: rank r={rank} is outside 1..{hidden} (the base model's hidden size)")
    if expert.soft_prompt is not None:
        rows, width = expert.soft_prompt.shape
        if rows > context_length // 2 or (hidden and width != hidden):
            raise ModelLoadError(
                f"{expert.files.root}: soft prompt of {rows} x {width}; the base model allows at most "
                f"{context_length // 2} tokens of width {hidden}"
            )
