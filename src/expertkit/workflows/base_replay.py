"""The ``base_replay`` generator: general conversations answered by the expert's own base model, to mix
into training at a small ``share`` against forgetting (the SFT seed's pre-training replay, 1–5 % per
phase).

The seed replays raw pre-training text. The pre-training corpus of a hub model is not at hand (and
nothing is downloaded at run time), so the replayed text is the next best thing: the base model's own
greedy answers to general prompts (facts, arithmetic, short code, instructions, other languages,
short writing), which is what the expert should keep answering the same way. Training on them pulls
the adapter back towards the base's distribution on general inputs; the forgetting metric
(:mod:`expertkit.eval.forgetting`) measures exactly that drift, so the shipped prompts here are
**disjoint** from its prompts (a test checks it): replaying the evaluation's own prompts would
measure memory, not forgetting.

An answer is kept only when the model ended it (not cut by ``max_tokens``: a trained turn ends with
the end-of-turn token, so a cut answer would teach stopping mid-sentence) and it is not a duplicate.
Decoding is greedy and without any expert's contract, as the forgetting metric decodes. A workflow,
not a data generator: it needs the runtime.

Config::

    {"generator": "base_replay", "expert": "..", "prompts": "prompts.jsonl", "max_tokens": 160, "dtype": "auto"}

``prompts`` (JSONL, ``{"prompt"}`` or ``{"messages"}``) defaults to the shipped set
``data/general_replay_prompts.jsonl`` (130 prompts, hand-written for expertkit).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from expertkit.data.generators.base import GENERATORS, Answers, Generated, Progress
from expertkit.errors import DataError
from expertkit.workflows.distill import read_prompts

NAME = "base_replay"
SHIPPED_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "general_replay_prompts.jsonl"
MAX_TOKENS = 160
MAX_TOKENS_LIMIT = 1024
DTYPES = ("auto", "bfloat16", "float32")


def run_base_replay(
    config: dict[str, Any], root: Path, count: int, seed: int, progress: Progress | None = None
) -> Generated:
    from expertkit.models.hardware import best_dtype
    from expertkit.package.references import resolve_expert
    from expertkit.runtime.engine import Engine
    from expertkit.runtime.options import LoadOptions
    from expertkit.runtime.settings import resolve_settings

    if not config.get("expert"):
        raise DataError("$.expert: the expert whose base model answers", "name its directory (relative to the config)")
    max_tokens = config.get("max_tokens", MAX_TOKENS)
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise DataError(f"$.max_tokens: an integer from 1 to {MAX_TOKENS_LIMIT}", f"e.g. {MAX_TOKENS}")
    dtype = config.get("dtype", "auto")
    if dtype not in DTYPES:
        raise DataError(f"$.dtype: one of {', '.join(DTYPES)}", "auto: bf16 where the CPU runs it natively")
    prompts_path = root / str(config["prompts"]) if config.get("prompts") else SHIPPED_PROMPTS
    prompts = read_prompts(prompts_path)
    random.Random(seed).shuffle(prompts)
    files = resolve_expert(str(root / str(config["expert"])))
    base = files.loaded.manifest.base_models[0].name
    engine = Engine.for_files([], LoadOptions(dtype=best_dtype() if dtype == "auto" else dtype, base=base))  # type: ignore[arg-type]
    settings = resolve_settings({"temperature": 0.0, "seed": 0, "max_tokens": max_tokens}, None)
    answers = Answers(NAME, progress=progress)
    for messages in prompts:
        if len(answers.records) >= count:
            break
        answers.attempt()
        ids = engine.prompt_ids([{"role": m.role, "content": m.content} for m in messages])
        answer = engine.run(None, ids, settings)
        if not answer.stopped:
            answers.reasons["cut by max_tokens"] += 1
            continue
        answers.add(messages, answer.text)
    return answers.generated({
        "base_model": base, "expert": config.get("expert"),
        "prompts": str(config.get("prompts") or SHIPPED_PROMPTS.name), "max_tokens": max_tokens,
        "dtype": engine.options.dtype, "count": count, "seed": seed,
    })  # fmt: skip


GENERATORS.register(NAME)(run_base_replay)  # beside the data stage's own generators, for expert-cli data generate
