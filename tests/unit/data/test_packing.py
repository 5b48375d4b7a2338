"""Best-fit-decreasing packing, packed-row layout, and packed-vs-alone logits equivalence."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from expertkit.data.mapping import to_conversation
from expertkit.data.packing import (
    PackingStats,
    best_fit_decreasing,
    block_diagonal_mask,
    collate_packed,
    pack_row,
)
from expertkit.data.render import IGNORE_INDEX, ConversationRenderer

from .helpers import MULTI_TURN_TOOL, SINGLE_TURN, qa_record


def test_bfd_places_every_example_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    rows = best_fit_decreasing(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    lower_bound = -(-sum(lengths) // 128)
    assert len(rows) <= lower_bound * 1.05 + 1


def test_bfd_chooses_the_tightest_row():
    # 6 opens row A (free 4), 7 opens row B (free 3); 3 must go to B (tightest), then 4 fills A.
    assert best_fit_decreasing([7, 6, 4, 3], 10) == [[0, 3], [1, 2]]
    assert best_fit_decreasing([10, 10], 10) == [[0], [1]]
    with pytest.raises(ValueError, match="more than the row capacity"):
        best_fit_decreasing([11], 10)


def test_pack_row_restarts_positions_and_masks_boundaries():
    a = {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "weights": [1.0, 1.0, 1.0]}
    b = {"input_ids": [4, 5], "labels": [4, 5], "weights": [1.0, 1.5]}
    row = pack_row([a, b], [0, 1])
    assert row["position_ids"] == [0, 1, 2, 0, 1]
    assert row["labels"] == [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]  # never predict the next example's start
    assert row["weights"] == [0.0, 1.0, 1.0, 0.0, 1.5]
    assert row["seq_lens"] == [3, 2]


def test_stats_efficiency_and_padding_removed():
    stats = PackingStats(rows=2, examples=5, real_tokens=200, capacity=128, unpacked_slots=5 * 128)
    assert stats.efficiency == pytest.approx(200 / 256)
    assert stats.padding_removed == 5 * 128 - 256


def test_collate_pads_with_a_fresh_position_run():
    rows = [pack_row([{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "weights": [1.0] * 3}], [0]),
            pack_row([{"input_ids": [4], "labels": [4], "weights": [1.0]}], [1])]  # fmt: skip
    batch = collate_packed(rows, pad_token_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [IGNORE_INDEX] * 3]
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]


def test_block_diagonal_mask():
    mask = (block_diagonal_mask([2, 1])[0, 0] == 0).int().tolist()
    assert mask == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def _examples(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    renderer = ConversationRenderer(tokenizer)
    records = [SINGLE_TURN, MULTI_TURN_TOOL, qa_record(3), qa_record(12)]
    rendered = [renderer.render(to_conversation(r, None)) for r in records]
    return [{"input_ids": e.input_ids, "labels": e.labels, "weights": e.weights} for e in rendered]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_packed_logits_equal_each_example_alone(attention, architecture, tiny_llama_dir, tiny_qwen3_dir):
    model_dir = tiny_llama_dir if architecture == "llama" else tiny_qwen3_dir
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention, dtype=torch.float32)
    model.eval()
    examples = _examples(model_dir)
    row = pack_row(examples, list(range(len(examples))))
    batch = collate_packed([row], pad_token_id=0)
    with torch.no_grad():
        # use_cache=False as in training: with a cache, transformers skips packed-sequence detection.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        mask = block_diagonal_mask(row["seq_lens"])
        explicit = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]).logits[
            0
        ]
        start = 0
        for example in examples:
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
            end = start + len(example["input_ids"])
            torch.testing.assert_close(packed[start:end], alone, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(explicit[start:end], alone, rtol=1e-4, atol=1e-5)
            start = end


def test_packing_without_isolation_would_differ(tiny_llama_dir):
    """The equivalence test can fail: plain causal attention over the same row gives other logits."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa", dtype=torch.float32)
    examples = _examples(tiny_llama_dir)
    row = pack_row(examples, list(range(len(examples))))
    with torch.no_grad():
        crossed = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        second = model(input_ids=torch.tensor([examples[1]["input_ids"]])).logits[0]
    offset = len(examples[0]["input_ids"])
    assert not torch.allclose(crossed[offset : offset + len(second)], second, atol=1e-3)
