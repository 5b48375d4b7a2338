"""Prepare an expert's training data: the whole pipeline, cached by content hash.

collect (sources, hook, mapping, normalise, dedup; bad records) → render with exact masks in
parallel → length rules → hash split → weighted mix (train only) → best-fit-decreasing packing →
five validators → ``train/``, ``eval/``, ``examples/`` (Arrow) and ``dataset.meta.json`` under
``$EXPERTKIT_HOME/cache/data/<key>/``, written atomically.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.data.collect import (
    CollectReport,
    SourcePlan,
    bad_record_listing,
    collect,
    mapping_advice,
    source_plans,
)
from expertkit.data.dataset_checks import CheckInput, CheckResult, run_validators
from expertkit.data.lineage import (
    META_FILE,
    cache_key,
    data_cache_dir,
    read_meta,
    sha256_path,
    tokenizer_sha256,
)
from expertkit.data.packing import PackingStats, best_fit_decreasing, pack_rows
from expertkit.data.preprocess import Hook, load_hook
from expertkit.data.render import IGNORE_INDEX, ConversationRenderer
from expertkit.data.replay import Replay, phase_plans, replay_mix
from expertkit.data.split import hash_split, weighted_mix
from expertkit.data.stats import length_histogram, token_stats
from expertkit.data.tokenise import LengthRules, render_batch
from expertkit.errors import DataError
from expertkit.fsutil import atomic_directory, write_text_atomic
from expertkit.manifest.load import LoadedManifest
from expertkit.manifest.sections import (
    DataChecks,
    DatasetConfig,
    Preprocessing,
    SplitConfig,
    TrainingConfig,
)
from expertkit.models.tokens import add_control_tokens

PARALLEL_THRESHOLD = 2000
KEPT = ("ok", "truncated")


@dataclass(frozen=True)
class PreparedData:
    directory: Path
    meta: dict[str, Any]
    cached: bool

    def load(self, part: str) -> Any:
        """``train`` or ``eval`` (packed rows) or ``examples`` (rendered examples), as a Dataset."""
        import datasets

        return datasets.load_from_disk(str(self.directory / part))

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.meta["validators"] if not c["passed"] and not c["overridden"]]


@dataclass(frozen=True)
class DataJob:
    """Everything that decides the prepared data, resolved from the manifest."""

    config: DatasetConfig
    training: TrainingConfig
    root: Path
    plans: list[SourcePlan]
    hook: Hook | None
    tokenizer: Any
    replay: Replay | None = None

    @property
    def own_plans(self) -> list[SourcePlan]:
        """The sources this job mixes by weight (a phase's own; replayed ones are drawn apart)."""
        replayed = set(self.replay.sources()) if self.replay else set()
        return [p for p in self.plans if p.name not in replayed]

    @property
    def preprocessing(self) -> Preprocessing:
        return self.config.preprocessing or Preprocessing()

    @property
    def rules(self) -> LengthRules:
        p = self.preprocessing
        length = self.training.setting("max_seq_length")
        return LengthRules(length, self.config.overflow, p.min_tokens, p.max_tokens)

    def key(self) -> str:
        return cache_key(
            {
                "sources": [[p.name, p.display, sha256_path(p.path)] for p in self.plans],
                "dataset": self.config.model_dump(mode="json"),
                "rows": [self.rules.max_seq_length, bool(self.training.setting("packing"))],
                "weighting": self.training.loss_weighting.model_dump() if self.training.loss_weighting else None,
                "hook": self.hook.sha256 if self.hook else None,
                "tokenizer": tokenizer_sha256(self.tokenizer),
                "replay": self.replay.to_json() if self.replay else None,
            }
        )


def data_job(loaded: LoadedManifest, tokenizer: Any, phase: str | None = None) -> DataJob:
    """The data job of the manifest's training data, or of one curriculum ``phase`` (its own
    sources, plus earlier phases' sources when it replays them)."""
    training = loaded.manifest.training
    if training is None or training.dataset is None:
        raise DataError(f"{loaded.path}: no training.dataset section", "add training.dataset to the manifest")
    config = training.dataset
    if config.augmentation and config.augmentation.model_dump(exclude_none=True):
        raise DataError(
            f"{loaded.path}: training.dataset.augmentation is accepted by the schema but not applied by the "
            "data pipeline; refusing rather than silently training without it",
            "remove training.dataset.augmentation (do augmentation in a preprocessing hook)",
        )
    add_control_tokens(tokenizer, config.special_tokens)
    hook_name = (config.preprocessing or Preprocessing()).hook
    hook = load_hook(loaded.root / hook_name) if hook_name else None
    plans = source_plans(config, loaded.root)
    replay = None
    if phase is not None:
        plans, replay = phase_plans(plans, training.phases or [], phase, loaded.path)
    for plan in plans:
        if not plan.path.exists():
            raise DataError(f"{plan.display}: no such file or directory", f"fix the dataset path in {loaded.path}")
    return DataJob(config, training.config or TrainingConfig(), loaded.root, plans, hook, tokenizer, replay)


def prepare_data(job: DataJob, *, force: bool = False, progress: bool = False) -> PreparedData:
    """Prepared data for ``job``: from the cache when the key matches, else built and cached."""
    directory = data_cache_dir() / job.key()
    meta = None if force else read_meta(directory)
    if meta is not None:
        return PreparedData(directory, meta, cached=True)
    with atomic_directory(directory, replace=True) as work:
        meta = _build(job, work, progress)
        write_text_atomic(work / META_FILE, _dumps(meta))
    return PreparedData(directory, meta, cached=False)


def _dumps(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _collect(job: DataJob, work: Path, progress: bool) -> tuple[Path, CollectReport]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    output = work / "conversations.jsonl"
    columns = (SpinnerColumn(), TextColumn("reading records: {task.completed}"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("read")
        report = collect(job.plans, job.preprocessing, job.hook, job.root, output, lambda: bar.advance(task))
    all_failed = [p for p in job.plans if report.records.get(p.name, 0) and not report.kept.get(p.name, 0)]
    if report.bad and (job.config.on_error == "fail" or all_failed):
        advice = [mapping_advice(plan, report.fields.get(plan.name, [])) for plan in all_failed]
        raise DataError(
            f"{len(report.bad):,} bad records; nothing was prepared:\n  " + bad_record_listing(report.bad),
            "; ".join(advice) or "fix these records, or set training.dataset.on_error to 'skip' to drop them",
        )
    for plan in job.plans:
        if report.kept.get(plan.name, 0) == 0:
            raise DataError(f"dataset source {plan.display!r} has no usable examples", "fix or remove the source")
    return output, report


def _render(job: DataJob, conversations: Path, work: Path, total: int) -> tuple[Any, ConversationRenderer]:
    import datasets

    if total < PARALLEL_THRESHOLD:
        datasets.disable_progress_bars()  # a bar per tiny map is noise
    else:
        datasets.enable_progress_bars()
    renderer = ConversationRenderer(job.tokenizer, job.training.loss_weighting)
    raw = datasets.load_dataset("json", data_files=str(conversations), split="train", cache_dir=str(work / ".hf-cache"))
    processes = job.config.num_proc or (min(4, os.cpu_count() or 1) if total >= PARALLEL_THRESHOLD else None)
    rendered = raw.map(
        render_batch,
        batched=True,
        batch_size=256,
        num_proc=processes if processes and processes > 1 else None,
        fn_kwargs={"renderer": renderer, "rules": job.rules},
        desc="rendering with loss masks",
    )
    return rendered, renderer


def _pack(
    examples: list[dict[str, Any]], indices: list[int], capacity: int, packing: bool
) -> tuple[list[dict[str, Any]], PackingStats]:
    chosen = [examples[i]["length"] for i in indices]
    groups = best_fit_decreasing(chosen, capacity) if packing else [[i] for i in range(len(indices))]
    rows = pack_rows(examples, [[indices[i] for i in group] for group in groups])
    stats = PackingStats(len(rows), len(indices), sum(chosen), capacity, len(indices) * capacity)
    return rows, stats


def _as_records(examples: Any) -> list[dict[str, Any]]:
    """The kept examples as Python dicts, converted column-wise in one pass (Arrow row access is slow)."""
    columns = examples.to_dict()
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


@dataclass(frozen=True)
class _Outcome:
    report: CollectReport
    statuses: Counter[str]
    lengths: list[int]
    trained: list[int]
    split: tuple[list[int], list[int]]
    mixed: list[int]
    counts: dict[str, int]
    packing: tuple[PackingStats, PackingStats]
    checks: list[CheckResult]
    segmenter: str


def _build(job: DataJob, work: Path, progress: bool) -> dict[str, Any]:
    import datasets

    conversations, report = _collect(job, work, progress)
    rendered, renderer = _render(job, conversations, work, report.hook_out)
    statuses = Counter(rendered["status"])
    examples = rendered.filter(lambda s: s in KEPT, input_columns="status")
    if len(examples) < 2:
        dropped = ", ".join(
            f"{count} {status.replace('_', ' ')}" for status, count in statuses.items() if status not in KEPT
        )
        raise DataError(
            f"only {len(examples)} usable example(s) after filtering{f' ({dropped})' if dropped else ''}; "
            "at least 2 are needed (training and evaluation each need one)",
            "add records to the dataset (a few hundred make a useful expert)",
        )
    split = job.config.split or SplitConfig()
    records = _as_records(examples)
    train_idx, eval_idx = hash_split([r["hash"] for r in records], split.eval_size, split.seed)
    sources = [r["source"] for r in records]
    groups = {p.name: [i for i in train_idx if sources[i] == p.name] for p in job.plans}
    own = {p.name: groups[p.name] for p in job.own_plans}
    weights = {p.name: p.weight for p in job.own_plans}
    shares = {p.name: p.share for p in job.own_plans if p.share is not None}
    mixed, counts = weighted_mix(own, weights, job.config.seed, shares)
    if job.replay is not None:
        mixed, replay_counts = replay_mix(job.replay, groups, mixed, job.config.seed)
        counts = {**counts, **replay_counts}
    packing = bool(job.training.setting("packing"))
    train_rows, train_pack = _pack(records, mixed, job.rules.max_seq_length, packing)
    eval_rows, eval_pack = _pack(records, eval_idx, job.rules.max_seq_length, packing)
    allowed = frozenset(job.tokenizer.convert_tokens_to_ids(job.config.special_tokens))
    settings = job.config.checks or DataChecks()
    checks = run_validators(CheckInput(records, train_rows + eval_rows, job.tokenizer, settings, allowed))
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        datasets.Dataset.from_list(rows).save_to_disk(str(work / name))
    examples.save_to_disk(str(work / "examples"))
    trained = [sum(x != IGNORE_INDEX for x in r["labels"]) for r in records]
    outcome = _Outcome(
        report, statuses, [r["length"] for r in records], trained, (train_idx, eval_idx), mixed, counts,
        (train_pack, eval_pack), checks, renderer.segmenter,
    )  # fmt: skip
    shutil.rmtree(work / ".hf-cache", ignore_errors=True)
    conversations.unlink()
    return _meta(job, outcome)


def _meta(job: DataJob, outcome: _Outcome) -> dict[str, Any]:
    from expertkit.version import __version__

    report, (train_idx, eval_idx), mixed = outcome.report, outcome.split, outcome.mixed
    lengths, trained = outcome.lengths, outcome.trained
    total = sum(outcome.counts.values()) or 1
    return {
        "expertkit_version": __version__,
        "key": job.key(),
        "tokenizer": {
            "sha256": tokenizer_sha256(job.tokenizer),
            "chat_template_sha256": _text_sha(job.tokenizer.chat_template),
            "segmenter": outcome.segmenter,
            "vocab_size": len(job.tokenizer),
            "special_tokens_added": job.config.special_tokens,
        },
        "sources": [
            {
                "name": p.name,
                "path": p.display,
                "sha256": sha256_path(p.path),
                "weight": p.weight,
                **({"share": p.share} if p.share is not None else {}),
                "records": report.records.get(p.name, 0),
                "kept": report.kept.get(p.name, 0),
            }
            for p in job.plans
        ],
        "hook": job.hook.lineage() if job.hook else None,
        "parameters": {
            "dataset": job.config.model_dump(mode="json", exclude_none=True),
            "max_seq_length": job.rules.max_seq_length,
            "packing": bool(job.training.setting("packing")),
        },
        "steps": {
            "records_read": sum(report.records.values()),
            "bad_records": {
                "count": len(report.bad),
                "policy": job.config.on_error,
                "locations": [str(b) for b in report.bad],
            },
            "after_hook": report.hook_out,
            "dedup_removed": report.dedup_removed,
            "near_dedup_removed": report.near_dedup_removed,
            "length": {k: outcome.statuses.get(k, 0) for k in ("ok", "truncated", "overflow", "too_short", "too_long")},
            "split": {"train": len(train_idx), "eval": len(eval_idx)},
            "mix": {
                "counts": outcome.counts,
                "proportions": {k: round(v / total, 4) for k, v in outcome.counts.items()},
            },
        },
        "tokens": {
            "train": token_stats([lengths[i] for i in mixed], [trained[i] for i in mixed]),
            "eval": token_stats([lengths[i] for i in eval_idx], [trained[i] for i in eval_idx]),
        },
        "histogram": length_histogram(lengths),
        "packing": {"train": outcome.packing[0].to_json(), "eval": outcome.packing[1].to_json()},
        "validators": [c.to_json() for c in outcome.checks],
    }


def _text_sha(text: str | None) -> str | None:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest() if text else None
