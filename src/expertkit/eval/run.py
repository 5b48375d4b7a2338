"""``run_eval``: what ``expert-cli eval`` does: load the expert (and a baseline on the same base
model), the set (``--set``/``--format`` or the manifest's ``evaluation.sets``), evaluate both on
the same items, and write the result JSON beside the expert."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from expertkit.errors import UsageError
from expertkit.eval.evaluate import EvalReport, ItemResult, compare, evaluate
from expertkit.eval.gate import gate_failures
from expertkit.eval.job import EvalRequest, EvalResult, EvalSetChoice
from expertkit.eval.sets import EvalItem, load_set
from expertkit.events import RunEvents
from expertkit.fsutil import write_text_atomic
from expertkit.home import expertkit_home
from expertkit.layout import ADAPTER_WEIGHTS, BASE_EVALS, EVALS_DIR
from expertkit.models.fingerprint import sha256_file
from expertkit.models.hardware import best_dtype
from expertkit.package.references import ExpertFiles, resolve_expert
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions, parse_decoder, parse_quantize
from expertkit.safepath import child_file, contained

_SET_NAME_DISALLOWED = re.compile(r"[^A-Za-z0-9_.-]+")
SAMPLE_SEED = 0  # --sample draws the same items every run


def _selected(
    items: list[EvalItem], split: str | None, limit: int | None, where: str, sample: int | None = None
) -> list[EvalItem]:
    if split is not None:
        items = [i for i in items if i.split == split]
    if not items:
        splits = f" in split {split!r}" if split else ""
        raise UsageError(f"{where}: no evaluation items{splits}", "check --split / the set's split")
    if sample is not None and sample < len(items):
        chosen = sorted(random.Random(SAMPLE_SEED).sample(range(len(items)), sample))
        items = [items[i] for i in chosen]
    return items[:limit] if limit else items


def _set_file(files: ExpertFiles, relative: str, what: str) -> Path:
    """A set file the manifest names: anywhere for the user's own expert, inside the expert's
    directory for a packaged or installed one (its manifest is untrusted)."""
    return contained(files.root, relative, what) if files.packaged else files.root / relative


def eval_sets(request: EvalRequest, files: ExpertFiles) -> list[EvalSetChoice]:
    """The sets to run: ``--set``/``--format``, or every one of the manifest's ``evaluation.sets``
    (each with its own ``split`` and ``limit``; ``--split`` and ``--limit`` override them)."""
    if request.set_path is not None:
        if request.set_format is None:
            raise UsageError("--set needs --format", "e.g. --format spider|geoquery|bfcl|text2cypher|jsonl")
        items = load_set(request.set_path, request.set_format, request.answers)
        name = _SET_NAME_DISALLOWED.sub("-", request.set_path.stem).strip("-.")[:100] or "set"
        return [EvalSetChoice(name, _selected(items, request.split, request.limit, name, request.sample))]
    sets = files.loaded.manifest.evaluation.sets if files.loaded.manifest.evaluation else []
    if not sets:
        raise UsageError(f"{files.loaded.manifest.name} lists no evaluation.sets", "pass --set FILE --format FMT")
    chosen = []
    for spec in sets:
        answers = _set_file(files, spec.answers, f"evaluation set {spec.name} answers") if spec.answers else None
        items = load_set(_set_file(files, spec.path, f"evaluation set {spec.name} path"), spec.format, answers)
        split, limit = request.split or spec.split, request.limit or spec.limit
        where = f"evaluation set {spec.name}"
        chosen.append(EvalSetChoice(spec.name, _selected(items, split, limit, where, request.sample)))
    return chosen


def result_path(files: ExpertFiles, set_name: str) -> Path:
    """Beside the weights for an expert directory; in $EXPERTKIT_HOME/evals for a package."""
    manifest = files.loaded.manifest
    if files.model_dir.is_dir() and not files.packaged:
        return child_file(files.model_dir / "eval", set_name, ".json", "evaluation set name")
    directory = expertkit_home() / EVALS_DIR / manifest.name / manifest.version
    return child_file(directory, set_name, ".json", "evaluation set name")


def events_path(result: Path) -> Path:
    """``<set>.events.jsonl`` beside the set's result file: every item as it is judged."""
    return result.parent / f"{result.stem}.events.jsonl"


def _item_writer(
    path: Path, chosen: EvalSetChoice, systems: list[str], on_item: Callable[[str, ItemResult], None] | None
) -> tuple[RunEvents, Callable[[str, ItemResult], None]]:
    """A fresh events file for one set, and an ``on_item`` that writes each judged item, then calls ``on_item``."""
    events = RunEvents(path, fresh=True)
    events.write("start", set=chosen.name, items=len(chosen.items), systems=systems)

    def record(system: str, result: ItemResult) -> None:
        events.write("item", system=system, **asdict(result))
        if on_item is not None:
            on_item(system, result)

    return events, record


def run_eval(request: EvalRequest, on_item: Callable[[str, ItemResult], None] | None = None) -> list[EvalResult]:
    """Evaluate the expert (and its baseline) on each chosen set; one result per set, each written
    as JSON beside the weights (``eval/<set>.json``) with the adapter's sha256 and the gate."""
    files = resolve_expert(request.expert)
    dtype = best_dtype() if request.dtype == "auto" else request.dtype
    quantize, decoder = parse_quantize(request.quantize), parse_decoder(request.decoder)
    if request.base_only:
        base = files.loaded.manifest.base_models[0].name
        options = LoadOptions(dtype=dtype, base=base, quantize=quantize, decoder=decoder)  # type: ignore[arg-type]
        engine = Engine.for_files([], options)
        return [_run_base(files, engine, chosen, on_item, request.batch) for chosen in eval_sets(request, files)]
    references = [request.expert]
    if request.baseline not in (None, "base"):
        references.append(request.baseline)
    options = LoadOptions(dtype=dtype, quantize=quantize, decoder=decoder)  # type: ignore[arg-type]
    engine = Engine.for_experts(references, options)
    return [_run_set(request, files, engine, chosen, on_item) for chosen in eval_sets(request, files)]


def _run_base(
    files: ExpertFiles,
    engine: Engine,
    chosen: EvalSetChoice,
    on_item: Callable[[str, ItemResult], None] | None,
    batch: int,
) -> EvalResult:
    """The base model alone under the expert's contract; written to ``$EXPERTKIT_HOME/evals/<expert>/base/``
    (never beside the weights, where a gate would read it)."""
    directory = expertkit_home() / EVALS_DIR / files.loaded.manifest.name / BASE_EVALS
    path = child_file(directory, chosen.name, ".json", "evaluation set name")
    events, record = _item_writer(events_path(path), chosen, ["base"], on_item)
    report = evaluate(engine, None, chosen.items, contract=files, on_item=lambda r: record("base", r), batch=batch)
    summary = report.summary()
    result: dict[str, Any] = {
        "metric": summary.metric,
        "base": summary.score,
        "ci95": list(summary.ci95),
        "n": len(chosen.items),
        "buckets": {b: {"base": row.score, "n": row.n} for b, row in summary.buckets.items()},
        "baseline_summary": summary.to_json(),
        "expert_system": files.loaded.manifest.name,
        "set": chosen.name,
        "items": _item_rows(report),
    }
    write_text_atomic(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    events.write("end", status="finished", score=summary.score, written=str(path))
    events.close()
    return EvalResult.from_body("base_only", result, path)


def _run_set(
    request: EvalRequest,
    files: ExpertFiles,
    engine: Engine,
    chosen: EvalSetChoice,
    on_item: Callable[[str, ItemResult], None] | None,
) -> EvalResult:
    name = files.loaded.manifest.name
    quantize, source = engine.quantize_of(name)
    decoder, decoder_source = engine.decoder_of(name)
    # An explicit --quantize or --decoder is a comparison: written aside, never over the result the gate reads.
    stem = chosen.name + (f".quantize-{quantize}" if source == "cli" else "")
    stem += f".decoder-{decoder}" if decoder_source == "cli" else ""
    path = result_path(files, stem)
    systems = [name] if request.baseline is None else [name, "baseline"]
    events, record = _item_writer(events_path(path), chosen, systems, on_item)
    report = evaluate(engine, name, chosen.items, on_item=lambda r: record(name, r), batch=request.batch)
    result: dict[str, Any]
    if request.baseline is None:
        result = {"expert_summary": report.summary().to_json(), "n": len(chosen.items)}
    else:
        baseline_name = None if request.baseline == "base" else request.baseline.split("@")[0]
        progress = lambda r: record("baseline", r)  # noqa: E731
        reference = evaluate(engine, baseline_name, chosen.items, contract=files, on_item=progress, batch=request.batch)
        result = compare(report, reference).to_json()
        result["baseline_system"] = reference.system
    adapter = files.adapter_dir / ADAPTER_WEIGHTS
    result.update(
        {
            "expert_system": name,
            "set": chosen.name,
            "adapter_sha256": sha256_file(adapter) if adapter.is_file() else None,
            "decoder": {
                "dtype": engine.options.dtype,
                "quantize": quantize,
                "quantize_source": source,
                "kind": decoder,
                "kind_source": decoder_source,
            },
            "items": _item_rows(report),
        }
    )
    failures = gate_failures(files.loaded.manifest.evaluation, result)
    result["gate"] = {"passed": not failures, "failures": failures}
    write_text_atomic(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    events.write("end", status="finished", gate=result["gate"], written=str(path))
    events.close()
    return EvalResult.from_body("expert" if request.baseline is None else "compared", result, path)


def _item_rows(report: EvalReport) -> list[dict[str, Any]]:
    return [
        {"id": r.id, "bucket": r.bucket, "correct": r.correct, "reason": r.reason, "text": r.text} for r in report.items
    ]
