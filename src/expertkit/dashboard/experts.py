"""The experts page's data: installed experts with their evaluations against the base model.

An installed expert's evaluations are the ones its package shipped (``evaluation/<set>.json``, made on
the adapter it ships) and the base model's own results under it (``$EXPERTKIT_HOME/evals/<name>/base``).
These files come from packages, so they are read bounded and only the fields shown are taken.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from expertkit.home import expertkit_home
from expertkit.layout import BASE_EVALS, EVALS_DIR
from expertkit.package.store import list_installed

MAX_RESULT_BYTES = 4 * 1024 * 1024
SHOWN = ("metric", "n", "expert", "baseline", "delta", "ci95", "base")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def evaluations(directory: Path, name: str) -> list[dict[str, Any]]:
    """One row per evaluation set: the shipped result's figures and gate, and the base model's score."""
    rows = []
    for path in sorted((directory / "evaluation").glob("*.json")):
        body = _read(path)
        if body is None:
            continue
        row = {key: body.get(key) for key in SHOWN}
        summary = body.get("expert_summary")
        if row["expert"] is None and isinstance(summary, dict):
            row["expert"] = summary.get("score")
        gate = body.get("gate")
        row["gate"] = gate.get("passed") if isinstance(gate, dict) else None
        row["set"] = path.stem
        base = _read(expertkit_home() / EVALS_DIR / name / BASE_EVALS / path.name)
        row["base"] = base.get("base") if base else None
        rows.append(row)
    return rows


def installed_experts() -> list[dict[str, Any]]:
    return [
        {**record.to_json(), "evaluations": evaluations(Path(record.path), record.name)} for record in list_installed()
    ]
