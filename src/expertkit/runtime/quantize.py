"""Weight-only int8 and int4 linears for the lean decoder (activations in the decode dtype).

A decode step at batch size 1 reads every weight once, so a CPU bound by memory decodes faster
with fewer bytes per token: int8 halves them against bf16, int4 quarters them. The kernels are
PyTorch's own CPU ops (``aten._weight_int8pack_mm``: int8 weights, one scale per output channel;
``aten._weight_int4pack_mm_for_cpu``: 4-bit weights packed two to a byte, a scale and a zero point
per group of input channels), the ones torchao's weight-only configs call on CPU. torchao itself
would add a dependency for the same kernels behind a tensor subclass the lean decoder does not
need, so the quantisation here is the few lines of round-to-nearest arithmetic those kernels
expect. ``benchmarks/decode_speed.py`` measures how far these kernels get. A hand-written int4 x int8
kernel (llama.cpp's Q4_1 x Q8 arithmetic with AVX512-VNNI dot products, loaded with ctypes) was
tried here: 1.1-1.5x PyTorch's int4 kernel on weights in cache, and no faster in a decode step, whose
cost is the fixed cost of PyTorch's ~1,000 operators around it. The native decoder
(:mod:`expertkit.runtime.native_decoder`) runs the whole step in C instead.

The engine quantises the base model once; a LoRA or DoRA expert keeps its change as fp32 deltas on
top (rounded after a merge, a low-rank change smaller than the grid step disappears), and only
experts that must merge (IA³, LoKr) are quantised after their exact merge.
"""

from __future__ import annotations

import torch

from expertkit.runtime.options import Quantize

INT4_GROUP = 32  # input channels per scale/zero pair: small groups keep a 135M model's accuracy


class Int8Linear:
    """``x @ W.T (+ b)`` with W in int8 and one symmetric scale per output channel."""

    bits = 8

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        w = weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.weight = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scales = scales.to(dtype)
        self.bias = bias.detach().to(dtype).clone() if bias is not None else None
        self.packed = None  # the Linear interface

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.mm(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` already ``[rows, in]``."""
        out = torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)
        return out if self.bias is None else out + self.bias

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.weight, self.scales, self.bias) if t is not None]


class Int4Linear:
    """``x @ W.T (+ b)`` with W in 4 bits, asymmetric per group of :data:`INT4_GROUP` input channels."""

    bits = 4

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        out_features, in_features = weight.shape
        groups = weight.detach().float().reshape(out_features, in_features // INT4_GROUP, INT4_GROUP)
        low, high = groups.amin(dim=2, keepdim=True), groups.amax(dim=2, keepdim=True)
        scales = (high - low).clamp(min=1e-8) / 15.0
        # The kernel dequantises q to (q - 8) * scale + zero, so zero is the group's value at q = 8.
        zeros = low + scales * 8
        codes = torch.round((groups - low) / scales).clamp(0, 15).to(torch.int32).reshape(out_features, in_features)
        self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        pairs = torch.cat([scales, zeros], dim=2)  # [out, groups, 2]
        self.scales_and_zeros = pairs.transpose(0, 1).contiguous().to(torch.bfloat16)  # [groups, out, 2]
        self.bias = bias.detach().to(dtype).clone() if bias is not None else None
        self.dtype, self.packed = dtype, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.mm(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` already ``[rows, in]``; the kernel takes and gives bf16, cast only when the decode
        dtype is another."""
        if x.dtype != torch.bfloat16:
            x = x.to(torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight, INT4_GROUP, self.scales_and_zeros)
        if self.dtype != torch.bfloat16:
            out = out.to(self.dtype)
        return out if self.bias is None else out + self.bias

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.weight, self.scales_and_zeros, self.bias) if t is not None]


def quantizable(weight: torch.Tensor, mode: Quantize) -> bool:
    """Whether ``weight`` fits ``mode``'s kernel (int4 needs whole groups of input channels)."""
    if mode == "int4":
        return weight.shape[1] % INT4_GROUP == 0 and weight.shape[0] % 8 == 0
    return mode == "int8"


def quantize_linear(weight: torch.Tensor, bias: torch.Tensor | None, mode: Quantize) -> Int8Linear | Int4Linear:
    """``weight`` (and ``bias``) as a weight-only quantised linear computing in ``weight.dtype``."""
    if mode == "int8":
        return Int8Linear(weight, bias, weight.dtype)
    if mode == "int4":
        return Int4Linear(weight, bias, weight.dtype)
    raise ValueError(f"no quantised linear for {mode!r}")
