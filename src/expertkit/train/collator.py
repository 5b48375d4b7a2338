"""Batches of packed rows for the loop: padding, and soft-prompt slots before each example.

A packed row (see :mod:`expertkit.data.packing`) holds several examples, each a run of
``position_ids`` starting at 0. With ``V`` virtual tokens, every example gets ``V`` slots in front
of it, and its run becomes ``0..V+L-1``::

    row:       [a0 a1 a2 | b0 b1]             positions 0 1 2 0 1
    with V=2:  [p0 p1 a0 a1 a2 | p0 p1 b0 b1]  positions 0 1 2 3 4 0 1 2 3
    virtual:   [ 0  1 -1 -1 -1 |  0  1 -1 -1]  (index into the prompt matrix, -1 = real token)

Slots are labelled ``-100`` with weight 0, so they are never trained targets; the model fills
their embeddings from the prompt matrix (:mod:`expertkit.train.objective`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from expertkit.data.packing import collate_packed
from expertkit.data.render import IGNORE_INDEX

ROW_FIELDS = ("input_ids", "labels", "weights", "position_ids", "seq_lens")


def insert_virtual_slots(row: dict[str, Any], virtual_tokens: int, pad_token_id: int) -> dict[str, list[Any]]:
    """``row`` with ``virtual_tokens`` prompt slots before each example, and a ``virtual_index``."""
    out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "weights": [], "position_ids": [], "virtual_index": []}
    start = 0
    for length in row["seq_lens"]:
        end = start + length
        out["input_ids"] += [pad_token_id] * virtual_tokens + list(row["input_ids"][start:end])
        out["labels"] += [IGNORE_INDEX] * virtual_tokens + list(row["labels"][start:end])
        out["weights"] += [0.0] * virtual_tokens + list(row["weights"][start:end])
        out["position_ids"] += list(range(virtual_tokens + length))
        out["virtual_index"] += list(range(virtual_tokens)) + [-1] * length
        start = end
    out["seq_lens"] = [virtual_tokens + n for n in row["seq_lens"]]
    return out


@dataclass
class PackedCollator:
    """Collate packed rows into ``input_ids, labels, weights, position_ids`` (+ ``virtual_index``)."""

    pad_token_id: int
    virtual_tokens: int = 0

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [{k: row[k] for k in ROW_FIELDS} for row in rows]
        real_tokens = sum(sum(row["seq_lens"]) for row in rows)  # not padding, not prompt slots
        if not self.virtual_tokens:
            return {**collate_packed(rows, self.pad_token_id), "real_tokens": real_tokens}
        rows = [insert_virtual_slots(row, self.virtual_tokens, self.pad_token_id) for row in rows]
        batch = collate_packed(rows, self.pad_token_id)
        width = batch["input_ids"].shape[1]
        batch["virtual_index"] = torch.tensor(
            [r["virtual_index"] + [-1] * (width - len(r["virtual_index"])) for r in rows], dtype=torch.long
        )
        return {**batch, "real_tokens": real_tokens}
