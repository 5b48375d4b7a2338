"""Prompt prefix reuse: the keys and values of prompts already prefilled, kept so that a new prompt
that begins the same way (the chat template's system prompt, an expert's soft prompt, a shared
few-shot preamble, the earlier turns of a conversation) prefills only the tokens that differ.

vLLM's automatic prefix caching and llama.cpp server's ``cache_prompt`` do this for their own
caches; the lean decoder's cache is its own layout (keys stored transposed, one slot per sequence),
so the copy in and out is written here. Prefill is most of a short request's compute on a CPU (37
prompt tokens cost about as much as a batch step of 16 sequences), and every chat request of an
expert repeats its template's first ~30 tokens.

Keys and values depend on every weight that made them, so an entry belongs to one decoder object
and one expert's deltas (compared by identity, held weakly: an entry whose decoder was dropped is
dead) and to one soft prompt (compared by value). Entries are bounded by bytes, least recently used
first out. A reuse covers at least ``min_tokens`` tokens. Reused keys and values are the ones the same tokens
produced before, at the same positions (RoPE is applied before they are stored), so the result
differs from a full prefill only by the order of floating-point sums in the shorter prefill.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from expertkit.runtime.llama_decoder import KVCache


@dataclass
class _Entry:
    decoder: weakref.ref[Any]
    deltas: weakref.ref[Any] | None
    prefix: Any  # the soft prompt in front of the tokens (its positions come first)
    tokens: torch.Tensor  # [n] token ids after the soft prompt
    keys: torch.Tensor  # [layers, kv_heads, head_dim, positions]
    values: torch.Tensor  # [layers, kv_heads, positions, head_dim]

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def owned_by(self, decoder: Any, deltas: Any, prefix: Any) -> bool:
        if self.decoder() is not decoder or (self.deltas() if self.deltas else None) is not deltas:
            return False
        if prefix is None or self.prefix is None:
            return prefix is None and self.prefix is None
        return prefix.shape == self.prefix.shape and np.array_equal(np.asarray(prefix), np.asarray(self.prefix))

    def common(self, tokens: torch.Tensor) -> int:
        """How many leading tokens ``tokens`` shares with this entry."""
        n = min(len(tokens), len(self.tokens))
        differ = (tokens[:n] != self.tokens[:n]).nonzero()
        return int(differ[0]) if len(differ) else n


def _ref(value: Any) -> weakref.ref[Any] | None:
    return None if value is None else weakref.ref(value)


class PrefixCache:
    """Prefilled prompts' keys and values, at most ``max_bytes`` of them."""

    def __init__(self, max_bytes: int = 128 * 2**20, min_tokens: int = 16) -> None:
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # most recently used last
        self._next = 0
        self.nbytes = 0
        self.hits = self.misses = self.reused_tokens = 0

    def restore(self, cache: KVCache, decoder: Any, deltas: Any, tokens: torch.Tensor, prefix: Any) -> int:
        """Copy the longest cached start of ``tokens`` into the empty ``cache`` (setting its length); how
        many of them it covers (0: prefill them all, with the soft prompt)."""
        best, covered = None, 0
        for key, entry in list(self._entries.items()):
            if entry.decoder() is None:
                self._drop(key)
            elif entry.owned_by(decoder, deltas, prefix) and (n := entry.common(tokens)) > covered:
                best, covered = key, n
        if best is None or covered < self.min_tokens:
            self.misses += 1
            return 0
        entry = self._entries[best]
        self._entries.move_to_end(best)
        positions = (0 if prefix is None else int(prefix.shape[0])) + covered
        cache.keys[..., :positions] = entry.keys[..., :positions]
        cache.values[..., :positions, :] = entry.values[..., :positions, :]
        cache.length = positions
        self.hits, self.reused_tokens = self.hits + 1, self.reused_tokens + covered
        return covered

    def store(self, cache: KVCache, decoder: Any, deltas: Any, tokens: torch.Tensor, prefix: Any) -> None:
        """Keep the keys and values ``cache`` holds for this just-prefilled prompt (a copy), unless an
        entry already covers it or it is too short or too large to be worth keeping."""
        positions = cache.length
        if len(tokens) < self.min_tokens or self.max_bytes <= 0:
            return
        for entry in self._entries.values():
            if entry.owned_by(decoder, deltas, prefix) and entry.common(tokens) == len(tokens):
                return
        keys = cache.keys[..., :positions].clone()
        values = cache.values[..., :positions, :].clone()
        entry = _Entry(weakref.ref(decoder), _ref(deltas), prefix, tokens.clone(), keys, values)
        if entry.nbytes > self.max_bytes:
            return
        self._entries[self._next] = entry
        self._next += 1
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes

    def __len__(self) -> int:
        return len(self._entries)
