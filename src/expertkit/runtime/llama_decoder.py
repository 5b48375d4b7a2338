"""A lean decoder for Llama-family models (Llama, Mistral-style, Qwen2, Qwen3) at batch size 1.

Why by hand: at batch size 1 on a CPU, transformers' forward spends more time in Python and
small-tensor bookkeeping (cache objects, masks, hooks, generic attention dispatch) than in the
matrix products that bound decoding. This module runs the same weights (an adapter merged in)
through the minimum of operations: fused QKV and gate/up projections, weights pre-packed for
oneDNN when the CPU build has it, a KV cache preallocated per generation (never shared between
generations), cos/sin looked up from a table the model's own rotary module computed (so RoPE
scaling is the model's), and a single-query attention written as two small matmuls.
Prefill uses PyTorch's SDPA. Architectures it does not know go through transformers instead
(:mod:`expertkit.runtime.hf_decoder`); :func:`lean_supported` says which.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf

from expertkit.runtime.llama_weights import (
    AnyLinear,
    Layer,
    Weights,
    linear_maker,
    module_weights,
    read_layer,
    required,
)
from expertkit.runtime.lora_deltas import ExpertDeltas, RowGroup, add_deltas
from expertkit.runtime.quantize import Quantize

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def lean_supported(config: Any) -> bool:
    return (
        config.model_type in SUPPORTED_TYPES
        and getattr(config, "hidden_act", "silu") == "silu"
        and not getattr(config, "use_sliding_window", False)
        and not getattr(config, "mlp_bias", False)
    )


@dataclass
class KVCache:
    keys: torch.Tensor  # [layers, kv_heads, head_dim, capacity]: stored transposed, so a query's
    # scores are one plain matrix product (about 2x faster than through a transposed view)
    values: torch.Tensor  # [layers, kv_heads, capacity, head_dim]
    length: int = 0

    @property
    def capacity(self) -> int:
        return int(self.values.shape[-2])


class LeanDecoder:
    """Prefill and single-token steps over a merged HF causal LM's weights (read once), optionally
    with weight-only int8/int4 projections (the embedding table stays as it is: one row is read)."""

    def __init__(self, model: Any, quantize: Quantize = "none") -> None:
        """From a transformers model (an adapter merged into it or not)."""
        self._build(module_weights(model), model.config, model.model.rotary_emb, quantize)

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], config: Any, rotary: Any, quantize: Quantize = "none"
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
        self._cos = self._sin = self._cos32 = self._sin32 = torch.empty(0)
        self._eye = self._swap = torch.empty(0)
        self._zero = torch.zeros(())  # baddbmm's ignored input (beta=0)
        self._norms32: list[tuple[torch.Tensor | None, ...]] = []
        self._final_norm32 = self.norm

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

    def _rope_table(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions 0..length-1 and beyond, in the decode dtype (from fp32, as
        transformers rounds them); the fp32 tables are kept for :meth:`_rotation`."""
        if self._cos.shape[0] < length:
            size = min(max(length, 2 * self._cos.shape[0], 256), self.max_positions)
            positions = torch.arange(size)[None]
            cos, sin = self.rotary(torch.zeros(1, dtype=torch.float32), positions)
            self._cos32, self._sin32 = cos[0].float(), sin[0].float()
            self._cos, self._sin = self._cos32.to(self.dtype), self._sin32.to(self.dtype)
        return self._cos, self._sin

    def _rotation(self, position: int) -> torch.Tensor:
        """RoPE at ``position`` as a ``[head_dim, head_dim]`` fp32 matrix R (``x·R = x·cos +
        rotate_half(x)·sin``), built once per step: every layer's q and k rotate in one product."""
        self._rope_table(position + 1)
        if self._swap.shape[0] != self.head_dim:
            half, eye = self.head_dim // 2, torch.eye(self.head_dim)
            self._eye, self._swap = eye, torch.cat([-eye[half:], eye[:half]]).T.contiguous()
        return self._eye * self._cos32[position] + self._swap * self._sin32[position]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return nnf.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _attend(self, q: torch.Tensor, cache: KVCache, index: int, end: int) -> torch.Tensor:
        keys, values = cache.keys[index, :, :, :end], cache.values[index, :, :end]
        tokens = q.shape[2]
        if tokens > 1:  # prefill from an empty cache: causal over the prompt
            out = nnf.scaled_dot_product_attention(
                q.float(), keys.transpose(-1, -2)[None], values[None], is_causal=True, enable_gqa=True, scale=self.scale
            )
            return out.to(self.dtype).transpose(1, 2).reshape(1, tokens, self.heads * self.head_dim)
        grouped = q.view(self.kv_heads, self.heads // self.kv_heads, self.head_dim).float()
        scores = torch.matmul(grouped, keys) * self.scale
        out = torch.matmul(torch.softmax(scores, dim=-1), values).to(self.dtype)
        return out.reshape(1, 1, self.heads * self.head_dim)

    @staticmethod
    def _project(linear: AnyLinear, x: torch.Tensor, groups: list[RowGroup], index: int, name: str) -> torch.Tensor:
        """The shared projection of ``x``, plus each expert group's LoRA delta on its rows."""
        y = linear(x)
        return add_deltas(y, x, groups, index, name) if groups else y

    def _block(
        self, layer: Layer, index: int, x: torch.Tensor, cache: KVCache, cos: Any, sin: Any, groups: list[RowGroup]
    ) -> torch.Tensor:
        tokens, start = x.shape[1], cache.length
        h, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self._project(layer.qkv, self._norm(x, layer.norm1), groups, index, "qkv").split([h, kv, kv], dim=-1)
        q = q.view(1, tokens, self.heads, self.head_dim)
        k = k.view(1, tokens, self.kv_heads, self.head_dim)
        if layer.q_norm is not None and layer.k_norm is not None:
            q, k = self._norm(q, layer.q_norm), self._norm(k, layer.k_norm)
        q = self._rope(q.transpose(1, 2), cos, sin)
        k = self._rope(k.transpose(1, 2), cos, sin)
        cache.keys[index, :, :, start : start + tokens] = k[0].transpose(-1, -2)
        cache.values[index, :, start : start + tokens] = v.view(tokens, self.kv_heads, self.head_dim).transpose(0, 1)
        x = x + self._project(layer.out, self._attend(q, cache, index, start + tokens), groups, index, "out")
        return self._mlp(layer, index, x, groups)

    def _mlp(self, layer: Layer, index: int, x: torch.Tensor, groups: list[RowGroup]) -> torch.Tensor:
        gate_up = self._project(layer.gate_up, self._norm(x, layer.norm2), groups, index, "gate_up")
        gate, up = gate_up.split([self.intermediate, self.intermediate], dim=-1)
        return x + self._project(layer.down, nnf.silu(gate) * up, groups, index, "down")

    @torch.inference_mode()
    def forward(
        self, cache: KVCache, ids: torch.Tensor, prefix: torch.Tensor | None = None, deltas: ExpertDeltas | None = None
    ) -> torch.Tensor:
        """Logits (fp32, ``[vocab]``) after feeding ``ids`` (and, first, ``prefix`` embeddings), with
        an expert's LoRA ``deltas`` added to the shared weights when given."""
        deltas = deltas if deltas is not None else self.deltas
        groups = [RowGroup(torch.zeros(1, dtype=torch.long), deltas)] if deltas is not None else []
        if prefix is None and ids.numel() == 1:
            return self._step(cache, ids, groups)
        x = self.embed[ids][None]
        if prefix is not None:
            x = torch.cat([prefix.to(self.dtype)[None], x], dim=1)
        tokens, start = x.shape[1], cache.length
        if start + tokens > cache.capacity:
            raise ValueError(f"context of {start + tokens} tokens exceeds the cache ({cache.capacity})")
        cos_table, sin_table = self._rope_table(start + tokens)
        cos, sin = cos_table[start : start + tokens], sin_table[start : start + tokens]
        for index, layer in enumerate(self.layers):
            x = self._block(layer, index, x, cache, cos, sin, groups)
        cache.length += tokens
        return self.head(self._norm(x[:, -1:], self.norm))[0, -1].float()

    # One token at a time (decoding after the prompt): the same arithmetic in about half the tensor
    # operations of the block path. At batch size 1 a CPU spends as long on the fixed cost of each
    # small operation as on reading the weights, so rows stay 2-D (no reshapes around the kernels),
    # q and k rotate together in one product with the step's RoPE matrix, and the key cache is
    # stored transposed for single-query attention. The residual stream stays in fp32 whatever the
    # decode dtype (transformers keeps it in bf16): the kernels still read bf16 or quantised weights,
    # an expert's fp32 deltas add without casts, and bf16 decoding stays closer to fp32's tokens.

    def _step(self, cache: KVCache, ids: torch.Tensor, groups: list[RowGroup]) -> torch.Tensor:
        if cache.length + 1 > cache.capacity:
            raise ValueError(f"context of {cache.length + 1} tokens exceeds the cache ({cache.capacity})")
        rotation = self._rotation(cache.length)
        norms = self._fp32_norms()
        x = self.embed[ids].float()  # [1, hidden]
        for index, layer in enumerate(self.layers):
            x = self._step_block(layer, index, x, (cache, rotation, norms[index]), groups)
        cache.length += 1
        return self.head.mm(self._norm(x, self._final_norm32).to(self.dtype))[0].float()

    def _fp32_norms(self) -> list[tuple[torch.Tensor | None, ...]]:
        """Each layer's norm weights in fp32, made once (and the final norm's)."""
        if not self._norms32:
            for layer in self.layers:
                norms = (layer.norm1, layer.norm2, layer.q_norm, layer.k_norm)
                self._norms32.append(tuple(t.float() if t is not None else None for t in norms))
            self._final_norm32 = self.norm.float()
        return self._norms32

    def _rows(self, linear: AnyLinear, x: torch.Tensor, groups: list[RowGroup], index: int, name: str) -> torch.Tensor:
        """``x @ W.T`` with ``x`` in the decode dtype for the kernel, plus each expert group's fp32 delta
        on its rows (the sum is then fp32)."""
        y = linear.mm(x if x.dtype == self.dtype else x.to(self.dtype))
        for group in groups:
            delta = group.deltas.layers[index].get(name)
            if delta is None:
                continue
            if group.rows.numel() == y.shape[0]:
                y = y + delta(x)
            else:  # a mixed batch: this expert's rows only
                y = y.float().index_add_(0, group.rows, delta(x.index_select(0, group.rows)))
        return y

    def _step_block(
        self, layer: Layer, index: int, x: torch.Tensor, step: tuple[KVCache, torch.Tensor, Any], groups: list[RowGroup]
    ) -> torch.Tensor:
        (cache, rotation, (norm1, norm2, q_norm, k_norm)), position = step, step[0].length
        heads, h, kv = self.heads, self.heads * self.head_dim, self.kv_heads * self.head_dim
        qkv = self._rows(layer.qkv, self._norm(x, norm1), groups, index, "qkv")
        qk = qkv[:, : h + kv].float().view(heads + self.kv_heads, self.head_dim)
        if q_norm is not None and k_norm is not None:
            qk = torch.cat([self._norm(qk[:heads], q_norm), self._norm(qk[heads:], k_norm)])
        qk = torch.mm(qk, rotation)  # [heads + kv_heads, head_dim], fp32 like the cache
        keys, values = cache.keys[index], cache.values[index]
        keys[:, :, position] = qk[heads:]
        values[:, position] = qkv[:, h + kv :].view(self.kv_heads, self.head_dim)
        q = qk[:heads].view(self.kv_heads, heads // self.kv_heads, self.head_dim)
        scores = torch.baddbmm(self._zero, q, keys[:, :, : position + 1], beta=0, alpha=self.scale)
        out = torch.bmm(torch.softmax(scores, dim=-1), values[:, : position + 1]).view(1, h)
        x = x + self._rows(layer.out, out, groups, index, "out")
        return self._rows_mlp(layer, index, x, norm2, groups)

    def _rows_mlp(
        self, layer: Layer, index: int, x: torch.Tensor, norm: torch.Tensor, groups: list[RowGroup]
    ) -> torch.Tensor:
        gate_up = self._rows(layer.gate_up, self._norm(x, norm), groups, index, "gate_up")
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return x + self._rows(layer.down, nnf.silu(gate) * up, groups, index, "down")

    # Batched decoding: several sequences of one expert step together. Their caches live in one
    # tensor, one slot per sequence, active sequences in slots 0..B-1 (the scheduler keeps them
    # compact), so every projection is one [B, hidden] matrix product instead of B vector products:
    # on a memory-bound CPU, B tokens cost little more than one.

    def new_batch_cache(self, slots: int, capacity: int) -> KVCache:
        shape = (len(self.layers), slots, self.kv_heads, min(capacity, self.max_positions), self.head_dim)
        keys = torch.zeros(shape[:3] + shape[:2:-1], dtype=torch.float32)
        return KVCache(keys, torch.zeros(shape, dtype=torch.float32))

    @staticmethod
    def slot_view(batch: KVCache, slot: int) -> KVCache:
        """Slot ``slot`` of a batch cache as a single-sequence cache (a view: writes go through)."""
        return KVCache(batch.keys[:, slot], batch.values[:, slot])

    @staticmethod
    def move_slot(batch: KVCache, source: int, target: int) -> None:
        batch.keys[:, target] = batch.keys[:, source]
        batch.values[:, target] = batch.values[:, source]

    def _batch_block(
        self, layer: Layer, index: int, x: torch.Tensor, step: tuple[Any, ...], groups: list[RowGroup]
    ) -> torch.Tensor:
        """The single-token step's arithmetic for B rows at their own positions (``lengths``): each
        row's RoPE matrix, its key and value written at its position, attention masked past it."""
        batch, rotations, (norm1, norm2, q_norm, k_norm), lengths, slots, beyond = step
        rows, heads, h = x.shape[0], self.heads, self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        qkv = self._rows(layer.qkv, self._norm(x, norm1), groups, index, "qkv")
        qk = qkv[:, : h + kv].float().view(rows, heads + self.kv_heads, self.head_dim)
        if q_norm is not None and k_norm is not None:
            qk = torch.cat([self._norm(qk[:, :heads], q_norm), self._norm(qk[:, heads:], k_norm)], dim=1)
        qk = torch.bmm(qk, rotations)  # [B, heads + kv_heads, head_dim]
        keys, values = batch.keys[index], batch.values[index]  # [slots, kv, D, capacity], [slots, kv, capacity, D]
        keys[slots, :, :, lengths] = qk[:, heads:]
        values[slots, :, lengths] = qkv[:, h + kv :].float().view(rows, self.kv_heads, self.head_dim)
        span = beyond.shape[-1]
        q = qk[:, :heads].reshape(rows, self.kv_heads, heads // self.kv_heads, self.head_dim)
        scores = torch.matmul(q, keys[:rows, :, :, :span]).mul_(self.scale).masked_fill_(beyond, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), values[:rows, :, :span]).reshape(rows, h)
        x = x + self._rows(layer.out, out, groups, index, "out")
        return self._rows_mlp(layer, index, x, norm2, groups)

    def with_deltas(self, deltas: ExpertDeltas) -> LeanDecoder:
        """This decoder's weights (shared, not copied) with an expert's LoRA added as deltas on every
        row: a quantised base model keeps an adapter whose changes are finer than its grid."""
        view = copy.copy(self)
        view.deltas = deltas
        return view

    def _own_groups(self, rows: int) -> list[RowGroup]:
        return [RowGroup(torch.arange(rows), self.deltas)] if self.deltas is not None else []

    @torch.inference_mode()
    def step_batch(
        self, batch: KVCache, tokens: torch.Tensor, lengths: torch.Tensor, groups: list[RowGroup] | None = None
    ) -> torch.Tensor:
        """Logits ``[B, vocab]`` after feeding one token to each of the sequences in slots 0..B-1;
        ``lengths[b]`` is how many positions slot ``b`` already holds (its new token's position).
        ``groups``: rows of experts decoding as LoRA deltas over these (shared, unmerged) weights."""
        capacity = int(batch.values.shape[3])  # [layers, slots, kv_heads, capacity, head_dim]
        span = int(lengths.max()) + 1
        if span > capacity:
            raise ValueError(f"a sequence exceeds the batch cache ({capacity} positions)")
        self._rotation(span - 1)  # the tables and the swap matrix reach every row's position
        rotations = self._eye * self._cos32[lengths][:, None, :] + self._swap * self._sin32[lengths][:, None, :]
        beyond = (torch.arange(span)[None, :] > lengths[:, None])[:, None, None, :]
        x = self.embed[tokens].float()  # [B, hidden]
        groups = groups or self._own_groups(x.shape[0])
        norms, slots = self._fp32_norms(), torch.arange(x.shape[0])
        for index, layer in enumerate(self.layers):
            x = self._batch_block(layer, index, x, (batch, rotations, norms[index], lengths, slots, beyond), groups)
        return self.head.mm(self._norm(x, self._final_norm32).to(self.dtype)).float()
