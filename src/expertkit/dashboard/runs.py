"""Training runs as the dashboard shows them: found from the run records in ``$EXPERTKIT_HOME/runs/``
(see :mod:`expertkit.runs`) and from the weights directories of the expert directories it was pointed
at or that jobs name (a run trained before records existed, or one still being written).

A run is read from the files training wrote (``events.jsonl``, ``training_meta.json``, the prepared
data's ``dataset.meta.json``); nothing here writes, and no path is taken from a request: a run is
addressed by a key the listing made (its run id, or ``w-`` + a hash of its weights directory).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.events import EVENTS_FILE, read_events
from expertkit.home import expertkit_home
from expertkit.layout import TRAINING_META, WEIGHTS_DIR
from expertkit.runs import DATA_META, RUN_ID, continued_run_id, list_records

MAX_FILE_BYTES = 64 * 2**20  # a run file larger than this is not read (a 10,000-step run writes ~3 MB)
LIVE_WITHIN_S = 600.0  # a run without an ``end`` event is shown as running while its events are this fresh
DATA_CACHE = ("cache", "data")


@dataclass(frozen=True)
class RunSource:
    """Where one run's files are (``None``: not written, or not readable)."""

    key: str
    expert: str
    model: str
    started: float
    events: Path | None
    meta: Path | None
    data_meta: Path | None
    weights_dir: Path
    recorded: bool


def _file(path: Path) -> Path | None:
    try:
        return path if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES else None
    except OSError:
        return None


def read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def data_meta_for(meta: dict[str, Any] | None) -> Path | None:
    """The prepared data's lineage in the home's data cache, by the run's data hash (never a stored path)."""
    digest = ((meta or {}).get("data") or {}).get("lineage_hash")
    if not isinstance(digest, str) or not digest.isalnum():
        return None
    return _file(expertkit_home().joinpath(*DATA_CACHE, digest, DATA_META))


def find_runs(expert_dirs: list[Path]) -> list[RunSource]:
    """Every run the dashboard can show, newest first."""
    found: list[RunSource] = []
    recorded: set[str] = set()
    for record in list_records():
        recorded.add(record.run_id)
        base = record.directory if record.archived else None
        live = base is None and continued_run_id(record.weights_dir) == record.run_id
        where = base or (record.weights_dir if live else None)
        events = _file(where / EVENTS_FILE) if where else None
        meta = _file(where / TRAINING_META) if where else None
        data = _file(record.directory / DATA_META) or data_meta_for(read_json(meta))
        found.append(
            RunSource(
                record.run_id, record.expert, record.model, record.started, events, meta, data, record.weights_dir, True
            )
        )
    for weights in _weights_dirs(expert_dirs):
        if continued_run_id(weights) in recorded:
            continue
        events, meta = _file(weights / EVENTS_FILE), _file(weights / TRAINING_META)
        if events is None and meta is None:
            continue
        started = (events or meta or weights).stat().st_mtime
        key = "w-" + hashlib.sha256(str(weights.resolve()).encode()).hexdigest()[:12]
        name = (read_json(meta) or {}).get("expert", {}).get("name") or weights.parent.parent.name
        found.append(
            RunSource(
                key, str(name), weights.name, started, events, meta, data_meta_for(read_json(meta)), weights, False
            )
        )
    return sorted(found, key=lambda r: r.started, reverse=True)


def _weights_dirs(expert_dirs: list[Path]) -> list[Path]:
    seen: dict[Path, None] = {}
    for directory in expert_dirs:
        for weights in sorted((directory / WEIGHTS_DIR).glob("*/")):
            seen.setdefault(weights.resolve(), None)
    return list(seen)


def find_run(expert_dirs: list[Path], key: str) -> RunSource | None:
    if not (RUN_ID.match(key) or (key.startswith("w-") and key[2:].isalnum())):
        return None
    return next((r for r in find_runs(expert_dirs) if r.key == key), None)


def run_status(events: list[dict[str, Any]], now: float | None = None) -> str:
    """``finished``, ``stopped_early``, ``interrupted``, ``running``, ``incomplete`` (no end, gone quiet)."""
    if not events:
        return "no events"
    ends = [e for e in events if e.get("event") == "end"]
    last_start = max((i for i, e in enumerate(events) if e.get("event") == "start"), default=-1)
    if ends and events.index(ends[-1]) > last_start:
        return str(ends[-1].get("status", "finished"))
    fresh = (now or time.time()) - float(events[-1].get("time", 0)) < LIVE_WITHIN_S
    return "running" if fresh else "incomplete"


def summary_row(run: RunSource, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One line of the runs table."""
    events = read_events(run.events) if events is None and run.events else (events or [])
    steps = [e for e in events if e.get("event") == "step"]
    evals = [e for e in events if e.get("event") == "eval" and isinstance(e.get("eval_loss"), int | float)]
    starts = [e for e in events if e.get("event") == "start"]
    best = min(evals, key=lambda e: e["eval_loss"]) if evals else None
    return {
        "key": run.key,
        "expert": run.expert,
        "model": run.model,
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)),
        "status": run_status(events),
        "step": steps[-1]["step"] if steps else 0,
        "total_steps": starts[-1].get("total_steps") if starts else None,
        "loss": round(steps[-1]["loss"], 4) if steps and isinstance(steps[-1].get("loss"), float) else None,
        "best_eval_loss": round(best["eval_loss"], 4) if best else None,
        "recorded": run.recorded,
    }
