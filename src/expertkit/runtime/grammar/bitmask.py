"""Applying a token bitmask (int32 words, 32 tokens each: the layout XGrammar and llguidance share)."""

from __future__ import annotations

import torch

_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """``logits`` with every token whose bit is 0 in ``bitmask`` (int32 words, 32 tokens each, the
    layout XGrammar and llguidance share) set to -inf. Plain tensor ops: no compile step, ~0.1 ms."""
    allowed = ((bitmask.reshape(-1, 1) >> _BIT_SHIFTS) & 1).reshape(-1)[: logits.shape[-1]].bool()
    if allowed.shape[0] < logits.shape[-1]:  # model rows beyond the tokenizer: never allowed
        allowed = torch.cat([allowed, allowed.new_zeros(logits.shape[-1] - allowed.shape[0])])
    return logits.masked_fill(~allowed, float("-inf"))
