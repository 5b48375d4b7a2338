"""Sparring (the training-operations seed): the expert's own mistakes become training examples.

The expert answers **training-side** items under its contract (grammar, stops, validator), greedily,
exactly as ``eval`` runs it; each answer is scored with the set's own metric (execution match for SQL,
AST match for BFCL calls, ...). For every wrong answer, up to three conversations are written:

1. **identify**: the task, the model's wrong answer, "Is this correct?" → "It is incorrect." (with the
   checker's reason when ``with_reason``);
2. **correct**: the task, the wrong answer, "Find the correct solution." → the gold answer;
3. **confirm**: a different item the model answered correctly, its answer, "Is this correct?" → "It is
   correct." (so the verdict is not always "incorrect").

The model's own answers appear in the conversations with ``train: false``: seen, never trained. An
evaluation split is refused: sparring on test items would train on the test set. The data is specific to
the checkpoint that made the mistakes, so the lineage sidecar names the adapter (sha256) and checkpoint,
the set and split, the counts, and the checker's failure reasons.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from expertkit.errors import UsageError
from expertkit.eval.evaluate import ItemResult, evaluate
from expertkit.eval.job import EvalRequest
from expertkit.eval.run import eval_sets
from expertkit.eval.sets import EvalItem
from expertkit.fsutil import write_text_atomic
from expertkit.home import expertkit_home
from expertkit.layout import ADAPTER_WEIGHTS
from expertkit.models.fingerprint import sha256_file
from expertkit.models.hardware import best_dtype
from expertkit.package.references import ExpertFiles, resolve_expert
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions
from expertkit.training_meta import read_training_meta

GENERATOR = "sparring"
VERSION = 1  # bump when what is written changes
TRAIN_SPLIT = "train"
KINDS = ("identify", "correct", "confirm")
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class SparringSettings:
    """Which example kinds, their wording and proportions."""

    kinds: tuple[str, ...] = KINDS
    check_prompt: str = "Is this correct?"
    fix_prompt: str = "Find the correct solution."
    incorrect: str = "It is incorrect."
    correct: str = "It is correct."
    with_reason: bool = False  # "It is incorrect: <the checker's reason>"
    confirm_per_wrong: float = 1.0  # confirm examples per wrong answer (each correct answer used once at most)


@dataclass(frozen=True)
class SparRequest:
    expert: str
    set_path: Path | None = None
    set_format: str | None = None
    answers: Path | None = None
    split: str = TRAIN_SPLIT
    limit: int | None = None
    sample: int | None = None
    out: Path | None = None
    dtype: str = "auto"
    batch: int = 8
    settings: SparringSettings = field(default_factory=SparringSettings)


@dataclass(frozen=True)
class SparResult:
    out: Path
    lineage: Path
    tried: int
    wrong: int
    written: dict[str, int]
    reasons: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out), "lineage": str(self.lineage)}


def spar(request: SparRequest, on_item: Callable[[ItemResult], None] | None = None) -> SparResult:
    """Run the expert on training-side items and write the sparring conversations and their lineage."""
    _check(request)
    files = resolve_expert(request.expert)
    choice = EvalRequest(request.expert, request.set_path, request.set_format, request.answers, request.split,
                         None, request.limit, request.dtype, False, request.sample, request.batch)  # fmt: skip
    chosen = eval_sets(choice, files)
    for selection in chosen:
        leaked = sorted({item.split for item in selection.items if item.split != TRAIN_SPLIT})
        if leaked:
            raise UsageError(f"{selection.name}: items of split {', '.join(leaked)}", "spar on --split train only")
    dtype = best_dtype() if request.dtype == "auto" else request.dtype
    engine = Engine.for_experts([request.expert], LoadOptions(dtype=dtype))  # type: ignore[arg-type]
    name = files.loaded.manifest.name
    records: list[dict[str, Any]] = []
    tried, wrong, reasons, written = 0, 0, Counter[str](), Counter[str]()
    for selection in chosen:
        report = evaluate(engine, name, selection.items, on_item=on_item, batch=request.batch)
        pairs = list(zip(selection.items, report.items, strict=True))
        tried += len(pairs)
        wrong += sum(not result.correct for _, result in pairs)
        reasons.update(_reason(result) for _, result in pairs if not result.correct)
        for record in sparring_examples(pairs, request.settings, selection.name):
            written[record["kind"]] += 1
            records.append(record)
    stem = f"{'-'.join(s.name for s in chosen)}.jsonl"
    # an expert directory keeps its sparring data beside it; an installed expert's store is never written
    default = expertkit_home() / "sparring" / name / stem if files.packaged else files.root / "sparring" / stem
    out = request.out or default
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    lineage = lineage_path(out)
    body = _lineage(request, files, chosen_names=[s.name for s in chosen], tried=tried, wrong=wrong,
                    written=dict(written), reasons=dict(reasons.most_common()))  # fmt: skip
    write_text_atomic(lineage, json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    return SparResult(out, lineage, tried, wrong, dict(written), dict(reasons.most_common()))


def _check(request: SparRequest) -> None:
    if request.split != TRAIN_SPLIT:
        raise UsageError(
            f"--split {request.split}: sparring runs on training-side items only",
            "an evaluation split would put its items into training data; use --split train",
        )
    unknown = sorted(set(request.settings.kinds) - set(KINDS))
    if unknown or not request.settings.kinds:
        raise UsageError(f"unknown sparring kinds: {', '.join(unknown) or '(none given)'}", f"from: {', '.join(KINDS)}")


def _reason(result: ItemResult) -> str:
    """The checker's reason, without the details that make every failure unique (a column name, row counts)."""
    return re.sub(r"\s*\([^)]*\)", "", result.reason.split(":")[0]).strip()[:MAX_REASON_CHARS] or "wrong"


def lineage_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + ".lineage.json")


def sparring_examples(
    pairs: list[tuple[EvalItem, ItemResult]], settings: SparringSettings, set_name: str
) -> list[dict[str, Any]]:
    """The conversations for one set's answers: per wrong answer, the chosen kinds in order."""
    right = [(item, result) for item, result in pairs if result.correct]
    # each correctly answered item confirms once: repeating one item would teach that item, not the verdict
    budget = min(int(settings.confirm_per_wrong * sum(not r.correct for _, r in pairs) + 0.5), len(right))
    out: list[dict[str, Any]] = []
    for number, (item, result) in enumerate(p for p in pairs if not p[1].correct):
        shown: dict[str, Any] = {"role": "assistant", "content": result.text, "train": False}
        verdict = settings.incorrect
        if settings.with_reason and result.reason:
            verdict = f"{settings.incorrect.rstrip('.')}: {result.reason[:MAX_REASON_CHARS]}"
        if "identify" in settings.kinds:
            turns = [
                shown,
                {"role": "user", "content": settings.check_prompt},
                {"role": "assistant", "content": verdict},
            ]
            out.append(_record("identify", item, turns, set_name))
        if "correct" in settings.kinds:
            turns = [
                shown,
                {"role": "user", "content": settings.fix_prompt},
                {"role": "assistant", "content": item.gold},
            ]
            out.append(_record("correct", item, turns, set_name))
        if "confirm" in settings.kinds and number < budget:
            other, answer = right[number]
            turns = [
                {"role": "assistant", "content": answer.text, "train": False},
                {"role": "user", "content": settings.check_prompt},
                {"role": "assistant", "content": settings.correct},
            ]
            out.append(_record("confirm", other, turns, set_name))
    return out


def _record(kind: str, item: EvalItem, turns: list[dict[str, Any]], set_name: str) -> dict[str, Any]:
    task = [{"role": m["role"], "content": m["content"]} for m in item.messages]
    return {"messages": [*task, *turns], "kind": kind, "item": item.id, "set": set_name, "generator": GENERATOR}


def _lineage(request: SparRequest, files: ExpertFiles, chosen_names: list[str], **counts: Any) -> dict[str, Any]:
    adapter = files.adapter_dir / ADAPTER_WEIGHTS
    meta = read_training_meta(files.model_dir) if (files.model_dir / "training_meta.json").is_file() else None
    return {
        "generator": GENERATOR,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "expert": {"name": files.loaded.manifest.name, "version": files.loaded.manifest.version},
        "adapter_sha256": sha256_file(adapter) if adapter.is_file() else None,
        "checkpoint": {
            "step": meta.selection.best_step if meta else None,
            "name": meta.selection.checkpoint if meta else None,
        },
        "sets": chosen_names,
        "split": request.split,
        "parameters": {**asdict(request.settings), "limit": request.limit, "sample": request.sample},
        "counts": {"tried": counts["tried"], "wrong": counts["wrong"], "written": counts["written"]},
        "failure_reasons": counts["reasons"],
    }
