"""Forgetting: how far an expert drifted from its base model on general prompts.

The prompt set shipped with expertkit (``general_prompts.jsonl``, 62 prompts hand-written for expertkit
across facts, arithmetic, short code, instructions and French / Spanish / German, like the SFT seed's
skills evaluation; none comes from a benchmark) or the user's own out-of-domain JSONL (``{"prompt",
"bucket"}`` lines). For each prompt, with greedy decoding and no decoding contract (this measures the
model, not the grammar):

- **KL**: the base model answers; then, teacher-forced on the base's own answer tokens, the mean per-token
  KL divergence KL(base ‖ expert) = Σ p_base · (log p_base − log p_expert) of the next-token distributions.
  It is 0 for an unchanged model and grows as the expert loses the base's behaviour where the base is
  confident. Base first: the question is what of the base's own answers the expert no longer produces.
- **match**: whether the expert's own greedy answer equals the base's (whitespace and case folded) — the
  base model's answer is the reference for short answers.

Both are reported per bucket with bootstrap 95 % intervals; ``evaluation.forgetting.max_kl`` (and
``min_match``) join the gate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expertkit.errors import DataError
from expertkit.eval.stats import bootstrap_ci, mean
from expertkit.manifest.sections import Forgetting
from expertkit.runtime.engine import Engine
from expertkit.runtime.settings import resolve_settings

GENERAL_PROMPTS = Path(__file__).with_name("general_prompts.jsonl")
MAX_PROMPTS = 2000


@dataclass(frozen=True)
class ForgettingItem:
    id: str
    bucket: str
    kl: float
    match: bool
    tokens: int
    base: str
    expert: str


@dataclass
class ForgettingReport:
    items: list[ForgettingItem] = field(default_factory=list)

    @staticmethod
    def _figures(items: list[ForgettingItem]) -> dict[str, Any]:
        kls, matches = [i.kl for i in items], [float(i.match) for i in items]
        return {
            "n": len(items),
            "kl": round(mean(kls), 5),
            "kl_ci95": [round(v, 5) for v in bootstrap_ci(kls)],
            "match": round(mean(matches), 4),
            "match_ci95": [round(v, 4) for v in bootstrap_ci(matches)],
        }

    def summary(self) -> dict[str, Any]:
        buckets = sorted({i.bucket for i in self.items})
        return {
            **self._figures(self.items),
            "buckets": {b: self._figures([i for i in self.items if i.bucket == b]) for b in buckets},
        }


def load_prompts(path: Path | None = None) -> list[tuple[str, str, str]]:
    """``(id, bucket, prompt)`` from the shipped set, or a user's JSONL of ``{"prompt", "bucket"?, "id"?}``."""
    source = path or GENERAL_PROMPTS
    if not source.is_file():
        raise DataError(f"{source}: no such prompt set", 'give a JSONL file of {"prompt", "bucket"} lines')
    found = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines()[:MAX_PROMPTS], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            found.append((str(row.get("id", f"p{number}")), str(row.get("bucket", "all")), str(row["prompt"])))
        except (ValueError, KeyError, AttributeError) as exc:
            raise DataError(f'{source}:{number}: a line is {{"prompt": ..., "bucket": ...}}: {exc}', "fix it") from exc
    return found


def _log_probs(engine: Engine, name: str | None, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """``[len(answer), vocab]`` log-probabilities of each next token, teacher-forced on ``answer``."""
    decoder = engine.activate(name)
    prefix = engine.experts[name].soft_prompt if name else None
    cache = decoder.new_cache(len(prompt) + len(answer) + engine.prefix_length(name) + 1)
    rows = [torch.as_tensor(decoder.forward(cache, np.asarray(prompt, dtype=np.int64), prefix))]
    for token in answer[:-1]:
        rows.append(torch.as_tensor(decoder.forward(cache, np.asarray([token], dtype=np.int64))))
    return torch.log_softmax(torch.stack(rows).float(), dim=-1)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def measure_forgetting(
    engine: Engine, expert: str, prompts: list[tuple[str, str, str]], max_tokens: int = 32
) -> ForgettingReport:
    settings = resolve_settings({"temperature": 0.0, "seed": 0, "max_tokens": max_tokens}, None)
    report = ForgettingReport()
    for item_id, bucket, text in prompts:
        ids = engine.prompt_ids([{"role": "user", "content": text}])
        base = engine.run(None, ids, settings)
        mine = engine.run(expert, ids, settings)
        answer = base.token_ids or [int(engine.tokenizer.eos_token_id or 0)]
        with torch.no_grad():
            base_lp = _log_probs(engine, None, ids, answer)
            expert_lp = _log_probs(engine, expert, ids, answer)
        kl = (base_lp.exp() * (base_lp - expert_lp)).sum(dim=-1).clamp(min=0).mean().item()
        match = _normal(mine.text) == _normal(base.text)
        report.items.append(ForgettingItem(item_id, bucket, round(kl, 6), match, len(answer), base.text, mine.text))
    return report


def forgetting_failures(config: Forgetting | None, summary: dict[str, Any]) -> list[str]:
    """The forgetting gate: ``max_kl`` and ``min_match`` against the summary's overall figures."""
    if config is None:
        return []
    failures = []
    if config.max_kl is not None and summary["kl"] > config.max_kl:
        failures.append(f"forgetting: mean KL {summary['kl']:.4f} is above the maximum {config.max_kl:.4f}")
    if config.min_match is not None and summary["match"] < config.min_match:
        failures.append(f"forgetting: match rate {summary['match']:.4f} is below the minimum {config.min_match:.4f}")
    return failures


def run_forgetting(expert: str, dtype: str = "auto", prompts: Path | None = None) -> dict[str, Any]:
    """Load the expert (and its base), measure forgetting, write ``forgetting.json`` where ``eval`` writes
    its results; the body (summary, gate, items) is returned."""
    from expertkit.eval.run import result_path
    from expertkit.fsutil import write_text_atomic
    from expertkit.layout import ADAPTER_WEIGHTS
    from expertkit.models.fingerprint import sha256_file
    from expertkit.models.hardware import best_dtype
    from expertkit.package.references import resolve_expert
    from expertkit.runtime.options import LoadOptions
    from expertkit.safepath import contained

    files = resolve_expert(expert)
    evaluation = files.loaded.manifest.evaluation
    config = evaluation.forgetting if evaluation else None
    if prompts is None and config is not None and config.prompts:
        prompts = (
            contained(files.root, config.prompts, "evaluation.forgetting.prompts")
            if files.packaged
            else files.root / config.prompts
        )
    engine = Engine.for_experts([expert], LoadOptions(dtype=best_dtype() if dtype == "auto" else dtype))  # type: ignore[arg-type]
    name = files.loaded.manifest.name
    report = measure_forgetting(engine, name, load_prompts(prompts), config.max_tokens if config else 32)
    summary = report.summary()
    failures = forgetting_failures(config, summary)
    adapter = files.adapter_dir / ADAPTER_WEIGHTS
    body = {
        "expert_system": name,
        "adapter_sha256": sha256_file(adapter) if adapter.is_file() else None,  # ships with that adapter only
        "prompts": str(prompts or GENERAL_PROMPTS.name),
        "summary": summary,
        "gate": {"passed": not failures, "failures": failures},
        "items": [item.__dict__ for item in report.items],
    }
    path = result_path(files, "forgetting")
    write_text_atomic(path, json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    return {**body, "written": str(path)}
