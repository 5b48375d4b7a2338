"""Checkpoint directories: names, the ledger sidecar, atomic publication, resume lookup, rotation.

The Trainer writes a checkpoint into a staging directory; it becomes visible as
``checkpoints/checkpoint-{step}-{YYYYMMDD}-{HHMM}`` only after its ledger is written, by one
rename. A run killed mid-save leaves only a ``.staging`` directory, which the next run removes, so
``--resume`` never sees a half-written checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from expertkit.errors import UsageError
from expertkit.fsutil import write_text_atomic

LEDGER_FILE = ".ledger.json"
STAGING_DIR = ".staging"
_NAME = re.compile(r"^checkpoint-(\d+)-(\d{8})-(\d{4})$")


def checkpoint_name(step: int, when: float | None = None) -> str:
    return f"checkpoint-{step}-{time.strftime('%Y%m%d-%H%M', time.localtime(when))}"


def checkpoint_step(path: Path) -> int | None:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Published checkpoints (name matches and ledger present), oldest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted((p for p in found if (p / LEDGER_FILE).is_file()), key=lambda p: checkpoint_step(p) or 0)


def newest_checkpoint(root: Path) -> Path | None:
    checkpoints = complete_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


class CheckpointLedger(BaseModel):
    """``.ledger.json``: where the run stood when the checkpoint was written (what ``--resume`` reads)."""

    model_config = ConfigDict(extra="allow")

    step: int
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_seen: int = 0
    learning_rate: float | None = None
    wall_time_s: float | None = None
    data_hash: str | None = None
    best_step: int | None = None
    selection: list[dict[str, Any]] = Field(default_factory=list)


def read_ledger(checkpoint: Path) -> CheckpointLedger:
    path = checkpoint / LEDGER_FILE
    try:
        return CheckpointLedger.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise UsageError(
            f"{path}: not a checkpoint ledger: {exc.errors()[0]['msg']}",
            f"delete {checkpoint.name} to resume from an earlier checkpoint, or train without --resume",
        ) from exc


def publish_checkpoint(staged: Path, root: Path, ledger: CheckpointLedger) -> Path:
    """Write the ledger into ``staged`` and rename it into ``root`` under its final name."""
    write_text_atomic(staged / LEDGER_FILE, json.dumps(ledger.model_dump(mode="json"), indent=2) + "\n")
    final = root / checkpoint_name(ledger.step)
    if final.exists():  # the same step published earlier in the same minute (e.g. a repeated resume)
        shutil.rmtree(final)
    staged.replace(final)
    return final


def clear_staging(root: Path) -> None:
    shutil.rmtree(root / STAGING_DIR, ignore_errors=True)


def rotate_checkpoints(root: Path, keep_last: int, keep_steps: set[int]) -> list[Path]:
    """Delete published checkpoints except the newest ``keep_last`` and those at ``keep_steps``."""
    checkpoints = complete_checkpoints(root)
    newest = set(checkpoints[-keep_last:]) if keep_last else set()
    removed = []
    for path in checkpoints:
        if path in newest or checkpoint_step(path) in keep_steps:
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed
