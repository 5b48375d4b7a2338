"""The lean decoder's attention for batch steps, in C (``native/batch_attention.c``).

Why by hand: in PyTorch a batch step's attention is about ten small operators per layer, plus a
loop per joining prompt. Profiled in ``expert-cli serve`` under 16 clients (py-spy), they were a
quarter of every step; alone on 16 rows at position 60 they took 7.6 ms of a 25.7 ms step, and
this call, once per layer, about 4 ms a step (reading the fp32 keys and values of 16 sequences is
most of it: the reads wait on memory latency, short strided runs of each slot's keys). So the call
splits its rows' attention over torch's own OpenMP threads (:mod:`expertkit.runtime.openmp`), each
(row, key head) pair summed as on one thread: the same result, bit for bit.
No library on PyPI attends rows of one step to different cache slots at different lengths with
their own causal prompt rows in one call; PyTorch's SDPA with a mask measured slower than the
operators it would replace (113 against 88 us for scores, softmax and weighted values alone, 16 rows
at position 60).

The library is compiled once per machine (:mod:`expertkit.runtime.native_build`). Where it cannot be
(no C compiler), or with ``EXPERTKIT_BATCH_KERNELS=0``, :func:`batch_attention` is ``None`` and
the decoder's PyTorch attention runs: the same arithmetic, summed in another order.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import torch

from expertkit.runtime.native_build import BATCH_ATTENTION, batch_kernel_library
from expertkit.runtime.openmp import give_openmp

_P = ctypes.c_void_p
_I = ctypes.c_int
T = torch.Tensor


class BatchAttention:
    """One layer's attention for a batch step: rows rotated, written into their slots, attended."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._call = lib.ek_batch_attention
        self._call.restype = _I
        types: list[Any] = [_P, _I, _P, _I, _P, _P, _I]  # qk, its row stride, v, its row stride, cos, sin, positions
        types += [_P, _P, _I, _I, _I, _I]  # each row's slot and position, rows, heads, kv heads, head dim
        types += [_P, _P, _I, _I, ctypes.c_float, _P, _P, _I]  # keys, values, slots, capacity, scale, out,
        self._call.argtypes = types  # scratch, threads
        # 0: the calling thread's torch count per call, when its OpenMP threads can be used (else 1)
        self.threads = 0 if give_openmp(lib) else 1
        self.team = 0

    def __call__(
        self,
        qk: torch.Tensor,
        v: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        where: tuple[torch.Tensor, torch.Tensor],
        cache: tuple[torch.Tensor, torch.Tensor],
        scale: float,
    ) -> torch.Tensor:
        """``[rows, heads x head_dim]``: each row's attention output. ``qk`` ``[rows, heads + kv_heads,
        head_dim]`` (not yet rotated; rotated in place), ``v`` ``[rows, kv_heads, head_dim]``, both fp32;
        ``rope``: the model's cos and sin tables ``[positions, head_dim]``; ``where``: each row's slot and
        position (int64); ``cache``: one layer's keys ``[slots, kv_heads, head_dim, capacity]`` and values
        ``[slots, kv_heads, capacity, head_dim]`` (fp32, contiguous), written at those places."""
        (cos, sin), (slots, positions), (keys, values) = rope, where, cache
        rows, kv_heads, dim = v.shape
        heads = qk.shape[1] - kv_heads
        capacity = keys.shape[-1]
        _check(qk, v, cos, sin, slots, positions, keys, values)
        out = torch.empty(rows, heads * dim)
        threads = self.threads or torch.get_num_threads()
        scores = torch.empty(threads * 4 * capacity)  # each thread's own
        code = self._call(
            qk.data_ptr(), qk.stride(0), v.data_ptr(), v.stride(0), cos.data_ptr(), sin.data_ptr(), cos.shape[0],
            slots.data_ptr(), positions.data_ptr(), rows, heads, kv_heads, dim,
            keys.data_ptr(), values.data_ptr(), keys.shape[0], capacity, scale, out.data_ptr(), scores.data_ptr(),
            threads,
        )  # fmt: skip
        if code < 1:
            raise ValueError("a row's cache slot or position is outside the batch cache")
        self.team = code  # how many threads attended in the last call (for tests and profiles)
        return out


def _check(qk: T, v: T, cos: T, sin: T, slots: T, positions: T, keys: T, values: T) -> None:
    """The layouts the C code reads through raw pointers: anything else would read out of bounds."""
    rows, kv_heads, dim = v.shape
    fp32 = all(t.dtype == torch.float32 for t in (qk, v, cos, sin, keys, values))
    ok = fp32 and qk.dim() == 3 and qk.shape[0] == rows and qk.shape[2] == dim and qk.stride()[1:] == (dim, 1)
    ok = ok and v.stride()[1:] == (dim, 1) and cos.shape == sin.shape and cos.shape[1:] == (dim,)
    ok = ok and all(t.is_contiguous() for t in (cos, sin, keys, values, slots, positions))
    ok = ok and slots.dtype == positions.dtype == torch.int64 and slots.shape == positions.shape == (rows,)
    slot_count, capacity = keys.shape[0], keys.shape[-1]
    ok = ok and keys.shape == (slot_count, kv_heads, dim, capacity)
    ok = ok and values.shape == (slot_count, kv_heads, capacity, dim)
    if not ok:
        raise ValueError("batch attention got tensors of unexpected shapes, dtypes or layouts")


@cache
def batch_attention() -> BatchAttention | None:
    """The compiled kernel (built on first use, once per machine), or ``None`` where it cannot be."""
    lib = batch_kernel_library(BATCH_ATTENTION, "batch steps attend through PyTorch")
    return None if lib is None else BatchAttention(lib)
