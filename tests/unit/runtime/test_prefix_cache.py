"""Prompt starts prefilled once: reused only for the same weights and soft prompt, bounded, and a
sequence decoded from a reused start (or with its prompt riding in a batch step) gets the tokens it
gets decoded alone."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import pytest
import torch

import expertkit.runtime.batch as batch_module
from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions
from expertkit.runtime.prefix_cache import PrefixCache
from expertkit.runtime.settings import resolve_settings
from unit.runtime.test_engine import second_expert

PREAMBLE = "You answer questions about a small database of singers, concerts and stadiums. "
QUESTIONS = ["How many singers are there?", "List every stadium.", "Who sang at the last concert?"]


def requests(engine: Engine, expert: str | None, prefix: torch.Tensor | None = None) -> list:
    settings = resolve_settings({"temperature": 0.0, "max_tokens": 6}, None)
    out = []
    for question in QUESTIONS:
        ids = engine.prompt_ids([{"role": "user", "content": PREAMBLE + question}])
        # log-probabilities too: the tiny model repeats one token, its distributions tell contexts apart
        out.append(dataclasses.replace(engine.request(expert, ids, settings, top_logprobs=3), prefix=prefix))
    return out


def run(scheduler: BatchScheduler, batch: list) -> list:
    results: list = [None] * len(batch)
    for index, request in enumerate(batch):
        scheduler.submit(request, lambda result, index=index: results.__setitem__(index, result))
    while scheduler.busy:
        scheduler.step()
    return results


def assert_same(results: list, alone: list) -> None:
    """Token for token, and each step's distribution equal up to fp32 rounding."""
    assert [r.token_ids for r in results] == [r.token_ids for r in alone]
    for result, reference in zip(results, alone, strict=True):
        assert len(result.logprobs) == len(reference.logprobs) > 0
        for step, expected in zip(result.logprobs, reference.logprobs, strict=True):
            assert [t for t, _ in step.top] == [t for t, _ in expected.top]
            assert [v for _, v in step.top] == pytest.approx([v for _, v in expected.top], abs=1e-4)


@pytest.mark.parametrize("prompt_rows", [0, 3, 64])  # the prompt's rest prefilled alone, split, in the step
def test_sequences_from_a_cached_prompt_start_decode_as_alone(
    trained_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prompt_rows: int
) -> None:
    monkeypatch.setattr(batch_module, "PROMPT_ROWS", prompt_rows)
    other = second_expert(trained_source, tmp_path)
    engine = Engine.for_experts([str(trained_source), str(other)], LoadOptions(dtype="float32"))
    hidden = int(engine.model_config.hidden_size)
    soft = torch.randn(3, hidden, generator=torch.Generator().manual_seed(0)) * 0.05
    batch = requests(engine, "expert-tiny") + requests(engine, "expert-other") + requests(engine, None, soft)
    alone = [engine.execute(r) for r in batch]
    scheduler = BatchScheduler(engine, max_batch=4, max_positions=256)
    assert_same(run(scheduler, batch), alone)
    first_hits = scheduler.prefixes.hits
    assert_same(run(scheduler, batch), alone)  # every prompt's start is cached now
    assert scheduler.prefixes.hits - first_hits == len(batch)
    assert scheduler.prefixes.reused_tokens >= len(batch) * 16


def test_an_entry_serves_only_the_weights_and_soft_prompt_that_made_it(trained_source: Path, tmp_path: Path) -> None:
    other = second_expert(trained_source, tmp_path)
    engine = Engine.for_experts([str(trained_source), str(other)], LoadOptions(dtype="float32"))
    decoder = engine.activate(None)
    tiny, other_deltas = engine.deltas_of("expert-tiny"), engine.deltas_of("expert-other")
    ids = torch.tensor(engine.prompt_ids([{"role": "user", "content": PREAMBLE}]))
    prefixes = PrefixCache()
    cache = decoder.new_cache(128)
    decoder.forward(cache, ids, None, tiny)
    prefixes.store(cache, decoder, tiny, ids, None)
    assert prefixes.restore(decoder.new_cache(128), decoder, other_deltas, ids, None) == 0
    assert prefixes.restore(decoder.new_cache(128), decoder, None, ids, None) == 0
    assert prefixes.restore(decoder.new_cache(128), decoder, tiny, ids, torch.zeros(2, 8)) == 0
    longer = torch.cat([ids, torch.tensor([5, 6, 7])])
    restored = decoder.new_cache(128)
    assert prefixes.restore(restored, decoder, tiny, longer, None) == len(ids)
    assert restored.length == len(ids)
    assert torch.equal(restored.keys[..., : len(ids)], cache.keys[..., : len(ids)])
    assert torch.equal(restored.values[..., : len(ids), :], cache.values[..., : len(ids), :])
    short = PrefixCache(min_tokens=len(ids) + 1)  # a start shorter than min_tokens is not worth a copy
    short.store(cache, decoder, tiny, ids, None)
    assert len(short) == 0


def test_the_cache_stays_within_its_bytes_and_forgets_a_dropped_decoder(trained_source: Path) -> None:
    engine = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32"))
    decoder = engine.activate("expert-tiny")
    caches, sizes, everything = [], [], PrefixCache(max_bytes=10**9)
    for question in QUESTIONS:
        ids = torch.tensor(engine.prompt_ids([{"role": "user", "content": PREAMBLE + question}]))
        cache = decoder.new_cache(128)
        decoder.forward(cache, ids)
        before = everything.nbytes
        everything.store(cache, decoder, None, ids, None)
        caches.append((cache, ids))
        sizes.append(everything.nbytes - before)
    assert len(everything) == 3 and min(sizes) > 0
    prefixes = PrefixCache(max_bytes=sizes[1] + sizes[2])  # room for the last two prompts only
    for cache, ids in caches:
        prefixes.store(cache, decoder, None, ids, None)
        assert prefixes.nbytes <= prefixes.max_bytes
    assert len(prefixes) == 2 and prefixes.nbytes == sizes[1] + sizes[2]  # the oldest went first
    assert prefixes.restore(decoder.new_cache(128), decoder, None, caches[0][1], None) < len(caches[0][1])
    engine._lean_decoders.clear()
    engine._decoder = None
    del decoder
    gc.collect()
    ids = torch.tensor(engine.prompt_ids([{"role": "user", "content": PREAMBLE + QUESTIONS[0]}]))
    fresh = engine.activate("expert-tiny")
    assert prefixes.restore(fresh.new_cache(128), fresh, None, ids, None) == 0  # not the same weights object
    assert len(prefixes) == 0  # the entries of the dropped decoder went
