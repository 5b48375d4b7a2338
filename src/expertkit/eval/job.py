"""``run_eval``: what ``expert-cli eval`` does: load the expert (and a baseline on the same base
model), the set (``--set``/``--format`` or the manifest's ``evaluation.sets``), evaluate both on
the same items, and write the result JSON beside the expert."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.errors import UsageError
from expertkit.eval.gate import gate_failures
from expertkit.eval.run import EvalReport, ItemResult, compare, evaluate
from expertkit.eval.sets import EvalItem, load_set
from expertkit.fsutil import write_text_atomic
from expertkit.home import expertkit_home
from expertkit.models.hardware import best_dtype
from expertkit.package.references import ExpertFiles, resolve_expert
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions


@dataclass(frozen=True)
class EvalRequest:
    expert: str
    set_path: Path | None = None
    set_format: str | None = None
    answers: Path | None = None
    split: str | None = None
    baseline: str | None = "base"
    limit: int | None = None
    dtype: str = "auto"


def set_items(request: EvalRequest, files: ExpertFiles) -> tuple[str, list[EvalItem]]:
    """The set's name and items, from the request or the manifest's first evaluation set."""
    if request.set_path is not None:
        if request.set_format is None:
            raise UsageError("--set needs --format", "e.g. --format spider|geoquery|bfcl|text2cypher|jsonl")
        name, items = request.set_path.stem, load_set(request.set_path, request.set_format, request.answers)
    else:
        sets = files.loaded.manifest.evaluation.sets if files.loaded.manifest.evaluation else []
        if not sets:
            raise UsageError(f"{files.loaded.manifest.name} lists no evaluation.sets", "pass --set FILE --format FMT")
        chosen = sets[0]
        answers = files.root / chosen.answers if chosen.answers else None
        name, items = chosen.name, load_set(files.root / chosen.path, chosen.format, answers)
    if request.split is not None:
        items = [i for i in items if i.bucket == request.split]
    if not items:
        raise UsageError(f"no evaluation items{' in split ' + request.split if request.split else ''}", "check --split")
    return name, items[: request.limit] if request.limit else items


def result_path(files: ExpertFiles, set_name: str) -> Path:
    """Beside the weights for an expert directory; in $EXPERTKIT_HOME/evals for a package."""
    manifest = files.loaded.manifest
    if files.model_dir.is_dir() and not files.packaged:
        return files.model_dir / "eval" / f"{set_name}.json"
    return expertkit_home() / "evals" / manifest.name / manifest.version / f"{set_name}.json"


def run_eval(request: EvalRequest, on_item: Callable[[str, ItemResult], None] | None = None) -> dict[str, Any]:
    files = resolve_expert(request.expert)
    name = files.loaded.manifest.name
    references = [request.expert]
    if request.baseline not in (None, "base"):
        references.append(request.baseline)
    dtype = best_dtype() if request.dtype == "auto" else request.dtype
    engine = Engine.for_experts(references, LoadOptions(dtype=dtype))  # type: ignore[arg-type]
    set_name, items = set_items(request, files)
    report = evaluate(engine, name, items, on_item=(lambda r: on_item(name, r)) if on_item else None)
    result: dict[str, Any]
    if request.baseline is None:
        result = {"expert_summary": report.summary(), "n": len(items)}
    else:
        baseline_name = None if request.baseline == "base" else request.baseline.split("@")[0]
        progress = (lambda r: on_item("baseline", r)) if on_item else None
        reference = evaluate(engine, baseline_name, items, contract=name, on_item=progress)
        result = compare(report, reference)
        result["baseline_system"] = reference.system
    result.update({"expert_system": name, "set": set_name, "items": _item_rows(report)})
    failures = gate_failures(files.loaded.manifest.evaluation, result)
    result["gate"] = {"passed": not failures, "failures": failures}
    path = result_path(files, set_name)
    write_text_atomic(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    result["written"] = str(path)
    return result


def _item_rows(report: EvalReport) -> list[dict[str, Any]]:
    return [
        {"id": r.id, "bucket": r.bucket, "correct": r.correct, "reason": r.reason, "text": r.text} for r in report.items
    ]
