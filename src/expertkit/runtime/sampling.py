"""Next-token choice: greedy at temperature 0; otherwise temperature, top-k, top-p (nucleus).

Seeded runs reproduce exactly: sampling draws from a private ``torch.Generator``.
"""

from __future__ import annotations

from typing import Any

import torch

from expertkit.runtime.settings import DecodingSettings


class Sampler:
    def __init__(self, settings: DecodingSettings) -> None:
        self.settings = settings
        self.generator = torch.Generator()
        if settings.seed is not None:
            self.generator.manual_seed(settings.seed)
        else:
            self.generator.seed()

    def penalise(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """CTRL-style repetition penalty on tokens already in the context (as transformers does)."""
        penalty = self.settings.repetition_penalty
        if penalty == 1.0 or seen is None or seen.numel() == 0:
            return logits
        picked = logits.gather(-1, seen)
        logits = logits.clone()
        logits.scatter_(-1, seen, torch.where(picked < 0, picked * penalty, picked / penalty))
        return logits

    def processed(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """The logits :meth:`choose` decides on: after the repetition penalty and, when sampling,
        temperature, top-k and top-p (tokens cut off are ``-inf``)."""
        logits = self.penalise(logits.float(), seen)
        s = self.settings
        if s.temperature == 0:
            return logits
        logits = logits / s.temperature
        if s.top_k and s.top_k < logits.numel():
            kth = torch.topk(logits, s.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if s.top_p < 1.0:
            logits = _nucleus(logits, s.top_p)
        return logits

    def choose(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> int:
        """The next token id from 1-D ``logits`` (already masked by a grammar when there is one)."""
        return self.pick(self.processed(logits, seen))

    def pick(self, processed: torch.Tensor) -> int:
        """Greedy argmax, or a draw from the softmax of already processed logits."""
        if self.settings.temperature == 0:
            return int(processed.argmax())
        probs = torch.softmax(processed, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _nucleus(logits: torch.Tensor, top_p: float) -> Any:
    ordered, index = torch.sort(logits, descending=True)
    cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
    drop = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # keep the token that crosses top_p
    ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, index, ordered)
