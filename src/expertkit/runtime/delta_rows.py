"""The experts' LoRA deltas of one decoder pass: which rows belong to which expert, and adding each
expert's delta to its own rows of a projection's output.

A batch that mixes experts adds all their plain-LoRA deltas with two matrix products per projection
(Punica's BGMV idea, written as dense products): the experts' ``A`` factors stacked side by side,
``x · [A_1 … A_n]ᵀ``, the columns of other experts' ranks zeroed on each row, then ``· [B_1; …;
B_n]ᵀ``. At the ranks CPU experts have (8 to 64 each) the zeroed columns cost less than gathering
and scattering each expert's rows (measured on a 2-core CPU, 16 rows of two rank-8 experts:
about 3 ms of a 27 ms step went to ``index_select``/``index_add`` and the per-expert products).
A DoRA expert rescales its rows after the delta, so its rows still go the gathered way; an expert
that owns every row of the pass (one sequence, or a batch of one expert) adds its delta directly.

The stacked factors are built once per set of experts present and kept (a few sets, least recently
used out); they hold their experts, so a set is never confused with a later one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from expertkit.runtime.delta_kernel import KernelFactors, delta_kernel
from expertkit.runtime.lora_deltas import Delta, ExpertDeltas, RowGroup


@dataclass
class Stacked:
    """One projection's stacked factors: ``a_t`` ``[in, ranks]``, ``b_t`` ``[ranks, out]``, and which
    expert (its position in the set) each rank column belongs to."""

    a_t: torch.Tensor
    b_t: torch.Tensor
    owner: torch.Tensor  # [ranks]
    layout: tuple[tuple[int, int], ...]  # (expert position, rank) per expert present, in column order
    factors: KernelFactors  # what the C kernel reads: a_t transposed (contiguous rows), b_t, its columns


class StackedSet:
    """The stacked factors of a set of experts, per layer and projection, built on first use."""

    def __init__(self, members: tuple[ExpertDeltas, ...]) -> None:
        self.members = members
        self._stacks: dict[tuple[int, str], Stacked | None] = {}

    def stacked(self, index: int, name: str) -> Stacked | None:
        key = (index, name)
        if key not in self._stacks:
            present = [(m, d) for m, e in enumerate(self.members) if (d := e.layers[index].get(name)) is not None]
            self._stacks[key] = _stack(present) if present else None
        return self._stacks[key]


def _stack(present: list[tuple[int, Delta]]) -> Stacked:
    a_t = torch.cat([d.a_t for _, d in present], dim=1).contiguous()
    b_t = torch.cat([d.b_t for _, d in present], dim=0).contiguous()
    owner = torch.cat([torch.full((d.a_t.shape[1],), m) for m, d in present])
    layout = tuple((m, int(d.a_t.shape[1])) for m, d in present)
    return Stacked(a_t, b_t, owner, layout, KernelFactors.of(a_t.T, b_t))


class DeltaStacks:
    """The stacked sets of the last ``limit`` expert combinations (a decoder keeps one of these)."""

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self._sets: OrderedDict[tuple[int, ...], StackedSet] = OrderedDict()

    def of(self, members: tuple[ExpertDeltas, ...]) -> StackedSet:
        key = tuple(id(m) for m in members)  # the set holds its members: their ids are not reused meanwhile
        if key in self._sets:
            self._sets.move_to_end(key)
        else:
            self._sets[key] = StackedSet(members)
            while len(self._sets) > self.limit:
                self._sets.popitem(last=False)
        return self._sets[key]


class RowDeltas:
    """The deltas of one pass over ``rows`` rows: ``groups`` (each expert's rows) sorted into an
    expert owning every row, DoRA experts (gathered rows) and plain LoRA experts (stacked)."""

    def __init__(self, groups: list[RowGroup], rows: int, stacks: DeltaStacks) -> None:
        whole = [g for g in groups if g.rows.numel() == rows]
        parts = [g for g in groups if g.rows.numel() != rows]
        self.whole = whole
        self.dora = [g for g in parts if _has_dora(g.deltas)]
        plain = [g for g in parts if not _has_dora(g.deltas)]
        self.stacks = stacks.of(tuple(g.deltas for g in plain)) if plain else None
        self.member = torch.full((rows,), -1)  # each row's expert position in the stacked set
        for position, group in enumerate(plain):
            self.member[group.rows] = position
        self._masks: dict[tuple[tuple[int, int], ...], torch.Tensor] = {}
        self._spans: dict[tuple[tuple[int, int], ...], torch.Tensor] = {}
        self._kernel = delta_kernel()

    def _mask(self, stacked: Stacked) -> torch.Tensor:
        """``[rows, ranks]``: 1 where a rank column belongs to the row's expert."""
        if stacked.layout not in self._masks:
            self._masks[stacked.layout] = (self.member[:, None] == stacked.owner[None, :]).float()
        return self._masks[stacked.layout]

    def _span(self, stacked: Stacked) -> torch.Tensor:
        """``[2, rows]`` int32: each row's expert's first rank column in the stack, and its rank (0: none)."""
        if stacked.layout not in self._spans:
            assert self.stacks is not None  # only stacked factors have spans
            table = torch.zeros(2, len(self.stacks.members) + 1, dtype=torch.int32)  # one per expert, and none
            start = 0
            for member, rank in stacked.layout:
                table[:, member] = torch.tensor([start, rank], dtype=torch.int32)
                start += rank
            self._spans[stacked.layout] = table[:, self.member].contiguous()  # member -1: the last, zero, column
        return self._spans[stacked.layout]

    def add(
        self, y: torch.Tensor, x: torch.Tensor, index: int, name: str, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``y = x · Wᵀ`` (the shared weight) made each row's expert's: plus its delta (fp32 then); with
        ``residual``, ``residual + (y + delta)`` (a block's skip connection, in the kernel's call when it can)."""
        for group in self.whole:
            if (delta := group.deltas.layers[index].get(name)) is not None:
                y = delta.apply(y, x)
        if self.stacks is not None and (stacked := self.stacks.stacked(index, name)) is not None:
            if self._kernel is not None and self._kernel.fits(y, x):
                fused = residual is not None and not self.dora and self._kernel.fits_residual(residual, y)
                skip = residual if fused else None
                y = self._kernel(y, x, stacked.factors, self._span(stacked), skip)
                residual = None if skip is not None else residual
            else:
                low = torch.mm(x.float(), stacked.a_t).mul_(self._mask(stacked))
                y = torch.addmm(y.float(), low, stacked.b_t)
        for group in self.dora:  # DoRA rescales its rows: they are replaced
            if (delta := group.deltas.layers[index].get(name)) is not None:
                y, rows = y.float(), group.rows
                y = y.index_copy_(0, rows, delta.apply(y.index_select(0, rows), x.index_select(0, rows)))
        return y if residual is None else residual + y


def _has_dora(deltas: ExpertDeltas) -> bool:
    return any(d.rescale is not None for layer in deltas.layers for d in layer.values())
