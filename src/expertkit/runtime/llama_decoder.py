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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf

from expertkit.errors import ModelLoadError
from expertkit.runtime.lora_deltas import ExpertDeltas, RowGroup, add_deltas
from expertkit.runtime.quantize import Int4Linear, Int8Linear, Quantize, quantizable, quantize_linear

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3")
MODEL_HINT = "check the model directory: its safetensors must hold every weight its config.json names"


def lean_supported(config: Any) -> bool:
    return (
        config.model_type in SUPPORTED_TYPES
        and getattr(config, "hidden_act", "silu") == "silu"
        and not getattr(config, "use_sliding_window", False)
        and not getattr(config, "mlp_bias", False)
    )


_PACKING_CHECKED: dict[tuple[tuple[int, ...], torch.dtype], bool] = {}


def _packing_works(weight: torch.Tensor, packed: torch.Tensor) -> bool:
    """Whether oneDNN's packed product matches the plain one, checked once per shape and dtype."""
    key = (tuple(weight.shape), weight.dtype)
    if key not in _PACKING_CHECKED:
        probe = torch.randn(1, weight.shape[1], dtype=weight.dtype)
        expected = nnf.linear(probe, weight)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
        _PACKING_CHECKED[key] = torch.allclose(got.float(), expected.float(), rtol=2e-2, atol=2e-2)
    return _PACKING_CHECKED[key]


class Linear:
    """``x @ W.T (+ b)``, with W pre-packed for oneDNN on CPU when that works (about 2× on GEMV)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        # A private copy: the engine restores the model's weights after reading a merged adapter.
        self.weight, self.packed = weight.detach().clone().contiguous(), None
        self.bias = bias.detach().clone() if bias is not None else None
        if weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, 1)
                if _packing_works(self.weight, packed):
                    self.packed, self.weight = packed, torch.empty(0)  # the packed copy is all we need
            except (RuntimeError, AttributeError):
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return nnf.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], out.shape[-1])

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.weight, self.packed, self.bias) if t is not None]


AnyLinear = Linear | Int8Linear | Int4Linear
MakeLinear = Callable[[torch.Tensor, "torch.Tensor | None"], AnyLinear]


def linear_maker(quantize: Quantize) -> MakeLinear:
    """How the decoder builds its projections: as they are, or weight-only quantised."""

    def make(weight: torch.Tensor, bias: torch.Tensor | None = None) -> AnyLinear:
        if quantize != "none" and quantizable(weight, quantize):
            return quantize_linear(weight, bias, quantize)
        return Linear(weight, bias)

    return make


@dataclass
class Layer:
    norm1: torch.Tensor
    qkv: AnyLinear
    out: AnyLinear
    norm2: torch.Tensor
    gate_up: AnyLinear
    down: AnyLinear
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


Weights = Callable[[str], "torch.Tensor | None"]  # a weight by its transformers name, None if absent


def module_weights(model: Any) -> Weights:
    """A transformers model's weights by name (an adapter-wrapped module's base weight, merged or not)."""

    def get(name: str) -> torch.Tensor | None:
        path, _, attribute = name.rpartition(".")
        try:
            module = model.get_submodule(path)
        except AttributeError:
            return None
        module = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        tensor = getattr(module, attribute, None)
        return tensor.detach() if isinstance(tensor, torch.Tensor) else None

    return get


def _required(get: Weights, name: str) -> torch.Tensor:
    tensor = get(name)
    if tensor is None:
        raise ModelLoadError(f"the base model has no weight {name}", MODEL_HINT)
    return tensor


def _layer(get: Weights, prefix: str, make: MakeLinear) -> Layer:
    def weight(name: str) -> torch.Tensor:
        return _required(get, prefix + name)

    biases = [get(f"{prefix}self_attn.{p}_proj.bias") for p in "qkv"]
    q_norm, k_norm = get(prefix + "self_attn.q_norm.weight"), get(prefix + "self_attn.k_norm.weight")
    return Layer(
        norm1=weight("input_layernorm.weight").clone(),
        qkv=make(
            torch.cat([weight(f"self_attn.{p}_proj.weight") for p in "qkv"]),
            torch.cat([b for b in biases if b is not None]) if all(b is not None for b in biases) else None,
        ),
        out=make(weight("self_attn.o_proj.weight"), get(prefix + "self_attn.o_proj.bias")),
        norm2=weight("post_attention_layernorm.weight").clone(),
        gate_up=make(torch.cat([weight("mlp.gate_proj.weight"), weight("mlp.up_proj.weight")]), None),
        down=make(weight("mlp.down_proj.weight"), None),
        q_norm=q_norm.clone() if q_norm is not None else None,
        k_norm=k_norm.clone() if k_norm is not None else None,
    )


@dataclass
class KVCache:
    keys: torch.Tensor  # [layers, kv_heads, capacity, head_dim]
    values: torch.Tensor
    length: int = 0

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[2])


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
        self.layers = [_layer(get, f"model.layers.{i}.", make) for i in range(int(config.num_hidden_layers))]
        self.embed = _required(get, "model.embed_tokens.weight").clone()
        self.norm = _required(get, "model.norm.weight").clone()
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
        self._cos = self._sin = torch.empty(0)

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
        return KVCache(torch.zeros(shape, dtype=torch.float32), torch.zeros(shape, dtype=torch.float32))

    def _rope_table(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos.shape[0] < length:
            size = min(max(length, 2 * self._cos.shape[0], 256), self.max_positions)
            positions = torch.arange(size)[None]
            cos, sin = self.rotary(torch.zeros(1, dtype=self.dtype), positions)
            self._cos, self._sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        return self._cos, self._sin

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return nnf.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _attend(self, q: torch.Tensor, cache: KVCache, index: int, end: int) -> torch.Tensor:
        keys, values = cache.keys[index, :, :end], cache.values[index, :, :end]
        tokens = q.shape[2]
        if tokens > 1:  # prefill from an empty cache: causal over the prompt
            out = nnf.scaled_dot_product_attention(
                q.float(), keys[None], values[None], is_causal=True, enable_gqa=True, scale=self.scale
            )
            return out.to(self.dtype).transpose(1, 2).reshape(1, tokens, self.heads * self.head_dim)
        grouped = q.view(self.kv_heads, self.heads // self.kv_heads, self.head_dim).float()
        scores = torch.matmul(grouped, keys.transpose(-1, -2)) * self.scale
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
        cache.keys[index, :, start : start + tokens] = k[0]
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

    # Batched decoding: several sequences of one expert step together. Their caches live in one
    # tensor, one slot per sequence, active sequences in slots 0..B-1 (the scheduler keeps them
    # compact), so every projection is one [B, hidden] matrix product instead of B vector products:
    # on a memory-bound CPU, B tokens cost little more than one.

    def new_batch_cache(self, slots: int, capacity: int) -> KVCache:
        shape = (len(self.layers), slots, self.kv_heads, min(capacity, self.max_positions), self.head_dim)
        return KVCache(torch.zeros(shape, dtype=torch.float32), torch.zeros(shape, dtype=torch.float32))

    @staticmethod
    def slot_view(batch: KVCache, slot: int) -> KVCache:
        """Slot ``slot`` of a batch cache as a single-sequence cache (a view: writes go through)."""
        return KVCache(batch.keys[:, slot], batch.values[:, slot])

    @staticmethod
    def move_slot(batch: KVCache, source: int, target: int) -> None:
        batch.keys[:, target] = batch.keys[:, source]
        batch.values[:, target] = batch.values[:, source]

    def _batch_block(
        self,
        layer: Layer,
        index: int,
        x: torch.Tensor,
        batch: KVCache,
        step: tuple[torch.Tensor, Any, Any],
        groups: list[RowGroup],
    ) -> torch.Tensor:
        lengths, cos, sin = step
        rows = x.shape[0]
        h, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self._project(layer.qkv, self._norm(x, layer.norm1), groups, index, "qkv").split([h, kv, kv], dim=-1)
        q = q.view(rows, 1, self.heads, self.head_dim)
        k = k.view(rows, 1, self.kv_heads, self.head_dim)
        if layer.q_norm is not None and layer.k_norm is not None:
            q, k = self._norm(q, layer.q_norm), self._norm(k, layer.k_norm)
        q = self._rope(q.transpose(1, 2), cos, sin)  # [B, H, 1, D]
        k = self._rope(k.transpose(1, 2), cos, sin)  # [B, KV, 1, D]
        slots = torch.arange(rows)
        keys, values = batch.keys[index], batch.values[index]
        keys[slots, :, lengths] = k[:, :, 0].float()
        values[slots, :, lengths] = v.view(rows, self.kv_heads, self.head_dim).float()
        span = int(lengths.max()) + 1
        grouped = q.reshape(rows, self.kv_heads, self.heads // self.kv_heads, self.head_dim).float()
        scores = torch.matmul(grouped, keys[:rows, :, :span].transpose(-1, -2)) * self.scale
        beyond = torch.arange(span)[None, :] > lengths[:, None]
        scores = scores.masked_fill(beyond[:, None, None, :], float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), values[:rows, :, :span]).to(self.dtype)
        x = x + self._project(layer.out, out.reshape(rows, 1, h), groups, index, "out")
        return self._mlp(layer, index, x, groups)

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
        capacity = int(batch.keys.shape[3])  # [layers, slots, kv_heads, capacity, head_dim]
        if int(lengths.max()) >= capacity:
            raise ValueError(f"a sequence exceeds the batch cache ({capacity} positions)")
        x = self.embed[tokens][:, None]
        cos_table, sin_table = self._rope_table(int(lengths.max()) + 1)
        cos, sin = cos_table[lengths][:, None, None], sin_table[lengths][:, None, None]
        groups = groups or self._own_groups(x.shape[0])
        for index, layer in enumerate(self.layers):
            x = self._batch_block(layer, index, x, batch, (lengths, cos, sin), groups)
        return self.head(self._norm(x, self.norm))[:, 0].float()
