"""Best-fit-decreasing packing of rendered examples into rows of ``max_seq_length`` tokens.

Three examples A (5 tokens), B (3) and C (4) packed into one row of 12::

    input_ids     a0 a1 a2 a3 a4 | b0 b1 b2 | c0 c1 c2 c3
    position_ids   0  1  2  3  4 |  0  1  2 |  0  1  2  3
    labels         -  -  -  a3 a4|  -  - b2 |  -  - c2 c3     (- is -100; each example's
                                                               first label is always -100)

and the attention each token may use (block-diagonal *and* causal; ``x`` = attends)::

          a0 a1 a2 a3 a4 b0 b1 b2 c0 c1 c2 c3
      a0   x
      a1   x  x
      a2   x  x  x
      a3   x  x  x  x
      a4   x  x  x  x  x
      b0                  x
      b1                  x  x
      b2                  x  x  x
      c0                           x
      c1                           x  x
      c2                           x  x  x
      c3                           x  x  x  x

No library builds this mask from our rows: transformers derives it itself from ``position_ids``
that restart at 0 (``masking_utils.find_packed_sequence_indices``, used by SDPA, eager and
flash-attention varlen) when ``attention_mask`` is ``None``, which is why :func:`collate_packed`
pads with a fresh position run instead of an attention mask. The detection is skipped when the
model builds a KV cache, so the forward pass must get ``use_cache=False`` (training does; an
``eval()`` model does not by default, which silently lets packed examples attend to each other).
:func:`block_diagonal_mask` builds the explicit 4-D mask for code that wants one. Because every
example's first label is ``-100``, the last token of one example is never trained to predict the
first token of the next.

Best-fit decreasing: examples sorted by length, longest first, each into the open row whose free
space is the smallest that still fits it (a Fenwick tree over free-space values finds that row in
O(log max_seq_length)), else a new row. TRL's ``pack_dataset(strategy="bfd")`` does the same; ours
keeps per-example boundaries and weights, which TRL's does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from expertkit.data.render import IGNORE_INDEX


class _FreeSpace:
    """Count of open rows per free-space value, with 'smallest value >= n that has a row'."""

    def __init__(self, capacity: int) -> None:
        self.size = capacity + 1
        self.tree = [0] * (self.size + 1)
        self.rows: list[list[int]] = [[] for _ in range(self.size)]

    def _add(self, value: int, delta: int) -> None:
        index = value + 1
        while index <= self.size:
            self.tree[index] += delta
            index += index & -index

    def _prefix(self, value: int) -> int:
        total, index = 0, value + 1
        while index > 0:
            total += self.tree[index]
            index -= index & -index
        return total

    def push(self, free: int, row: int) -> None:
        self.rows[free].append(row)
        self._add(free, 1)

    def pop_best_fit(self, needed: int) -> tuple[int, int] | None:
        """(free space, row) of the tightest open row with at least ``needed`` free, removed."""
        rank = self._prefix(needed - 1) + 1 if needed > 0 else 1
        if rank > self._prefix(self.size - 1):
            return None
        index, step = 0, 1 << self.size.bit_length()
        while step:
            if index + step <= self.size and self.tree[index + step] < rank:
                index += step
                rank -= self.tree[index]
            step >>= 1
        free = index  # tree position index+1 holds value index
        self._add(free, -1)
        return free, self.rows[free].pop()


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group example indices into rows whose total length is at most ``capacity``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free_space = _FreeSpace(capacity)
    for index in order:
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"example {index} has {length} tokens, more than the row capacity {capacity}")
        found = free_space.pop_best_fit(length)
        if found is None:
            rows.append([index])
            free, row = capacity - length, len(rows) - 1
        else:
            free, row = found
            rows[row].append(index)
            free -= length
        if free > 0:
            free_space.push(free, row)
    return rows


@dataclass(frozen=True)
class PackingStats:
    rows: int
    examples: int
    real_tokens: int
    capacity: int
    unpacked_slots: int

    @property
    def efficiency(self) -> float:
        """Real tokens / token slots of the packed rows."""
        return self.real_tokens / (self.rows * self.capacity) if self.rows else 0.0

    @property
    def padding_removed(self) -> int:
        """Padding tokens saved against padding each example to ``capacity`` on its own."""
        return self.unpacked_slots - self.rows * self.capacity

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "examples": self.examples,
            "real_tokens": self.real_tokens,
            "capacity": self.capacity,
            "efficiency": round(self.efficiency, 6),
            "padding_removed": self.padding_removed,
        }


def pack_rows(
    examples: Mapping[int, dict[str, Any]] | Sequence[dict[str, Any]], groups: Sequence[Sequence[int]]
) -> list[dict[str, Any]]:
    """Concatenate each group of examples into a row with restarting ``position_ids``."""
    return [pack_row([examples[i] for i in group], list(group)) for group in groups]


def pack_row(parts: Sequence[dict[str, Any]], example_ids: list[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"input_ids": [], "labels": [], "weights": [], "position_ids": [], "seq_lens": []}
    for part in parts:
        length = len(part["input_ids"])
        row["input_ids"].extend(part["input_ids"])
        row["labels"].extend([IGNORE_INDEX, *part["labels"][1:]])
        row["weights"].extend([0.0, *part["weights"][1:]])
        row["position_ids"].extend(range(length))
        row["seq_lens"].append(length)
    row["example_ids"] = example_ids
    return row


def collate_packed(rows: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Pad packed rows into a batch of tensors, isolation kept without an attention mask.

    Padding gets its own position run (0, 1, ...), so transformers treats it as one more packed
    sequence; its labels are -100 and its weights 0.
    """
    import torch

    width = max(len(row["input_ids"]) for row in rows)
    batch: dict[str, list[list[Any]]] = {"input_ids": [], "labels": [], "weights": [], "position_ids": []}
    for row in rows:
        pad = width - len(row["input_ids"])
        batch["input_ids"].append([*row["input_ids"], *[pad_token_id] * pad])
        batch["labels"].append([*row["labels"], *[IGNORE_INDEX] * pad])
        batch["weights"].append([*row["weights"], *[0.0] * pad])
        batch["position_ids"].append([*row["position_ids"], *range(pad)])
    return {
        "input_ids": torch.tensor(batch["input_ids"], dtype=torch.long),
        "labels": torch.tensor(batch["labels"], dtype=torch.long),
        "weights": torch.tensor(batch["weights"], dtype=torch.float32),
        "position_ids": torch.tensor(batch["position_ids"], dtype=torch.long),
    }


def block_diagonal_mask(seq_lens: Sequence[int], dtype: Any = None) -> Any:
    """Additive ``[1, 1, T, T]`` mask (0 = attend, dtype minimum = blocked): causal within each
    example, nothing across examples. Additive, not boolean: eager attention adds the mask."""
    import torch

    dtype = dtype or torch.float32
    segment = torch.repeat_interleave(torch.arange(len(seq_lens)), torch.tensor(list(seq_lens)))
    causal = torch.ones(len(segment), len(segment), dtype=torch.bool).tril()
    allowed = causal & (segment[:, None] == segment[None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None]
