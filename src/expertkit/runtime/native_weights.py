"""Weights packed for the native decoder (:mod:`expertkit.runtime.native_decoder`): Q4_1 and Q8_0
blocks of 32 inputs, rows interleaved 16 at a time, as ``native/decoder.c`` reads them.

Q4_1 (``int4``): each block of 32 weights is ``d·q + low`` with ``q`` in 0..15, ``low`` the
block's minimum and ``d`` its range / 15, both fp16 (the kernel computes ``d·(q - 8) + (low + 8·d)``).
Q8_0 (``int8``, and the embedding table in both): ``d·q`` with ``q`` in -127..127 and ``d`` the
block's largest magnitude / 127 in fp16, the codes stored offset by 128 (unsigned bytes: the kernel
takes the offset off once per block of activations, not per row). A model that was itself shipped
in these formats (the embedded SmolLM2 comes from a GGUF of Q4_1 projections and a Q8_0 embedding
table, fp16 scales) sits exactly on the grid, so packing it loses nothing (tested); any other model
is rounded as llama.cpp rounds it. numpy only: packing imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32  # inputs per block
LANES = 16  # rows per group: one AVX-512 lane each


@dataclass
class PackedMatrix:
    """One projection's blocks, and the fp32 expert parts ``native/decoder.c`` adds to it."""

    rows: int  # padded to whole groups of 16 with zero rows (a vocabulary of any size)
    cols: int
    kind: int  # 4: Q4_1, 8: Q8_0
    codes: np.ndarray  # uint8
    scale: np.ndarray  # float16 [groups][blocks][16]
    low: np.ndarray | None = None  # Q4_1: the blocks' minimums, float16, same layout
    bias: np.ndarray | None = None  # float32 [rows]
    lora_a: np.ndarray | None = None  # float32 [rank][cols]
    lora_b: np.ndarray | None = None  # float32 [rows / 16][rank][16]: B by row group, the LoRA scale folded in
    rescale: np.ndarray | None = None  # DoRA's per-row factor, float32 [rows]

    def nbytes(self) -> int:
        parts = (self.codes, self.scale, self.low, self.bias, self.lora_a, self.lora_b, self.rescale)
        return sum(int(p.nbytes) for p in parts if p is not None)

    def with_expert(self, a: np.ndarray | None, b: np.ndarray | None, rescale: np.ndarray | None) -> PackedMatrix:
        """The same blocks (shared, not copied) with an expert's low-rank product (``a [rank, cols]``,
        ``b [rows, rank]``) and DoRA factor. B is stored by row group, each group's ``rank x 16``
        values end to end: a group's additions read one run of memory beside its blocks, not ``rank``
        rows of B (measured: 347 -> 367 tokens/s with the benchmark's expert, the same logits)."""
        grouped = None
        if b is not None:
            rank = b.shape[1]
            grouped = np.asarray(b, np.float32).reshape(self.rows // LANES, LANES, rank).transpose(0, 2, 1)
        return PackedMatrix(
            self.rows, self.cols, self.kind, self.codes, self.scale, self.low, self.bias,
            None if a is None else np.ascontiguousarray(a, dtype=np.float32),
            None if grouped is None else np.ascontiguousarray(grouped),
            None if rescale is None else np.ascontiguousarray(rescale, dtype=np.float32),
        )  # fmt: skip


def packable(rows: int, cols: int) -> bool:
    """Whether a ``[rows, cols]`` projection fits the layout (whole groups of rows, whole blocks)."""
    return rows % LANES == 0 and cols % BLOCK == 0 and rows > 0 and cols > 0


def _padded(weight: np.ndarray) -> np.ndarray:
    """``weight`` as fp32 with zero rows added up to a whole group of 16."""
    weight = np.asarray(weight, dtype=np.float32)
    extra = -weight.shape[0] % LANES
    return np.pad(weight, ((0, extra), (0, 0))) if extra else weight


def _interleave(per_row: np.ndarray, slices: int) -> np.ndarray:
    """``[rows, blocks, slices * 4]`` bytes -> the ``[group][block][slice][lane][4]`` stream."""
    rows, blocks, _ = per_row.shape
    lanes = per_row.reshape(rows // LANES, LANES, blocks, slices, 4)
    return np.ascontiguousarray(lanes.transpose(0, 2, 3, 1, 4)).reshape(-1)


def _per_block(values: np.ndarray) -> np.ndarray:
    """``[rows, blocks]`` -> ``[group][block][lane]``."""
    rows, blocks = values.shape
    return np.ascontiguousarray(values.reshape(rows // LANES, LANES, blocks).transpose(0, 2, 1))


def pack_q4_1(weight: np.ndarray, bias: np.ndarray | None = None) -> PackedMatrix:
    """``weight [rows, cols]`` (fp32) as Q4_1 blocks."""
    weight = _padded(weight)
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // BLOCK, BLOCK)
    low = groups.min(axis=2).astype(np.float16)
    step = ((groups.max(axis=2) - groups.min(axis=2)) / np.float32(15)).astype(np.float16)
    wide_low, wide_step = low.astype(np.float32)[..., None], step.astype(np.float32)[..., None]
    safe = np.where(wide_step > 0, wide_step, np.float32(1))
    codes = np.clip(np.rint((groups - wide_low) / safe), 0, 15).astype(np.uint8)
    nibbles = codes[..., :16] | (codes[..., 16:] << 4)  # byte j: input j low, input j + 16 high
    return PackedMatrix(
        rows, cols, 4, _interleave(nibbles, 4), _per_block(step), low=_per_block(low),
        bias=None if bias is None else np.ascontiguousarray(bias, dtype=np.float32),
    )  # fmt: skip


def pack_q8_0(weight: np.ndarray, bias: np.ndarray | None = None) -> PackedMatrix:
    """``weight [rows, cols]`` (fp32) as Q8_0 blocks."""
    weight = _padded(weight)
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // BLOCK, BLOCK)
    step = (np.abs(groups).max(axis=2) / np.float32(127)).astype(np.float16)
    wide = step.astype(np.float32)[..., None]
    codes = np.clip(np.rint(groups / np.where(wide > 0, wide, np.float32(1))), -127, 127).astype(np.int16)
    return PackedMatrix(
        rows, cols, 8, _interleave((codes + 128).astype(np.uint8), 8), _per_block(step),
        bias=None if bias is None else np.ascontiguousarray(bias, dtype=np.float32),
    )  # fmt: skip


PACKERS = {"int4": pack_q4_1, "int8": pack_q8_0}


def dequantized(packed: PackedMatrix) -> np.ndarray:
    """The weight the blocks hold, ``[rows, cols]`` fp32 (the tests' reference)."""
    groups, blocks = packed.rows // LANES, packed.cols // BLOCK
    slices = 4 if packed.kind == 4 else 8
    raw = packed.codes.reshape(groups, blocks, slices, LANES, 4).transpose(0, 3, 1, 2, 4)
    raw = raw.reshape(packed.rows, blocks, slices * 4)
    scale = packed.scale.astype(np.float32).transpose(0, 2, 1).reshape(packed.rows, blocks, 1)
    if packed.kind == 4:
        codes = np.concatenate([raw & 15, raw >> 4], axis=2).astype(np.float32)
        assert packed.low is not None
        low = packed.low.astype(np.float32).transpose(0, 2, 1).reshape(packed.rows, blocks, 1)
        return (codes * scale + low).reshape(packed.rows, packed.cols)
    return ((raw.astype(np.float32) - 128) * scale).reshape(packed.rows, packed.cols)
