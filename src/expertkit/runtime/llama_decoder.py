"""A lean decoder for Llama-family models (Llama, Mistral-style, Qwen2, Qwen3), one sequence or a batch.

Why by hand: at batch size 1 on a CPU, transformers' forward spends more time in Python and
small-tensor bookkeeping (cache objects, masks, hooks, generic attention dispatch) than in the
matrix products that bound decoding. This module runs the same weights (an adapter merged in, or
an expert's LoRA beside them as deltas) through the minimum of operations: fused QKV and gate/up
projections on rows of a 2-D stream (no reshapes around the kernels), weights pre-packed for oneDNN
or weight-only quantised, q and k rotated together by one product with their position's RoPE
matrix (built from the model's own rotary module, so RoPE scaling is the model's), a KV cache
preallocated per generation (never shared between generations) with keys stored transposed, and a
single-query attention written as two small products; a prompt goes through PyTorch's SDPA.

The residual stream is fp32 whatever the decode dtype (transformers keeps it in the model's dtype):
the kernels still read bf16 or quantised weights, an expert's fp32 deltas add without casts, and
bf16 decoding follows fp32's greedy tokens far longer (``benchmarks/decode_speed.py`` counts them).
Architectures it does not know go through transformers instead (:mod:`expertkit.runtime.hf_decoder`);
:func:`lean_supported` says which.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf

from expertkit.runtime.batch_attention import BatchAttention, batch_attention
from expertkit.runtime.delta_rows import DeltaStacks, RowDeltas
from expertkit.runtime.llama_weights import (
    AnyLinear,
    Layer,
    Weights,
    linear_maker,
    module_weights,
    read_layer,
    required,
)
from expertkit.runtime.lora_deltas import ExpertDeltas, RowGroup
from expertkit.runtime.options import Quantize

# Prompt tokens whose RoPE matrices exist at once: a longer prompt is rotated in chunks of this many,
# so memory stays at ROPE_CHUNK x head_dim^2 fp32 (16 MB at head_dim 128) instead of growing with the
# prompt (2 GB for 32k tokens). Each token's product is the same in any chunk, so chunks change no bit.
ROPE_CHUNK = 256


@dataclass
class KVCache:
    keys: torch.Tensor  # [layers, kv_heads, head_dim, capacity]: stored transposed, so a query's
    # scores are one plain matrix product (about 2x faster than through a transposed view)
    values: torch.Tensor  # [layers, kv_heads, capacity, head_dim]
    length: int = 0

    @property
    def capacity(self) -> int:
        return int(self.values.shape[-2])


@dataclass
class PromptRows:
    """A joining sequence's prompt tokens fed as extra rows of a batch step (prefill beside decoding):
    ``ids`` of cache slot ``slot`` at positions ``start`` onwards. They attend causally to the slot's
    cache and to each other; the step returns no logits for them."""

    slot: int
    start: int
    ids: torch.Tensor

    def causal(self) -> torch.Tensor:
        """``[len(ids), start + len(ids)]``: which cached positions each of these rows attends to."""
        end = self.start + len(self.ids)
        return torch.arange(end)[None, :] <= torch.arange(self.start, end)[:, None]


class LeanDecoder:
    """Prefill and single-token steps over a merged HF causal LM's weights (read once), optionally
    with weight-only int8/int4 projections (the embedding table stays as it is: one row is read)."""

    def __init__(self, model: Any, quantize: Quantize = "none") -> None:
        """From a transformers model (an adapter merged into it or not)."""
        self._build(module_weights(model), model.config, model.model.rotary_emb, quantize)

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], config: Any, rotary: Any, quantize: Quantize = "none"
    ) -> LeanDecoder:
        """From the model's tensors by name (read from its files), its config and a rotary table maker."""
        decoder = cls.__new__(cls)
        decoder._build(tensors.get, config, rotary, quantize)
        return decoder

    def _build(self, get: Weights, config: Any, rotary: Any, quantize: Quantize) -> None:
        make = linear_maker(quantize)
        self.quantize = quantize
        self.layers = [read_layer(get, f"model.layers.{i}.", make) for i in range(int(config.num_hidden_layers))]
        self.embed = required(get, "model.embed_tokens.weight").clone()
        self.norm = required(get, "model.norm.weight").clone()
        head = get("lm_head.weight")
        if head is None and not getattr(config, "tie_word_embeddings", False):
            raise ValueError("the model has no lm_head.weight and does not tie it to the embeddings")
        self.head = make(head if head is not None else self.embed, None)  # tied embeddings: no lm_head tensor
        self.eps = float(config.rms_norm_eps)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.scale = self.head_dim**-0.5  # as transformers' Llama/Qwen attention scales
        self.intermediate = int(config.intermediate_size)
        self.max_positions = int(config.max_position_embeddings)
        self.rotary = rotary
        self.deltas: ExpertDeltas | None = None  # an expert's LoRA kept unmerged (see with_deltas)
        self.dtype = self.embed.dtype
        self._cos32 = self._sin32 = torch.empty(0)
        self._eye = self._swap = torch.empty(0)
        self._zero = torch.zeros(())  # baddbmm's ignored input (beta=0)
        self._stacks = DeltaStacks()  # mixed batches' experts' factors, stacked (kept per set of experts)
        # The norm weights in fp32, for the fp32 stream (per layer: input, post-attention, q, k).
        self._norms32 = [
            tuple(t.float() if t is not None else None for t in (x.norm1, x.norm2, x.q_norm, x.k_norm))
            for x in self.layers
        ]
        self._final_norm32 = self.norm.float()

    def nbytes(self) -> int:
        """Bytes of the weights this decoder holds (its private copy of the model's; for a view made
        by :meth:`with_deltas`, only the deltas: the weights are the base decoder's)."""
        if self.deltas is not None:
            return self.deltas.nbytes()
        linears = [self.head] + [m for layer in self.layers for m in (layer.qkv, layer.out, layer.gate_up, layer.down)]
        norms = [t for layer in self.layers for t in (layer.norm1, layer.norm2, layer.q_norm, layer.k_norm)]
        tensors = [self.embed, self.norm, *norms] + [t for m in linears for t in m.tensors()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def new_cache(self, capacity: int) -> KVCache:
        """A fresh cache for one generation of at most ``capacity`` positions."""
        shape = (len(self.layers), self.kv_heads, min(capacity, self.max_positions), self.head_dim)
        # fp32: single-query attention reads the whole cache every step; no per-step up-cast.
        keys = torch.zeros(shape[:2] + shape[:1:-1], dtype=torch.float32)
        return KVCache(keys, torch.zeros(shape, dtype=torch.float32))

    def _rope_tables(self, needed: int) -> None:
        """The model's cos and sin tables (fp32, ``[positions, head_dim]``) for at least ``needed``
        positions, from its own rotary module (so its scaling is the model's)."""
        if self._cos32.shape[0] < needed:
            size = min(max(needed, 2 * self._cos32.shape[0], 256), self.max_positions)
            cos, sin = self.rotary(torch.zeros(1, dtype=torch.float32), torch.arange(size)[None])
            self._cos32, self._sin32 = cos[0].float().contiguous(), sin[0].float().contiguous()
            half, eye = self.head_dim // 2, torch.eye(self.head_dim)
            self._eye, self._swap = eye, torch.cat([-eye[half:], eye[:half]]).T.contiguous()

    def _rotations(self, positions: torch.Tensor) -> torch.Tensor:
        """RoPE at each of ``positions`` as ``[n, head_dim, head_dim]`` fp32 matrices R (``x·R = x·cos +
        rotate_half(x)·sin``)."""
        self._rope_tables(int(positions.max()) + 1)
        return self._eye * self._cos32[positions][:, None, :] + self._swap * self._sin32[positions][:, None, :]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return nnf.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _rows(
        self,
        linear: AnyLinear,
        x: torch.Tensor,
        deltas: RowDeltas | None,
        at: tuple[int, str],
        residual: torch.Tensor | None = None,
    ) -> Any:
        """``x @ W.T`` with ``x`` in the decode dtype for the kernel, plus each row's expert's fp32 delta
        (the sum is then fp32), rescaled per channel for a DoRA expert; then ``residual +`` that, when
        given (in the deltas' own pass in a mixed batch: one call fewer per block)."""
        y = linear.mm(x if x.dtype == self.dtype else x.to(self.dtype))
        if deltas is not None:
            return deltas.add(y, x, *at, residual)
        return y if residual is None else residual + y

    def _qkv(self, layer: Layer, index: int, x: torch.Tensor, norms: Any, groups: RowDeltas | None) -> Any:
        """q and k (``[rows, heads + kv_heads, head_dim]``, fp32, not yet rotated) and v (``[rows,
        kv_heads, head_dim]``) of the rows ``x``."""
        h, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        qkv = self._rows(layer.qkv, self._norm(x, norms[0]), groups, (index, "qkv"))
        qk = qkv[:, : h + kv].float().view(x.shape[0], self.heads + self.kv_heads, self.head_dim)
        if norms[2] is not None and norms[3] is not None:  # Qwen3: q and k normalised per head
            qk = torch.cat([self._norm(qk[:, : self.heads], norms[2]), self._norm(qk[:, self.heads :], norms[3])], 1)
        return qk, qkv[:, h + kv :].view(x.shape[0], self.kv_heads, self.head_dim)

    def _rest(self, layer: Layer, index: int, x: torch.Tensor, attended: torch.Tensor, norm: Any, groups: Any) -> Any:
        """The attention output projected and added, then the MLP block."""
        x = self._rows(layer.out, attended.reshape(x.shape[0], -1), groups, (index, "out"), x)
        gate_up = self._rows(layer.gate_up, self._norm(x, norm), groups, (index, "gate_up"))
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return self._rows(layer.down, nnf.silu(gate) * up, groups, (index, "down"), x)

    @torch.inference_mode()
    def forward(self, cache: KVCache, ids: Any, prefix: Any = None, deltas: ExpertDeltas | None = None) -> torch.Tensor:
        """Logits (fp32, ``[vocab]``) after feeding ``ids`` (a torch or numpy int array; and, first,
        ``prefix`` embeddings), with an expert's LoRA ``deltas`` added to the shared weights when given."""
        deltas = deltas if deltas is not None else self.deltas
        x = self.embed[torch.as_tensor(ids)].float()
        if prefix is not None:
            x = torch.cat([torch.as_tensor(prefix).float(), x])
        tokens, start, norms = x.shape[0], cache.length, self._norms32
        groups = self._row_deltas([RowGroup(torch.arange(tokens), deltas)] if deltas is not None else [], tokens)
        if start + tokens > cache.capacity:
            raise ValueError(f"context of {start + tokens} tokens exceeds the cache ({cache.capacity})")
        positions = torch.arange(start, start + tokens)
        # one prompt's matrices are built once for every layer; a longer one per chunk and layer
        rotations = self._rotations(positions) if tokens <= ROPE_CHUNK else positions
        block = self._step_block if tokens == 1 else self._prefill_block
        for index, layer in enumerate(self.layers):
            x = block(layer, index, x, (cache, rotations, norms[index]), groups)
        cache.length += tokens
        return self.head.mm(self._norm(x[-1:], self._final_norm32).to(self.dtype))[0].float()

    def _prefill_block(self, layer: Layer, index: int, x: torch.Tensor, step: Any, groups: Any) -> torch.Tensor:
        """Several tokens of one sequence: causal attention over the cache and them (SDPA)."""
        (cache, rotations, norms), start, tokens = step, step[0].length, x.shape[0]
        qk, v = self._qkv(layer, index, x, norms, groups)
        qk = self._rotate_prompt(qk, rotations)  # [tokens, heads + kv_heads, head_dim]
        keys, values = cache.keys[index], cache.values[index]
        keys[:, :, start : start + tokens] = qk[:, self.heads :].permute(1, 2, 0)
        values[:, start : start + tokens] = v.transpose(0, 1)
        end, q = start + tokens, qk[:, : self.heads].transpose(0, 1)[None]
        causal = torch.arange(end)[None, :] <= torch.arange(start, end)[:, None]  # a cache before: its prefix
        attended = nnf.scaled_dot_product_attention(
            q, keys[:, :, :end].transpose(-1, -2)[None], values[:, :end][None],
            attn_mask=None if start == 0 else causal, is_causal=start == 0, enable_gqa=True, scale=self.scale,
        )  # fmt: skip
        return self._rest(layer, index, x, attended[0].transpose(0, 1), norms[1], groups)

    def _rotate_prompt(self, qk: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """``qk`` rotated by its tokens' RoPE matrices (``rope``), or by positions (``rope`` 1-D) whose
        matrices are built ``ROPE_CHUNK`` tokens at a time."""
        if rope.dim() == 3:
            return torch.bmm(qk, rope)
        out = torch.empty_like(qk)
        for first in range(0, rope.shape[0], ROPE_CHUNK):
            part = slice(first, first + ROPE_CHUNK)
            torch.bmm(qk[part], self._rotations(rope[part]), out=out[part])
        return out

    def _step_block(self, layer: Layer, index: int, x: torch.Tensor, step: Any, groups: Any) -> torch.Tensor:
        """One token: single-query attention written as two small products."""
        (cache, rotations, norms), position = step, step[0].length
        qk, v = self._qkv(layer, index, x, norms, groups)
        qk = torch.mm(qk[0], rotations[0])  # [heads + kv_heads, head_dim], fp32 like the cache
        keys, values = cache.keys[index], cache.values[index]
        keys[:, :, position] = qk[self.heads :]
        values[:, position] = v[0]
        q = qk[: self.heads].view(self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        scores = torch.baddbmm(self._zero, q, keys[:, :, : position + 1], beta=0, alpha=self.scale)
        attended = torch.bmm(torch.softmax(scores, dim=-1), values[:, : position + 1])
        return self._rest(layer, index, x, attended, norms[1], groups)

    # Batched decoding: several sequences step together. Their caches live in one tensor, one slot
    # per sequence, active sequences in slots 0..B-1 (the scheduler keeps them compact), so every
    # projection is one [B, hidden] matrix product instead of B vector products: on a memory-bound
    # CPU, B tokens cost little more than one. Sequences of different experts can share a step when
    # their LoRA rides as deltas beside these (shared) weights (``groups``).

    def new_batch_cache(self, slots: int, capacity: int) -> KVCache:
        shape = (len(self.layers), slots, self.kv_heads, min(capacity, self.max_positions), self.head_dim)
        keys = torch.zeros(shape[:3] + shape[:2:-1], dtype=torch.float32)
        return KVCache(keys, torch.zeros(shape, dtype=torch.float32))

    @staticmethod
    def grown_batch_cache(batch: KVCache, capacity: int) -> KVCache:
        """A batch cache of ``capacity`` positions holding what ``batch`` holds (every slot's positions
        copied; the new ones zero, as a fresh cache's are: a masked position still multiplies a value)."""
        layers, slots, kv, dims, old = batch.keys.shape
        keys = torch.zeros(layers, slots, kv, dims, capacity, dtype=batch.keys.dtype)
        values = torch.zeros(layers, slots, kv, capacity, dims, dtype=batch.values.dtype)
        keys[..., :old] = batch.keys
        values[:, :, :, :old] = batch.values
        return KVCache(keys, values, batch.length)

    @staticmethod
    def slot_view(batch: KVCache, slot: int) -> KVCache:
        """Slot ``slot`` of a batch cache as a single-sequence cache (a view: writes go through)."""
        return KVCache(batch.keys[:, slot], batch.values[:, slot])

    @staticmethod
    def move_slot(batch: KVCache, source: int, target: int, positions: int) -> None:
        """Slot ``source``'s first ``positions`` keys and values into slot ``target`` (only those: a
        whole slot is the model's context length, megabytes per layer)."""
        batch.keys[:, target, ..., :positions] = batch.keys[:, source, ..., :positions]
        batch.values[:, target, :, :positions] = batch.values[:, source, :, :positions]

    def _batch_block(self, layer: Layer, index: int, x: torch.Tensor, step: Any, groups: Any) -> torch.Tensor:
        """One token for each of B rows at its own position (each row's key and value written at its
        position, attention masked past it), then any joining prompts' rows (``PromptRows``)."""
        batch, rotations, norms, lengths, beyond, (writes, prompts) = step
        rows = lengths.shape[0]
        qk, v = self._qkv(layer, index, x, norms, groups)
        qk = torch.bmm(qk, rotations)  # [rows + prompt rows, heads + kv_heads, head_dim]
        keys, values = batch.keys[index], batch.values[index]  # [slots, kv, D, capacity], [slots, kv, capacity, D]
        keys.view(-1).index_put_((writes[0],), qk[:, self.heads :].reshape(-1))  # each row at its slot, position
        values.view(-1, self.head_dim).index_copy_(0, writes[1], v.float().reshape(-1, self.head_dim))
        span, group = beyond.shape[-1], self.heads // self.kv_heads
        q = qk[:rows, : self.heads].reshape(rows, self.kv_heads, group, self.head_dim)
        scores = torch.matmul(q, keys[:rows, :, :, :span]).mul_(self.scale).masked_fill_(beyond, float("-inf"))
        attended = torch.empty(qk.shape[0], self.heads * self.head_dim)
        torch.matmul(torch.softmax(scores, dim=-1), values[:rows, :, :span], out=attended[:rows].view(q.shape))
        first = rows
        for prompt, hidden in prompts:  # each joining prompt: causal attention over its slot
            count, end = hidden.shape[0], hidden.shape[-1]
            q = qk[first : first + count, : self.heads].view(count, self.kv_heads, group, self.head_dim)
            q = q.permute(1, 0, 2, 3).reshape(self.kv_heads, count * group, self.head_dim)
            scores = torch.bmm(q, keys[prompt.slot, :, :, :end]).mul_(self.scale)
            scores = scores.view(self.kv_heads, count, group, end).masked_fill_(hidden, float("-inf"))
            out = torch.bmm(
                torch.softmax(scores, dim=-1).view(self.kv_heads, count * group, end), values[prompt.slot, :, :end]
            )
            attended[first : first + count] = (
                out.view(self.kv_heads, count, group, self.head_dim).transpose(0, 1).reshape(count, -1)
            )
            first += count
        return self._rest(layer, index, x, attended, norms[1], groups)

    def _cache_writes(self, batch: KVCache, slots: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Where every row's key and value go in one layer's cache, at its slot and position (the same
        for every layer, so each layer writes with one indexed copy each): flat indices of the key
        entries (stored transposed, one per head and dim) and row indices of the value vectors (one
        per head) in the cache viewed as ``[-1, head_dim]``."""
        _, _, kv, dims, capacity = batch.keys.shape  # [layers, slots, kv, D, capacity]
        inner = torch.arange(kv * dims)  # (head, dim) pairs, in the order of a row's kv_heads x head_dim
        keys = (slots * kv * dims * capacity + positions)[:, None] + inner[None, :] * capacity
        values = (slots * kv)[:, None] * capacity + torch.arange(kv)[None, :] * capacity + positions[:, None]
        return keys.reshape(-1), values.reshape(-1)

    def _row_deltas(self, groups: list[RowGroup], rows: int) -> RowDeltas | None:
        return RowDeltas(groups, rows, self._stacks) if groups else None

    def with_deltas(self, deltas: ExpertDeltas) -> LeanDecoder:
        """This decoder's weights (shared, not copied) with an expert's LoRA added as deltas on every
        row: a quantised base model keeps an adapter whose changes are finer than its grid."""
        view = copy.copy(self)
        view.deltas = deltas
        return view

    @torch.inference_mode()
    def step_batch(
        self,
        batch: KVCache,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        groups: list[RowGroup] | None = None,
        prompts: list[PromptRows] | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, vocab]`` after feeding one token to each of the sequences in slots 0..B-1;
        ``lengths[b]`` is how many positions slot ``b`` already holds (its new token's position).
        ``groups``: rows of experts decoding as LoRA deltas over these (shared, unmerged) weights
        (prompt rows numbered after the B rows, in order). ``prompts``: joining sequences' prompt
        tokens, written into their slots in the same step, before their slot's row."""
        prompts = prompts or []
        capacity = int(batch.values.shape[3])  # [layers, slots, kv_heads, capacity, head_dim]
        span = int(lengths.max()) + 1
        if span > capacity:
            raise ValueError(f"a sequence exceeds the batch cache ({capacity} positions)")
        rows = tokens.shape[0]
        ids = torch.cat([tokens, *(p.ids for p in prompts)])
        positions = torch.cat([lengths, *(torch.arange(p.start, p.start + len(p.ids)) for p in prompts)])
        slots = torch.cat([torch.arange(rows), *(torch.full((len(p.ids),), p.slot) for p in prompts)])
        x = self.embed[ids].float()  # [rows + prompt rows, hidden]
        if not groups and self.deltas is not None:
            groups = [RowGroup(torch.arange(x.shape[0]), self.deltas)]
        deltas = self._row_deltas(groups or [], x.shape[0])
        kernel = batch_attention() if batch.keys.dtype == torch.float32 else None
        if kernel is not None:
            self._rope_tables(int(positions.max()) + 1)
            for index, layer in enumerate(self.layers):
                x = self._native_batch_block(layer, index, x, (batch, kernel, slots, positions), deltas)
        else:
            rotations, norms = self._rotations(positions), self._norms32
            beyond = (torch.arange(span)[None, :] > lengths[:, None])[:, None, None, :]
            joining = (self._cache_writes(batch, slots, positions), [(p, ~p.causal()[:, None, :]) for p in prompts])
            for index, layer in enumerate(self.layers):
                step = (batch, rotations, norms[index], lengths, beyond, joining)
                x = self._batch_block(layer, index, x, step, deltas)
        return self.head.mm(self._norm(x[:rows], self._final_norm32).to(self.dtype)).float()

    def _native_batch_block(
        self, layer: Layer, index: int, x: torch.Tensor, step: tuple[KVCache, BatchAttention, Any, Any], groups: Any
    ) -> torch.Tensor:
        """:meth:`_batch_block` with its attention in one C call (:mod:`expertkit.runtime.batch_attention`):
        every row, a sequence's or a joining prompt's, attends to its slot's positions up to its own."""
        batch, kernel, slots, positions = step
        norms = self._norms32[index]
        qk, v = self._qkv(layer, index, x, norms, groups)
        cache = (batch.keys[index], batch.values[index])
        attended = kernel(qk, v.float(), (self._cos32, self._sin32), (slots, positions), cache, self.scale)
        return self._rest(layer, index, x, attended, norms[1], groups)
