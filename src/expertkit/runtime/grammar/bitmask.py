"""Applying a token bitmask (int32 words, 32 tokens each: the layout XGrammar and llguidance share)."""

from __future__ import annotations

import sys

import numpy as np


def allowed_tokens(bitmask: np.ndarray, vocab: int) -> np.ndarray:
    """A boolean row of ``vocab`` entries: token ``i`` is allowed when bit ``i % 32`` of word
    ``i // 32`` is set. Tokens past the bitmask's words (model rows beyond the tokenizer) never are."""
    words = np.ascontiguousarray(bitmask, dtype=np.int32).reshape(-1)
    if sys.byteorder != "little":
        words = words.byteswap()
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").view(np.bool_)
    if bits.size >= vocab:
        return bits[:vocab]
    return np.concatenate([bits, np.zeros(vocab - bits.size, dtype=np.bool_)])


def apply_bitmask(logits: np.ndarray, bitmask: np.ndarray) -> np.ndarray:
    """``logits`` with every token whose bit is 0 in ``bitmask`` set to -inf (a new array)."""
    return np.where(allowed_tokens(bitmask, logits.shape[-1]), logits, np.float32("-inf")).astype(np.float32)
