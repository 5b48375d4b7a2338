"""Each row's expert's LoRA delta in one C call per projection (``native/delta_rows.c``), for batch
steps that mix experts.

Why by hand: :class:`expertkit.runtime.delta_rows.RowDeltas` adds the stacked experts' deltas with
five PyTorch operators per projection (casts, ``x·[A_1 … A_n]ᵀ``, a mask zeroing other experts'
ranks, ``·[B_1; …; B_n]ᵀ``). Profiled in ``expert-cli serve`` under 16 clients of two experts, they
were 12.7 % of every step, nearly all fixed costs of small operators; the C call reads each row's
own expert's ranks only. No library does a grouped low-rank product over rows on CPU (Punica and
S-LoRA's kernels are CUDA).

Built like the batch attention (:mod:`expertkit.runtime.batch_attention`), its rows split over
torch's own OpenMP threads the same way (each row summed by one thread: the same bits). Where it
cannot be, or with ``EXPERTKIT_BATCH_KERNELS=0`` (one switch for both batch-step kernels),
:func:`delta_kernel` is ``None`` and the PyTorch operators run.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from expertkit.runtime.native_build import DELTA_ROWS, batch_kernel_library
from expertkit.runtime.openmp import give_openmp

_P, _I = ctypes.c_void_p, ctypes.c_int
_KINDS = {torch.float32: 0, torch.bfloat16: 1}


@dataclass(frozen=True)
class KernelFactors:
    """One projection's stacked factors as the C call reads them, checked once when built: ``a``
    ``[ranks, in]`` and ``b_t`` ``[ranks, out]`` (fp32, contiguous) and ``columns`` ``[ranks, 2]`` int32,
    the output columns ``[lo, hi)`` outside which a rank's row of ``b_t`` is zero (a fused projection's
    q ranks change only q's columns)."""

    a: torch.Tensor
    b_t: torch.Tensor
    columns: torch.Tensor

    def __post_init__(self) -> None:
        ranks = self.a.shape[0] if self.a.dim() == 2 else -1
        ok = self.b_t.dim() == 2 and self.b_t.shape[0] == ranks and self.columns.shape == (ranks, 2)
        ok = ok and all(t.dtype == torch.float32 and t.is_contiguous() for t in (self.a, self.b_t))
        if not (ok and self.columns.dtype == torch.int32 and self.columns.is_contiguous()):
            raise ValueError("row deltas got factors of unexpected shapes, dtypes or layouts")

    @classmethod
    def of(cls, a: torch.Tensor, b_t: torch.Tensor) -> KernelFactors:
        """``a`` ``[ranks, in]`` and ``b_t`` ``[ranks, out]``, with each rank's nonzero columns found."""
        if a.dim() != 2 or b_t.dim() != 2 or a.shape[0] != b_t.shape[0]:
            raise ValueError("row deltas got factors of unexpected shapes")
        a, b_t = a.float().contiguous(), b_t.float().contiguous()
        nonzero = b_t != 0
        last = b_t.shape[1] - nonzero.flip(1).int().argmax(1)
        lo = torch.where(nonzero.any(1), nonzero.int().argmax(1), 0)
        hi = torch.where(nonzero.any(1), last, 0)
        return cls(a, b_t, torch.stack([lo, hi], 1).to(torch.int32).contiguous())


class DeltaKernel:
    """``y + (x·Aᵀ ⊙ own ranks)·Bᵀ`` per row, fp32 out."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._call = lib.ek_delta_rows
        self._call.restype = _I
        types: list[Any] = [_P, _I, _I, _I, _P, _I, _I, _I]  # x, is bf16, row stride, in; y, is bf16, row stride, out
        types += [_P, _P, _P, _I, _P, _P, _I, _P, _P, _I]  # a, b_t, columns, ranks, first, count, rows, residual,
        self._call.argtypes = types  # y_out, threads
        # 0: the calling thread's torch count per call, when its OpenMP threads can be used (else 1)
        self.threads = 0 if give_openmp(lib) else 1
        self.team = 0

    def fits(self, y: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether the C code can read these rows (2-D, rows contiguous, fp32 or bf16)."""
        return x.dim() == 2 == y.dim() and x.dtype in _KINDS and y.dtype in _KINDS and x.stride(1) == 1 == y.stride(1)

    def fits_residual(self, residual: torch.Tensor, y: torch.Tensor) -> bool:
        """Whether ``residual`` can be added in the call (fp32, contiguous, ``y``'s shape)."""
        return residual.dtype == torch.float32 and residual.is_contiguous() and residual.shape == y.shape

    def __call__(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        factors: KernelFactors,
        spans: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``y`` ``[rows, out]`` (the shared weight's output) plus each row's delta, from ``x`` ``[rows, in]``;
        ``spans``: ``[2, rows]`` int32, each row's first rank column and count (0: no delta). With
        ``residual`` (see :meth:`fits_residual`): ``residual + (y + delta)``, in a new tensor."""
        rows, width = x.shape
        a, b_t = factors.a, factors.b_t
        out, ranks = y.shape[1], a.shape[0]
        ok = self.fits(y, x) and y.shape[0] == rows and a.shape[1] == width and b_t.shape[1] == out
        ok = ok and (residual is None or self.fits_residual(residual, y))
        if not (ok and spans.dtype == torch.int32 and spans.shape == (2, rows) and spans.is_contiguous()):
            raise ValueError("row deltas got tensors of unexpected shapes, dtypes or layouts")
        in_place = residual is None and y.dtype == torch.float32 and y.is_contiguous()
        result = y if in_place else torch.empty(rows, out)
        first, threads = spans.data_ptr(), self.threads or torch.get_num_threads()
        code = self._call(
            x.data_ptr(), _KINDS[x.dtype], x.stride(0), width, y.data_ptr(), _KINDS[y.dtype], y.stride(0), out,
            a.data_ptr(), b_t.data_ptr(), factors.columns.data_ptr(), ranks, first, first + 4 * rows, rows,
            None if residual is None else residual.data_ptr(), result.data_ptr(), threads,
        )  # fmt: skip
        if code < 1:
            raise ValueError("a row's rank columns or a rank's output columns are outside the stacked factors")
        self.team = code  # how many threads took rows in the last call (for tests and profiles)
        return result


@cache
def delta_kernel() -> DeltaKernel | None:
    """The compiled kernel (built on first use, once per machine), or ``None`` where it cannot be."""
    lib = batch_kernel_library(DELTA_ROWS, "mixed batch steps add experts' deltas through PyTorch")
    return None if lib is None else DeltaKernel(lib)
