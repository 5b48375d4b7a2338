"""Each row's expert's LoRA delta in one C call per projection (``native/delta_rows.c``), for batch
steps that mix experts.

Why by hand: :class:`expertkit.runtime.delta_rows.RowDeltas` adds the stacked experts' deltas with
five PyTorch operators per projection (casts, ``x·[A_1 … A_n]ᵀ``, a mask zeroing other experts'
ranks, ``·[B_1; …; B_n]ᵀ``). Profiled in ``expert-cli serve`` under 16 clients of two experts, they
were 12.7 % of every step, nearly all fixed costs of small operators; the C call reads each row's
own expert's ranks only. No library does a grouped low-rank product over rows on CPU (Punica and
S-LoRA's kernels are CUDA).

Built like the batch attention (:mod:`expertkit.runtime.batch_attention`): where it cannot be, or
with ``EXPERTKIT_BATCH_KERNELS=0`` (one switch for both batch-step kernels), :func:`delta_kernel`
is ``None`` and the PyTorch operators run.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import torch

from expertkit.runtime.native_build import DELTA_ROWS, batch_kernel_library

_P, _I = ctypes.c_void_p, ctypes.c_int
_KINDS = {torch.float32: 0, torch.bfloat16: 1}


class DeltaKernel:
    """``y + (x·Aᵀ ⊙ own ranks)·Bᵀ`` per row, fp32 out."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._call = lib.ek_delta_rows
        self._call.restype = _I
        types: list[Any] = [_P, _I, _I, _I, _P, _I, _I, _I]  # x, is bf16, row stride, in; y, is bf16, row stride, out
        types += [_P, _P, _I, _P, _P, _I, _P, _P]  # a, b_t, ranks, first, count, rows, y_out, scratch
        self._call.argtypes = types

    def fits(self, y: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether the C code can read these rows (2-D, rows contiguous, fp32 or bf16)."""
        return all(t.dim() == 2 and t.dtype in _KINDS and t.stride(1) == 1 for t in (x, y))

    def __call__(
        self, y: torch.Tensor, x: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor], spans: torch.Tensor
    ) -> torch.Tensor:
        """``y`` ``[rows, out]`` (the shared weight's output) plus each row's delta, from ``x`` ``[rows, in]``;
        ``factors``: ``A`` ``[ranks, in]`` and ``Bᵀ`` ``[ranks, out]`` (fp32, contiguous); ``spans``:
        ``[2, rows]`` int32, each row's first rank column and count (0: no delta)."""
        a, b_t = factors
        rows, width = x.shape
        out = y.shape[1]
        ok = self.fits(y, x) and y.shape[0] == rows and a.shape[1] == width and b_t.shape == (a.shape[0], out)
        ok = ok and all(t.dtype == torch.float32 and t.is_contiguous() for t in (a, b_t))
        ok = ok and spans.dtype == torch.int32 and spans.shape == (2, rows) and spans.is_contiguous()
        if not ok:
            raise ValueError("row deltas got tensors of unexpected shapes, dtypes or layouts")
        result = y if y.dtype == torch.float32 and y.is_contiguous() else torch.empty(rows, out)
        scratch = torch.empty(width if x.dtype == torch.bfloat16 else 0)  # bf16 rows are widened into it
        code = self._call(
            x.data_ptr(), _KINDS[x.dtype], x.stride(0), width, y.data_ptr(), _KINDS[y.dtype], y.stride(0), out,
            a.data_ptr(), b_t.data_ptr(), a.shape[0], spans[0].data_ptr(), spans[1].data_ptr(), rows,
            result.data_ptr(), scratch.data_ptr(),
        )  # fmt: skip
        if code != 0:
            raise ValueError("a row's rank columns are outside the stacked factors")
        return result


@cache
def delta_kernel() -> DeltaKernel | None:
    """The compiled kernel (built on first use, once per machine), or ``None`` where it cannot be."""
    lib = batch_kernel_library(DELTA_ROWS, "mixed batch steps add experts' deltas through PyTorch")
    return None if lib is None else DeltaKernel(lib)
