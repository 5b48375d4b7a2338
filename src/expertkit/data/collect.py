"""Stage one of preparation: sources → hook → conversations → normalise → dedup, streamed to disk.

Every record that cannot be used (unreadable line, hook failure, missing field, wrong type,
empty answer, no assistant turn) becomes a :class:`BadRecord` naming its file and line. Nothing is
dropped silently: the caller applies the manifest's ``on_error`` policy to the full list.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertkit.data.conversation import Conversation
from expertkit.data.mapping import RecordError, to_conversation
from expertkit.data.preprocess import ExactDedup, Hook, NearDedupIndex, normalise_conversation
from expertkit.data.sources import RawRecord, read_records
from expertkit.errors import DataError
from expertkit.manifest.sections import DatasetConfig, FieldMapping, Preprocessing


@dataclass(frozen=True)
class SourcePlan:
    name: str
    path: Path
    display: str
    format: str | None
    mapping: FieldMapping | None
    weight: float
    share: float | None = None  # a fixed fraction of the mix, instead of weight


@dataclass(frozen=True)
class BadRecord:
    location: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


def bad_record_listing(bad: list[BadRecord], limit_per_reason: int = 3) -> str:
    """One line per bad record, except that a reason shared by many records is said once with all
    of their locations (a wrong field_mapping otherwise prints the same sentence 5,000 times)."""
    by_reason: dict[str, list[str]] = {}
    for record in bad:
        by_reason.setdefault(record.reason, []).append(record.location)
    lines: list[str] = []
    for reason, locations in by_reason.items():
        if len(locations) <= limit_per_reason:
            lines.extend(f"{location}: {reason}" for location in locations)
        else:
            shown = ", ".join(locations[:limit_per_reason])
            lines.append(f"{reason} ({len(locations):,} records, e.g. {shown})")
    return "\n  ".join(lines)


@dataclass
class CollectReport:
    records: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    bad: list[BadRecord] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)  # the first record's fields, per source
    hook_out: int = 0
    dedup_removed: int = 0
    near_dedup_removed: int = 0


def source_plans(config: DatasetConfig, root: Path) -> list[SourcePlan]:
    if config.datasets:
        plans = [
            SourcePlan(s.name or Path(s.path).stem, root / s.path, s.path, s.format, s.field_mapping, s.weight, s.share)
            for s in config.datasets
        ]
    elif config.path:
        plans = [SourcePlan(Path(config.path).stem, root / config.path, config.path, config.format,
                            config.field_mapping, 1.0)]  # fmt: skip
    else:
        raise DataError("training.dataset has neither `path` nor `datasets`", "add one of them to the manifest")
    names = [plan.name for plan in plans]
    if len(set(names)) != len(names):
        raise DataError(f"training.dataset.datasets: source names repeat: {names}", "give each source a `name`")
    return plans


def _conversations(plan: SourcePlan, hook: Hook | None, root: Path, report: CollectReport) -> Iterator[Conversation]:
    for raw in read_records(plan.path, plan.format, plan.display):
        report.records[plan.name] = report.records.get(plan.name, 0) + 1
        if plan.name not in report.fields and raw.data is not None:
            report.fields[plan.name] = sorted(raw.data)
        for record, error in _hooked(raw, hook, root):
            if error is not None or record is None:
                report.bad.append(BadRecord(raw.location, error or "unreadable"))
                continue
            try:
                conversation = to_conversation(record, plan.mapping)
            except RecordError as exc:
                report.bad.append(BadRecord(raw.location, str(exc)))
                continue
            yield Conversation(conversation.messages, plan.name, raw.location)


AUTO_SHAPES = (
    ({"messages"}, "OpenAI-style messages"),
    ({"conversations"}, "ShareGPT conversations"),
    ({"instruction", "output"}, "Alpaca instruction/input/output"),
    ({"prompt", "completion"}, "prompt/completion"),
)


def mapping_advice(plan: SourcePlan, fields: list[str]) -> str:
    """What to change when every record of ``plan`` failed: the fields found and the mapping that fits."""
    found = f"its records have the fields {fields[:12]}" if fields else "its records could not be read"
    shape = next((name for keys, name in AUTO_SHAPES if keys <= set(fields)), None)
    if shape is not None:
        where = "training.dataset.field_mapping" if plan.mapping else "the mapping"
        return f"every record of {plan.display} failed; {found}: {shape}, detected automatically, so remove {where}"
    text = [f for f in fields if f not in ("id", "system")]
    example = (
        f'{{"prompt_template": "{{{text[0]}}}", "response": "{text[-1]}"}}' if len(text) >= 2 else "a field_mapping"
    )
    return f"every record of {plan.display} failed; {found}: map them, e.g. field_mapping {example}"


def _hooked(raw: RawRecord, hook: Hook | None, root: Path) -> list[tuple[dict[str, Any] | None, str | None]]:
    if raw.error is not None or raw.data is None:
        return [(None, raw.error)]
    if hook is None:
        return [(raw.data, None)]
    try:
        return [(record, None) for record in hook.apply(raw.data, root)]
    except Exception as exc:  # user code: becomes a bad record with its location
        return [(None, f"preprocessing hook {hook.path.name} failed: {exc}")]


def collect(
    plans: list[SourcePlan],
    preprocessing: Preprocessing,
    hook: Hook | None,
    root: Path,
    output: Path,
    on_record: Callable[[], None] | None = None,
) -> CollectReport:
    """Write one JSON line per surviving conversation to ``output``; return the counts."""
    report = CollectReport()
    exact = ExactDedup() if preprocessing.dedup else None
    near = NearDedupIndex(preprocessing.near_dedup) if preprocessing.near_dedup else None
    with output.open("w", encoding="utf-8") as handle:
        for plan in plans:
            report.kept.setdefault(plan.name, 0)
            for conversation in _conversations(plan, hook, root, report):
                report.hook_out += 1
                if on_record is not None:
                    on_record()
                if preprocessing.normalize_whitespace:
                    conversation = normalise_conversation(conversation)
                if exact is not None and exact.is_duplicate(conversation):
                    report.dedup_removed += 1
                    continue
                if near is not None and near.is_duplicate(conversation):
                    report.near_dedup_removed += 1
                    continue
                report.kept[plan.name] += 1
                line = {
                    "conversation": json.dumps(conversation.to_json(), ensure_ascii=False),
                    "hash": conversation.content_hash(),
                    "source": plan.name,
                    "location": conversation.location,
                }
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return report
