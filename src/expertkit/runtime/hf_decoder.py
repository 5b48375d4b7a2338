"""The decoder for architectures :mod:`expertkit.runtime.llama_decoder` does not cover: transformers'
own forward with a fresh ``DynamicCache`` per generation (same interface, slower)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class HFCache:
    capacity: int
    past: Any = None
    length: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class HFDecoder:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 1 << 30))

    def new_cache(self, capacity: int) -> HFCache:
        from transformers import DynamicCache

        return HFCache(min(capacity, self.max_positions), DynamicCache(config=self.model.config))

    @torch.inference_mode()
    def forward(self, cache: HFCache, ids: Any, prefix: Any = None) -> torch.Tensor:
        embeds = self.model.get_input_embeddings()(torch.as_tensor(ids)[None])
        if prefix is not None:
            embeds = torch.cat([torch.as_tensor(prefix).to(embeds.dtype)[None], embeds], dim=1)
        tokens = embeds.shape[1]
        if cache.length + tokens > cache.capacity:
            raise ValueError(f"context of {cache.length + tokens} tokens exceeds the cache ({cache.capacity})")
        positions = torch.arange(cache.length, cache.length + tokens)[None]
        out = self.model(inputs_embeds=embeds, past_key_values=cache.past, position_ids=positions, use_cache=True)
        cache.past, cache.length = out.past_key_values, cache.length + tokens
        return out.logits[0, -1].float()
