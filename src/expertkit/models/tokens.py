"""Control tokens an expert adds to its base tokenizer (``training.dataset.special_tokens``)."""

from __future__ import annotations

from typing import Any


def add_control_tokens(tokenizer: Any, tokens: list[str]) -> int:
    """Add the manifest's control tokens as special tokens; how many were new."""
    if not tokens:
        return 0
    return int(tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False))


def special_tokens_record(tokenizer: Any) -> dict[str, Any]:
    """The named special tokens and every added token with its id (what the lock pins)."""
    named = {
        key: str(getattr(tokenizer, key)) if getattr(tokenizer, key, None) is not None else None
        for key in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    added = {str(token): int(index) for token, index in sorted(tokenizer.get_added_vocab().items())}
    return {**named, "added": added, "size": len(tokenizer)}
