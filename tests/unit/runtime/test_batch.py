"""Continuous batching gives each sequence exactly what it would get decoded alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import expertkit.runtime.batch as batch_module
from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.batch_attention import batch_attention
from expertkit.runtime.delta_kernel import delta_kernel
from expertkit.runtime.engine import Engine
from expertkit.runtime.llama_decoder import LeanDecoder
from expertkit.runtime.options import LoadOptions
from expertkit.runtime.settings import resolve_settings
from unit.runtime.test_engine import renamed_expert, second_expert
from unit.runtime.test_fast_start import dora_expert
from unit.runtime.test_prefix_cache import assert_same, run

PROMPTS = ["What is 1 plus 1?", "Write SQL.", "Count the singers in the table please, quickly", "hi"]


def requests(engine: Engine, expert: str | None, max_tokens: tuple[int, ...]):
    out = []
    for prompt, limit in zip(PROMPTS, max_tokens, strict=True):
        settings = resolve_settings({"temperature": 0.0, "max_tokens": limit, "repetition_penalty": 1.1}, None)
        out.append(engine.request(expert, engine.prompt_ids([{"role": "user", "content": prompt}]), settings))
    return out


def run_batched(engine: Engine, batch: list, max_batch: int) -> list:
    return run(BatchScheduler(engine, max_batch=max_batch, max_positions=256), batch)


def test_batched_sequences_match_one_at_a_time(trained_source: Path, tmp_path: Path) -> None:
    other = second_expert(trained_source, tmp_path)
    engine = Engine.for_experts([str(trained_source), str(other)], LoadOptions(dtype="float32"))
    batch = requests(engine, "expert-tiny", (5, 12, 3, 9)) + requests(engine, "expert-other", (7, 4, 10, 6))
    batch += requests(engine, None, (4, 4, 4, 4))
    alone = [engine.execute(r).token_ids for r in batch]
    rebuilt = requests(engine, "expert-tiny", (5, 12, 3, 9)) + requests(engine, "expert-other", (7, 4, 10, 6))
    rebuilt += requests(engine, None, (4, 4, 4, 4))
    together = run_batched(engine, rebuilt, max_batch=3)  # fewer slots than sequences: slots are reused
    assert [r.token_ids for r in together] == alone
    assert [r.finish_reason for r in together] == [
        engine.execute(r).finish_reason
        for r in requests(engine, "expert-tiny", (5, 12, 3, 9))
        + requests(engine, "expert-other", (7, 4, 10, 6))
        + requests(engine, None, (4, 4, 4, 4))
    ]


def third_expert(trained_source: Path, tmp_path: Path) -> Path:
    """Another LoRA expert: the tiny expert's B factors negated and halved."""
    return renamed_expert(trained_source, tmp_path, "expert-third", lambda key: -0.5 if "lora_B" in key else 1.0)


def interleaved(engine: Engine) -> list:
    names = ["expert-tiny", "expert-other", "expert-third", None]
    batch = []
    for index, limits in enumerate(((6, 11, 3, 9), (8, 4, 12, 5), (10, 7, 4, 6), (3, 5, 2, 4))):
        batch += requests(engine, names[index], limits)
    return [batch[i] for i in (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)]  # experts alternate


def test_three_experts_decode_in_one_batch_token_for_token_as_alone(trained_source: Path, tmp_path: Path) -> None:
    experts = [
        str(trained_source),
        str(second_expert(trained_source, tmp_path)),
        str(third_expert(trained_source, tmp_path)),
    ]
    engine = Engine.for_experts(experts, LoadOptions(dtype="float32"))
    assert all(engine.mixable(name) for name in engine.experts)
    alone = [engine.execute(r).token_ids for r in interleaved(engine)]
    scheduler = BatchScheduler(engine, max_batch=6, max_positions=256)
    results: list = [None] * 16
    for index, request in enumerate(interleaved(engine)):
        scheduler.submit(request, lambda result, index=index: results.__setitem__(index, result))
    experts_per_step = []
    while scheduler.busy:
        scheduler.step()
        experts_per_step.append(len({s.request.expert for s in scheduler.running}))
    assert scheduler.mixed and max(experts_per_step) == 4  # three experts and the base model in one step
    assert [r.token_ids for r in results] == alone
    merged_only = BatchScheduler(engine, max_batch=6, max_positions=256, mixing=False)
    for index, request in enumerate(interleaved(engine)):
        merged_only.submit(request, lambda result, index=index: results.__setitem__(index, result))
    while merged_only.busy:
        merged_only.step()
        assert len({s.request.expert for s in merged_only.running}) <= 1
    assert [r.token_ids for r in results] == alone


def test_a_dora_expert_shares_a_batch_with_a_lora_expert_token_for_token_as_alone(
    trained_source: Path, tmp_path: Path
) -> None:
    """DoRA rides as deltas too (its per-channel rescale applied to its own rows of the batch)."""
    dora = dora_expert(trained_source, tmp_path)
    engine = Engine.for_experts([str(trained_source), str(dora)], LoadOptions(dtype="float32"))
    assert engine.mixable("expert-tiny") and engine.mixable("expert-dora")
    deltas = engine.deltas_of("expert-dora")
    assert deltas is not None and any(d.rescale is not None for d in deltas.layers[0].values())
    batch = requests(engine, "expert-dora", (4, 4, 4, 4)) + requests(engine, "expert-tiny", (4, 4, 4, 4))
    alone = [engine.execute(r).token_ids for r in batch]
    assert [r.token_ids for r in run_batched(engine, batch, max_batch=8)] == alone


def test_a_merged_batch_turns_mixed_when_another_expert_arrives(trained_source: Path, tmp_path: Path) -> None:
    """One expert's batch runs merged; another expert's request joins it at once (the batch turns
    mixed, its sequences keeping their caches), and every sequence still decodes as alone."""
    engine = Engine.for_experts([str(trained_source), str(second_expert(trained_source, tmp_path))], LoadOptions())

    def batch(expert: str, limits: tuple[int, ...]) -> list:
        return [dataclasses.replace(r, top_logprobs=3) for r in requests(engine, expert, limits)]

    alone = [engine.execute(r) for r in batch("expert-tiny", (9, 12, 10, 11)) + batch("expert-other", (5, 6, 4, 7))]
    scheduler = BatchScheduler(engine, max_batch=8, max_positions=256)
    results: list = [None] * 8
    for index, request in enumerate(batch("expert-tiny", (9, 12, 10, 11))):
        scheduler.submit(request, lambda result, index=index: results.__setitem__(index, result))
    scheduler.step()
    scheduler.step()
    assert not scheduler.mixed and len(scheduler.running) == 4
    for index, request in enumerate(batch("expert-other", (5, 6, 4, 7)), start=4):
        scheduler.submit(request, lambda result, index=index: results.__setitem__(index, result))
    scheduler.step()
    assert scheduler.mixed and {s.request.expert for s in scheduler.running} == {"expert-tiny", "expert-other"}
    while scheduler.busy:
        scheduler.step()
    assert_same(results, alone)
    separate = BatchScheduler(engine, max_batch=8, max_positions=256, mixing=False)
    separate.submit(batch("expert-tiny", (9, 12, 10, 11))[0], lambda result: None)
    separate.step()
    separate.submit(batch("expert-other", (5, 6, 4, 7))[0], lambda result: None)
    separate.step()
    assert not separate.mixed and [s.request.expert for s in separate.running] == ["expert-tiny"]


def test_the_batch_cache_grows_while_sequences_run_and_they_decode_as_alone(
    trained_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache starts small and doubles when a joining sequence needs more positions: the running
    sequences' keys and values move with it (a 2,048-position cache of 16 slots was 1.5 GB, zeroed
    before the first request)."""
    monkeypatch.setattr(batch_module, "FIRST_POSITIONS", 8)
    engine = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32"))
    short = requests(engine, "expert-tiny", (2, 3, 2, 2))[3:]  # "hi": the shortest prompt
    batch = short + requests(engine, "expert-tiny", (5, 12, 3, 40))
    alone = [engine.execute(r).token_ids for r in batch]
    scheduler = BatchScheduler(engine, max_batch=3, max_positions=256)
    results: list = [None] * len(batch)
    rebuilt = requests(engine, "expert-tiny", (2, 3, 2, 2))[3:] + requests(engine, "expert-tiny", (5, 12, 3, 40))
    for index, request in enumerate(rebuilt):
        scheduler.submit(request, lambda result, index=index: results.__setitem__(index, result))
    capacities = []
    while scheduler.busy:
        scheduler.step()
        assert scheduler.cache is not None
        capacities.append(scheduler.cache.capacity)
    assert [r.token_ids for r in results] == alone
    assert capacities[0] < capacities[-1] <= 256 and len(set(capacities)) >= 2
    assert capacities[-1] < 2 * max(len(r.prompt_ids) + r.settings.max_tokens for r in rebuilt)


def test_a_grown_batch_cache_holds_every_slots_keys_and_values(trained_source: Path) -> None:
    """Growing moves each slot's positions: a step on the grown cache gives the same logits, bit for bit."""
    engine = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32"))
    decoder = engine.activate("expert-tiny")
    assert isinstance(decoder, LeanDecoder)
    small = decoder.new_batch_cache(2, 16)
    for slot, ids in enumerate(([5, 9, 14, 3, 7], [11, 2, 8])):
        decoder.forward(LeanDecoder.slot_view(small, slot), torch.tensor(ids))
    grown = LeanDecoder.grown_batch_cache(small, 64)
    assert grown.capacity == 64 and torch.equal(grown.keys[..., :16], small.keys)
    tokens, lengths = torch.tensor([4, 6]), torch.tensor([5, 3])
    expected = decoder.step_batch(small, tokens, lengths)
    assert torch.equal(decoder.step_batch(grown, tokens, lengths), expected)
    assert not torch.equal(decoder.step_batch(decoder.new_batch_cache(2, 64), tokens, lengths), expected)


def test_warming_up_builds_the_shared_decoder_for_mixing_experts_and_changes_no_token(
    trained_source: Path, tmp_path: Path
) -> None:
    engine = Engine.for_experts(
        [str(trained_source), str(second_expert(trained_source, tmp_path))], LoadOptions(dtype="float32")
    )
    batch = requests(engine, "expert-tiny", (5, 12, 3, 9)) + requests(engine, "expert-other", (7, 4, 10, 6))
    alone = [engine.execute(r).token_ids for r in batch]
    scheduler = BatchScheduler(engine, max_batch=3, max_positions=256)
    batch_attention.cache_clear()
    delta_kernel.cache_clear()
    scheduler.warm_up()
    assert batch_attention.cache_info().currsize == delta_kernel.cache_info().currsize == 1  # built now
    assert engine.active is None and scheduler.cache is not None  # the base model's weights, shared
    assert set(engine._lean_decoders) == {"expert-tiny", "expert-other", None}  # and each merged
    assert scheduler.cache.capacity == 256 and not scheduler.busy
    rebuilt = requests(engine, "expert-tiny", (5, 12, 3, 9)) + requests(engine, "expert-other", (7, 4, 10, 6))
    assert [r.token_ids for r in run(scheduler, rebuilt)] == alone
