"""The lean decoder's weights: its projections (plain, oneDNN-packed or weight-only quantised) and a
transformer layer's tensors read by their transformers names, from a loaded model or from its files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf

from expertkit.errors import ModelLoadError
from expertkit.runtime.options import Quantize
from expertkit.runtime.quantize import Int4Linear, Int8Linear, quantizable, quantize_linear

MODEL_HINT = "check the model directory: its safetensors must hold every weight its config.json names"


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
        # Private copies: the engine restores the model's weights after reading a merged adapter. The
        # packed weight is one already (oneDNN's own layout), so the plain one is copied only if kept.
        weight, self.packed = weight.detach().contiguous(), None
        self.bias = bias.detach().clone() if bias is not None else None
        if weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
                self.packed = packed if _packing_works(weight, packed) else None
            except (RuntimeError, AttributeError):
                self.packed = None
        self.weight = torch.empty(0) if self.packed is not None else weight.clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return nnf.linear(x, self.weight, self.bias)
        return self.mm(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` already ``[rows, in]``: one kernel call, nothing reshaped (the single-token step)."""
        if self.packed is None:
            return nnf.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

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


def required(get: Weights, name: str) -> torch.Tensor:
    tensor = get(name)
    if tensor is None:
        raise ModelLoadError(f"the base model has no weight {name}", MODEL_HINT)
    return tensor


def read_layer(get: Weights, prefix: str, make: MakeLinear) -> Layer:
    def weight(name: str) -> torch.Tensor:
        return required(get, prefix + name)

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
