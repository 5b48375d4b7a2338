"""Run records: every training run keeps a small record in ``$EXPERTKIT_HOME/runs/<expert>/<run-id>/``.

An expert directory holds only its *latest* run per base model (``weights/<model>/``: the next ``train``
replaces it), so past runs would be lost to anyone who wants to compare them. Training registers a
record when a run starts (``run.json``: expert, directories, base model, start time) and copies the
run's small files into it when the run ends (``events.jsonl``, ``training_meta.json`` and the prepared
data's ``dataset.meta.json``): kilobytes, never weights. The run id is also written into the run's
``start`` event, so a reader can tell whether the live ``events.jsonl`` in the weights directory still
belongs to a record (a run that crashed has a record without copies).

``--resume`` and later curriculum phases continue the run they belong to (the same id, whose copies
the next finish replaces). The dashboard lists and compares runs from here; training is the only writer.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.events import EVENTS_FILE, read_events
from expertkit.fsutil import write_text_atomic
from expertkit.home import expertkit_home
from expertkit.layout import TRAINING_META

RUNS_DIR = "runs"
RUN_FILE = "run.json"
DATA_META = "dataset.meta.json"
RUN_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
COPIED = (EVENTS_FILE, TRAINING_META)


@dataclass(frozen=True)
class RunRecord:
    """One run's record directory and what ``run.json`` says about it."""

    directory: Path
    run_id: str
    expert: str
    expert_dir: Path
    weights_dir: Path
    model: str
    started: float

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "expert": self.expert,
            "expert_dir": str(self.expert_dir),
            "weights_dir": str(self.weights_dir),
            "model": self.model,
            "started": self.started,
        }

    @property
    def archived(self) -> bool:
        """Whether the run's files were copied in (the run finished or was interrupted cleanly)."""
        return (self.directory / EVENTS_FILE).is_file()


def runs_root() -> Path:
    return expertkit_home() / RUNS_DIR


def new_run_id(now: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time())) + "-" + secrets.token_hex(3)


def continued_run_id(weights_dir: Path) -> str | None:
    """The run id a resumed run or a later phase continues: the first ``start`` event's."""
    for event in read_events(weights_dir / EVENTS_FILE):
        if event.get("event") == "start":
            value = event.get("run_id")
            return value if isinstance(value, str) and RUN_ID.match(value) else None
    return None


def register_run(run_id: str, expert: str, expert_dir: Path, weights_dir: Path, model: str) -> RunRecord:
    """Create (or keep, for a continued run) the record of ``run_id``."""
    directory = runs_root() / expert / run_id
    existing = read_record(directory)
    if existing is not None:
        return existing
    record = RunRecord(directory, run_id, expert, expert_dir.resolve(), weights_dir.resolve(), model, time.time())
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(directory / RUN_FILE, json.dumps(record.to_json(), indent=2) + "\n")
    return record


def archive_run(record: RunRecord, dataset_meta: dict[str, Any] | None) -> None:
    """Copy the run's small files into its record (each through a temp file, then renamed). A file the
    run did not write (older than the record: a previous run's meta, when this one stopped early) is not
    taken for this run's."""
    for name in COPIED:
        source = record.weights_dir / name
        if source.is_file() and source.stat().st_mtime >= record.started - 1.0:
            temp = record.directory / f".{name}.tmp"
            shutil.copyfile(source, temp)
            temp.replace(record.directory / name)
    if dataset_meta is not None:
        text = json.dumps(dataset_meta, indent=2, ensure_ascii=False, default=str) + "\n"
        write_text_atomic(record.directory / DATA_META, text)


def read_record(directory: Path) -> RunRecord | None:
    """The record in ``directory``, or ``None`` when it has no readable ``run.json``."""
    try:
        data = json.loads((directory / RUN_FILE).read_text(encoding="utf-8"))
        return RunRecord(
            directory,
            str(data["run_id"]),
            str(data["expert"]),
            Path(data["expert_dir"]),
            Path(data["weights_dir"]),
            str(data["model"]),
            float(data["started"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_records(root: Path | None = None) -> list[RunRecord]:
    """Every readable record, newest first."""
    base = root or runs_root()
    found = [read_record(d) for d in base.glob("*/*") if d.is_dir() and RUN_ID.match(d.name)]
    return sorted((r for r in found if r is not None), key=lambda r: r.started, reverse=True)
