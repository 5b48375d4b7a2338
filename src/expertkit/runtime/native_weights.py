"""Weights packed for the native decoder (:mod:`expertkit.runtime.native_decoder`): Q4_1 and Q8_0
blocks of 32 inputs, rows interleaved 16 at a time, as ``native/decoder.c`` reads them.

Q4_1 (``int4``): each block of 32 weights is ``d·q + low`` with ``q`` in 0..15, ``low`` the
block's minimum and ``d`` its range / 15, stored as ``d`` and ``mid = low + 8·d`` in fp32 (the
kernel computes ``d·(q - 8) + mid``). A model that was itself shipped in Q4_1 (the
embedded SmolLM2 comes from a Q4_1 GGUF) sits exactly on that grid, so packing it loses nothing;
any other model is rounded as llama.cpp's Q4_1 rounds it. Q8_0 (``int8``, and the embedding table
in both): ``d·q`` with ``q`` in -127..127 and ``d`` the block's largest magnitude / 127, again
exact for the embedded model's Q8_0 table. numpy only: packing imports no torch.
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
    scale: np.ndarray  # float32 [groups][blocks][16]
    mid: np.ndarray | None = None  # Q4_1: float32 value at code 8 (minimum + 8 steps), same layout
    sums: np.ndarray | None = None  # Q8_0: int32, 128 x each block's code sum
    bias: np.ndarray | None = None  # float32 [rows]
    lora_a: np.ndarray | None = None  # float32 [rank][cols]
    lora_bt: np.ndarray | None = None  # float32 [rank][rows], the LoRA scale folded in
    rescale: np.ndarray | None = None  # DoRA's per-row factor, float32 [rows]

    def nbytes(self) -> int:
        parts = (self.codes, self.scale, self.mid, self.sums, self.bias, self.lora_a, self.lora_bt, self.rescale)
        return sum(int(p.nbytes) for p in parts if p is not None)

    def with_expert(self, a: np.ndarray | None, bt: np.ndarray | None, rescale: np.ndarray | None) -> PackedMatrix:
        """The same blocks (shared, not copied) with an expert's low-rank product and DoRA factor."""
        return PackedMatrix(
            self.rows, self.cols, self.kind, self.codes, self.scale, self.mid, self.sums, self.bias,
            None if a is None else np.ascontiguousarray(a, dtype=np.float32),
            None if bt is None else np.ascontiguousarray(bt, dtype=np.float32),
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
    low, high = groups.min(axis=2), groups.max(axis=2)
    step = (high - low) / np.float32(15)
    safe = np.where(step > 0, step, np.float32(1))
    codes = np.clip(np.rint((groups - low[..., None]) / safe[..., None]), 0, 15).astype(np.uint8)
    nibbles = codes[..., :16] | (codes[..., 16:] << 4)  # byte j: input j low, input j + 16 high
    return PackedMatrix(
        rows, cols, 4, _interleave(nibbles, 4), _per_block(step.astype(np.float32)),
        mid=_per_block((low + np.float32(8) * step).astype(np.float32)),
        bias=None if bias is None else np.ascontiguousarray(bias, dtype=np.float32),
    )  # fmt: skip


def pack_q8_0(weight: np.ndarray, bias: np.ndarray | None = None) -> PackedMatrix:
    """``weight [rows, cols]`` (fp32) as Q8_0 blocks."""
    weight = _padded(weight)
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // BLOCK, BLOCK)
    step = np.abs(groups).max(axis=2) / np.float32(127)
    safe = np.where(step > 0, step, np.float32(1))
    codes = np.clip(np.rint(groups / safe[..., None]), -127, 127).astype(np.int8)
    sums = codes.astype(np.int32).sum(axis=2) * 128
    return PackedMatrix(
        rows, cols, 8, _interleave(codes.view(np.uint8), 8), _per_block(step.astype(np.float32)),
        sums=_per_block(sums.astype(np.int32)),
        bias=None if bias is None else np.ascontiguousarray(bias, dtype=np.float32),
    )  # fmt: skip


PACKERS = {"int4": pack_q4_1, "int8": pack_q8_0}


def dequantized(packed: PackedMatrix) -> np.ndarray:
    """The weight the blocks hold, ``[rows, cols]`` fp32 (the tests' reference)."""
    groups, blocks = packed.rows // LANES, packed.cols // BLOCK
    slices = 4 if packed.kind == 4 else 8
    raw = packed.codes.reshape(groups, blocks, slices, LANES, 4).transpose(0, 3, 1, 2, 4)
    raw = raw.reshape(packed.rows, blocks, slices * 4)
    scale = packed.scale.transpose(0, 2, 1).reshape(packed.rows, blocks, 1)
    if packed.kind == 4:
        codes = np.concatenate([raw & 15, raw >> 4], axis=2).astype(np.float32)
        assert packed.mid is not None
        mid = packed.mid.transpose(0, 2, 1).reshape(packed.rows, blocks, 1)
        return ((codes - 8) * scale + mid).reshape(packed.rows, packed.cols)
    return (raw.view(np.int8).astype(np.float32) * scale).reshape(packed.rows, packed.cols)
