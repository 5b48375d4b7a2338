"""Continuous batching gives each sequence exactly what it would get decoded alone."""

from __future__ import annotations

from pathlib import Path

from expertkit.runtime.batch import BatchScheduler
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions
from expertkit.runtime.settings import resolve_settings
from unit.runtime.test_engine import second_expert

PROMPTS = ["What is 1 plus 1?", "Write SQL.", "Count the singers in the table please, quickly", "hi"]


def requests(engine: Engine, expert: str | None, max_tokens: tuple[int, ...]):
    out = []
    for prompt, limit in zip(PROMPTS, max_tokens, strict=True):
        settings = resolve_settings({"temperature": 0.0, "max_tokens": limit, "repetition_penalty": 1.1}, None)
        out.append(engine.request(expert, engine.prompt_ids([{"role": "user", "content": prompt}]), settings))
    return out


def run_batched(engine: Engine, batch: list, max_batch: int) -> list:
    scheduler = BatchScheduler(engine, max_batch=max_batch, max_positions=256)
    results: list = [None] * len(batch)
    for index, request in enumerate(batch):
        scheduler.submit(request, lambda result, index=index: results.__setitem__(index, result))
    while scheduler.busy:
        scheduler.step()
    return results


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
