"""Mixed batches' expert deltas in C: each row gets its own expert's low-rank delta, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from expertkit.runtime.delta_kernel import DeltaKernel, KernelFactors, delta_kernel
from expertkit.runtime.delta_rows import DeltaStacks, RowDeltas
from expertkit.runtime.engine import Engine
from expertkit.runtime.lora_deltas import RowGroup
from expertkit.runtime.native_build import DELTA_ROWS
from expertkit.runtime.options import LoadOptions
from unit.runtime.test_engine import second_expert
from unit.runtime.test_native_decoder import portable_library

RANKS = (3, 5)  # two experts' ranks, stacked side by side
MEMBERS = [0, 1, -1, 0, 1, 1]  # each row's expert (-1: the base model's row, no delta)


def kernel() -> DeltaKernel:
    found = delta_kernel()
    assert found is not None, "make test installs a C compiler: the kernel must build here"
    return found


def factors(width: int = 40, out: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(sum(RANKS), width, generator=generator)
    b_t = torch.randn(sum(RANKS), out, generator=generator)
    starts = {0: (0, RANKS[0]), 1: (RANKS[0], RANKS[1])}
    spans = torch.tensor([list(starts.get(m, (0, 0))) for m in MEMBERS], dtype=torch.int32).T.contiguous()
    return a, b_t, spans


def reference(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    out = y.double().clone()
    for row, member in enumerate(MEMBERS):
        if member >= 0:
            columns = slice(0, RANKS[0]) if member == 0 else slice(RANKS[0], sum(RANKS))
            out[row] += (x[row].double() @ a[columns].double().T) @ b_t[columns].double()
    return out


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("y_dtype", [torch.float32, torch.bfloat16])
def test_each_row_gets_its_own_experts_delta(x_dtype: torch.dtype, y_dtype: torch.dtype) -> None:
    a, b_t, spans = factors()
    wide = torch.randn(len(MEMBERS), 64).to(x_dtype)
    x = wide[:, 8:48]  # rows read through their stride, as a slice of a fused projection's output
    y = torch.randn(len(MEMBERS), 24).to(y_dtype)
    expected = reference(y, x, a, b_t)
    got = kernel()(y, x, KernelFactors.of(a, b_t), spans)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(got[2], y[2].float())  # the base model's row: unchanged
    assert (got is y) == (y_dtype == torch.float32)  # an fp32 output is added to in place


@pytest.mark.parametrize("build", ["native", "portable"])
def test_ranks_write_only_their_columns_of_a_fused_projection(build: str, tmp_path: Path) -> None:
    """A fused projection's factors (q, k, v as one): the first expert's 11 ranks change only "q"'s
    columns (a run longer than one pass of 8), the next 3 only "v"'s, one rank nothing; the second
    expert's 5 ranks every column. Widths off the 16-lane grid; bf16 rows; both builds."""
    generator = torch.Generator().manual_seed(5)
    width, out = 37, 45
    a = torch.randn(20, width, generator=generator)
    b_t = torch.randn(20, out, generator=generator)
    b_t[:11, 19:] = 0  # "q": columns 0-18
    b_t[11:14, :30] = 0  # "v": columns 30-44
    b_t[14] = 0  # a rank with no effect
    b_t[11, 35] = 0  # zeros inside a rank's columns are still multiplied
    factors = KernelFactors.of(a, b_t)
    assert factors.columns[:15].tolist() == [[0, 19]] * 11 + [[30, 45]] * 3 + [[0, 0]]
    members = [0, 1, -1, 1, 0]
    starts = {0: (0, 15), 1: (15, 5)}
    spans = torch.tensor([list(starts.get(m, (0, 0))) for m in members], dtype=torch.int32).T.contiguous()
    x, y = torch.randn(5, width).bfloat16(), torch.randn(5, out)
    expected = y.double().clone()
    for row, member in enumerate(members):
        if member >= 0:
            first, count = starts[member]
            ranks = slice(first, first + count)
            expected[row] += (x[row].double() @ a[ranks].double().T) @ b_t[ranks].double()
    built = kernel() if build == "native" else DeltaKernel(portable_library(tmp_path, DELTA_ROWS))
    got = built(y.clone(), x, factors, spans)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(got[2], y[2])
    residual = torch.randn(5, out)  # a block's skip connection, added in the same call, last
    summed = built(y, x, factors, spans, residual)
    assert summed is not y and summed is not residual
    assert torch.equal(summed, residual + got)  # the order PyTorch adds them in: residual + (y + delta)


@pytest.mark.parametrize("build", ["native", "portable"])
def test_rows_split_over_torchs_openmp_threads_are_one_threads_bit_for_bit(build: str, tmp_path: Path) -> None:
    """Each row is summed whole by one thread: any team gives the same bits, in place or not."""
    a, b_t, spans = factors()
    x, y, residual = torch.randn(len(MEMBERS), 40), torch.randn(len(MEMBERS), 24), torch.randn(len(MEMBERS), 24)
    built = kernel() if build == "native" else DeltaKernel(portable_library(tmp_path, DELTA_ROWS))
    results, teams = [], []
    try:
        for threads in (1, 2, 3):
            built.threads = threads
            results.append((built(y.clone(), x.bfloat16(), KernelFactors.of(a, b_t), spans),))
            teams.append(built.team)
            results[-1] += (built(y.bfloat16(), x, KernelFactors.of(a, b_t), spans, residual),)
    finally:
        built.threads = 0
    assert teams == [1, 2, 3]
    assert all(torch.equal(got[i], results[0][i]) for got in results[1:] for i in range(2))
    torch.testing.assert_close(results[0][0].double(), reference(y, x.bfloat16(), a, b_t), atol=1e-4, rtol=1e-5)


def test_rank_columns_outside_the_stack_are_refused_and_nothing_is_written() -> None:
    a, b_t, spans = factors()
    y, x = torch.randn(len(MEMBERS), 24), torch.randn(len(MEMBERS), 40)
    before = y.clone()
    spans[1, 4] = 7  # expert 1 starts at column 3: 3 + 7 > 8 ranks
    with pytest.raises(ValueError, match="outside the stacked factors"):
        kernel()(y, x, KernelFactors.of(a, b_t), spans)
    assert torch.equal(y, before)
    with pytest.raises(ValueError, match="unexpected"):
        kernel()(y, x.double(), KernelFactors.of(a, b_t), factors()[2])
    with pytest.raises(ValueError, match="unexpected"):
        kernel()(y, x, KernelFactors.of(a[:, :-1], b_t), factors()[2])
    with pytest.raises(ValueError, match="unexpected"):
        KernelFactors.of(a.T, b_t)
    with pytest.raises(ValueError, match="unexpected"):  # built by hand: columns for fewer ranks
        KernelFactors(a, b_t, torch.zeros(2, 2, dtype=torch.int32))
    columns = KernelFactors.of(a, b_t).columns.clone()
    columns[3, 1] = 25  # one past the output's 24 columns
    with pytest.raises(ValueError, match="output columns are outside"):
        kernel()(y, x, KernelFactors(a, b_t, columns), factors()[2])
    assert torch.equal(y, before)


def test_row_deltas_through_the_kernel_equal_the_stacked_products(trained_source: Path, tmp_path: Path) -> None:
    """Two experts' deltas on a mixed pass: the C call gives the PyTorch products' rows."""
    engine = Engine.for_experts([str(trained_source), str(second_expert(trained_source, tmp_path))], LoadOptions())
    tiny, other = engine.deltas_of("expert-tiny"), engine.deltas_of("expert-other")
    assert tiny is not None and other is not None
    groups = [RowGroup(torch.tensor([0, 2, 3]), tiny), RowGroup(torch.tensor([1, 4]), other)]
    native, plain = RowDeltas(groups, 6, DeltaStacks()), RowDeltas(groups, 6, DeltaStacks())
    assert native._kernel is not None
    plain._kernel = None
    compared = 0
    for index, name, delta in [(i, n, d) for i, layer in enumerate(tiny.layers) for n, d in layer.items()]:
        x, y = torch.randn(6, delta.a_t.shape[0]), torch.randn(6, delta.b_t.shape[1])
        got, expected = native.add(y.clone(), x, index, name), plain.add(y.clone(), x, index, name)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(got[5], y[5])  # row 5 belongs to no expert
        residual = torch.randn_like(y)
        summed = native.add(y.clone(), x, index, name, residual)
        torch.testing.assert_close(summed, plain.add(y.clone(), x, index, name, residual), atol=1e-5, rtol=1e-5)
        assert torch.equal(summed, residual + got)
        compared += 1
    assert compared >= 2
