"""What the run page shows, from one run's files: curves, the checkpoint ledger with the chosen
checkpoint and why, the sample generations at each evaluation, the data lineage card, the resolved
manifest, and a diff of configuration and data against another run of the same expert."""

from __future__ import annotations

import json
import time
from typing import Any

from expertkit.dashboard.curves import series
from expertkit.dashboard.runs import RunSource, read_json, run_status, summary_row
from expertkit.events import eta_seconds, read_events

SAMPLE_CHARS = 2000  # per prompt / output / gold on the page
MAX_LOCATIONS = 20  # bad-record locations shown
MAX_DIFF_ROWS = 300
MAX_SAMPLE_EVALS = 20  # the newest evaluations whose samples are returned (the page shows five)


def run_view(run: RunSource) -> dict[str, Any]:
    """Everything the run page and ``/api/runs/{key}`` show."""
    events = read_events(run.events) if run.events else []
    meta = read_json(run.meta)
    data = read_json(run.data_meta)
    eta = eta_seconds(events, time.time()) if run_status(events) == "running" else None
    return {
        "summary": {**summary_row(run, events), "eta_s": round(eta) if eta is not None else None},
        "curves": series(events),
        "ledger": ledger(events, meta),
        "samples": samples(events),
        "lineage": lineage(data) if data else None,
        "manifest": (meta or {}).get("manifest"),
        "metrics": (meta or {}).get("metrics"),
        "files": {"events": str(run.events or ""), "meta": str(run.meta or ""), "data": str(run.data_meta or "")},
    }


def ledger(events: list[dict[str, Any]], meta: dict[str, Any] | None) -> dict[str, Any]:
    """Each evaluation's selection decision and the checkpoint the run published (with the reason)."""
    rows = []
    for event in events:
        if event.get("event") == "eval":
            decision = event.get("selection") or {}
            rows.append(
                {
                    "step": event.get("step"),
                    "eval_loss": event.get("eval_loss"),
                    "train_loss": decision.get("train_loss"),
                    "ratio": decision.get("ratio"),
                    "best": bool(decision.get("best")),
                    "eligible": decision.get("eligible"),
                    "reason": decision.get("reason", ""),
                }
            )
    selection = (meta or {}).get("selection") or {}
    chosen = {k: selection.get(k) for k in ("best_step", "reason", "checkpoint", "stopped_early", "guards")}
    return {"evaluations": rows, "chosen": chosen if selection else None}


def samples(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The greedy generations logged at each evaluation, newest evaluation first."""
    out = []
    for event in reversed([e for e in events if e.get("event") == "samples"][-MAX_SAMPLE_EVALS:]):
        items = [
            {k: str(item.get(k, ""))[:SAMPLE_CHARS] for k in ("prompt", "output", "gold")}
            for item in event.get("samples") or []
            if isinstance(item, dict)
        ]
        out.append({"step": event.get("step"), "items": items})
    return out


def lineage(data: dict[str, Any]) -> dict[str, Any]:
    """The data card: sources (hashes, counts), bad records with locations, dedup, masking ratio, the
    length histogram, packing efficiency, validator results."""
    steps = data.get("steps") or {}
    bad = steps.get("bad_records") or {}
    tokens = data.get("tokens") or {}
    packing = data.get("packing") or {}
    return {
        "key": data.get("key"),
        "sources": data.get("sources") or [],
        "hook": data.get("hook"),
        "records_read": steps.get("records_read"),
        "bad_records": {
            "count": bad.get("count", 0),
            "policy": bad.get("policy"),
            "locations": (bad.get("locations") or [])[:MAX_LOCATIONS],
        },
        "dedup_removed": steps.get("dedup_removed"),
        "near_dedup_removed": steps.get("near_dedup_removed"),
        "length": steps.get("length"),
        "split": steps.get("split"),
        "mix": (steps.get("mix") or {}).get("counts"),
        "supervised_ratio": {k: (v or {}).get("supervised_ratio") for k, v in tokens.items()},
        "tokens": tokens,
        "histogram": data.get("histogram") or [],
        "packing_efficiency": {k: (v or {}).get("efficiency") for k, v in packing.items()},
        "validators": data.get("validators") or [],
    }


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1]}}`` → ``{"a.b[0]": 1}``: the JSON paths a diff row names."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        out = {}
        for index, inner in enumerate(value):
            out.update(flatten(inner, f"{prefix}[{index}]"))
        return out
    return {prefix: json.dumps(value, ensure_ascii=False) if isinstance(value, list) else value}


def comparable(run: RunSource) -> dict[str, Any]:
    """What two runs of an expert are compared on: the training configuration and the data."""
    meta = read_json(run.meta) or {}
    data = read_json(run.data_meta) or {}
    manifest = meta.get("manifest") or {}
    base = meta.get("base_model") or {}
    config = {
        "plan": meta.get("plan"),
        "optimizer": meta.get("optimizer"),
        "training": manifest.get("training"),
        "base_model": {"name": base.get("name"), "weights_sha256": base.get("weights_sha256")},
        "chat_template_sha256": meta.get("chat_template_sha256"),
        "libraries": meta.get("libraries"),
    }
    data_part = {k: v for k, v in data.items() if k not in ("histogram", "parameters", "expertkit_version")}
    return {"config": config, "data": data_part, "results": meta.get("metrics")}


def diff(a: RunSource, b: RunSource) -> list[dict[str, Any]]:
    """Rows ``{path, this, other}`` where the two runs differ (configuration, data, results)."""
    left, right = flatten(comparable(a)), flatten(comparable(b))
    rows = [
        {"path": path, "this": left.get(path), "other": right.get(path)}
        for path in sorted(left.keys() | right.keys())
        if left.get(path) != right.get(path)
    ]
    return rows[:MAX_DIFF_ROWS]
