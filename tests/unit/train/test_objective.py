"""The loss: supervised-only CE equals the model's own loss, accumulation is normalised correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from expertkit.data.render import IGNORE_INDEX
from expertkit.train.objective import (
    PackingIsolationError,
    SupervisedCausalLM,
    example_lengths,
    neftune_noise,
)


def tiny_model(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def packed_batch(seed: int, rows: int = 2, width: int = 24) -> dict[str, torch.Tensor]:
    """Rows of two packed examples each; about half the targets supervised, weights 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (rows, width), generator=g)
    labels = ids.clone()
    labels[torch.rand(rows, width, generator=g) < 0.5] = IGNORE_INDEX
    half = width // 2
    labels[:, 0] = labels[:, half] = IGNORE_INDEX  # the first token of each example is never a target
    positions = torch.cat([torch.arange(half), torch.arange(width - half)]).repeat(rows, 1)
    return {"input_ids": ids, "labels": labels, "weights": (labels != IGNORE_INDEX).float(), "position_ids": positions}


def test_supervised_only_loss_equals_the_models_own_loss(tiny_llama_dir: Path) -> None:
    model = tiny_model(tiny_llama_dir)
    batch = packed_batch(0)
    sums = SupervisedCausalLM(model)(**batch)
    ids, positions = batch["input_ids"], batch["position_ids"]
    reference = model(input_ids=ids, position_ids=positions, labels=batch["labels"], use_cache=False)
    torch.testing.assert_close(sums["weighted"] / sums["tokens"], reference.loss, rtol=1e-5, atol=1e-6)
    assert sums["tokens"] == (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


def test_token_weights_scale_each_token(tiny_llama_dir: Path) -> None:
    model = tiny_model(tiny_llama_dir)
    batch = packed_batch(1)
    plain = SupervisedCausalLM(model)(**batch)
    doubled = SupervisedCausalLM(model)(**{**batch, "weights": batch["weights"] * 2})
    torch.testing.assert_close(doubled["weighted"], plain["weighted"] * 2)
    torch.testing.assert_close(doubled["ce"], plain["ce"])


def test_accumulated_gradient_equals_full_batch_gradient(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Two micro-batches with different supervised counts, normalised by the total (PR #34191)."""
    from transformers import TrainingArguments

    from expertkit.manifest.sections import Selection
    from expertkit.train.selection import BestCheckpointSelector
    from expertkit.train.trainer import ExpertTrainer

    objective = SupervisedCausalLM(tiny_model(tiny_llama_dir))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = ExpertTrainer(
        model=objective, args=args, selector=BestCheckpointSelector(Selection()), run_info={"started": 0.0}
    )
    first, second = packed_batch(2, rows=1), packed_batch(3, rows=3)
    second["labels"][:, 1:8] = IGNORE_INDEX  # fewer supervised tokens in the second micro-batch
    second["weights"] = (second["labels"] != IGNORE_INDEX).float()
    total = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in (first, second))

    objective.zero_grad()
    for micro in (first, second):
        trainer.compute_loss(objective, dict(micro), num_items_in_batch=torch.tensor(total)).backward()
    accumulated = [p.grad.clone() for p in objective.parameters()]

    objective.zero_grad()
    width = first["input_ids"].shape[1]
    full = {k: torch.cat([first[k], second[k][:, :width]]) for k in first}
    trainer.compute_loss(objective, full).backward()
    for got, expected in zip(accumulated, [p.grad for p in objective.parameters()], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_example_lengths_follow_position_runs() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert example_lengths(positions).tolist() == [[3, 3, 3, 2, 2, 1], [6, 6, 6, 6, 6, 6]]


def test_neftune_noise_is_scaled_by_each_examples_own_length() -> None:
    torch.manual_seed(0)
    embeds = torch.zeros(1, 103, 16)
    positions = torch.cat([torch.arange(100), torch.arange(3)]).unsqueeze(0)  # examples of 100 and 3 tokens
    noise = neftune_noise(embeds, positions, alpha=5.0)
    long_bound, short_bound = 5.0 / (100 * 16) ** 0.5, 5.0 / (3 * 16) ** 0.5
    assert noise[0, :100].abs().max() <= long_bound
    assert noise[0, 100:].abs().max() <= short_bound
    assert noise[0, 100:].abs().max() > long_bound, "short examples must get their own, larger scale"


def test_dropping_position_ids_on_packed_rows_is_detected(tiny_llama_dir: Path) -> None:
    objective = SupervisedCausalLM(tiny_model(tiny_llama_dir))
    decoder = objective.model.get_decoder()
    with pytest.raises(PackingIsolationError, match="position_ids"):
        decoder(input_ids=torch.tensor([[5, 6, 7]]))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_are_isolated_under_each_attention(tiny_llama_dir: Path, attention: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation=attention)
    objective = SupervisedCausalLM(model).eval()
    batch = packed_batch(4, rows=1)
    half = batch["input_ids"].shape[1] // 2
    with torch.no_grad():
        packed = objective(**batch)
        parts = [objective(**{k: v[:, s] for k, v in batch.items()}) for s in (slice(0, half), slice(half, None))]
    torch.testing.assert_close(packed["ce"], parts[0]["ce"] + parts[1]["ce"], rtol=1e-5, atol=1e-5)
