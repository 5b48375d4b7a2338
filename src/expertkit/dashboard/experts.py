"""The experts page's data: installed experts with their lock and their evaluations against the base
model, per set and per bucket.

An installed expert's evaluations are the ones its package shipped (``evaluation/<set>.json``, made on
the adapter it ships) and the base model's own results under it (``$EXPERTKIT_HOME/evals/<name>/base``).
These files come from packages, so they are read bounded and only the fields shown are taken. The lock
status compares the files the lock lists with the installed files (sha256, remembered per file size and
modification time, so a page load does not hash every adapter again); the re-verify button does the
full check, signature included.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from expertkit.errors import ExpertkitError
from expertkit.home import expertkit_home
from expertkit.layout import BASE_EVALS, EVALS_DIR, LOCK_FILE
from expertkit.package.lock import parse_lock
from expertkit.package.store import list_installed

MAX_RESULT_BYTES = 4 * 1024 * 1024
FORGETTING = "forgetting.json"  # eval --forgetting: drift from the base model, shown apart from the task sets
SHOWN = ("metric", "n", "expert", "baseline", "delta", "ci95", "base")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _buckets(body: dict[str, Any], summary: dict[str, Any], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per bucket: the expert, the baseline it was compared with (if any) and the base model alone. A
    comparison has ``buckets`` at the top; an evaluation without a baseline has them in its summary."""
    theirs = (base or {}).get("buckets") or {}
    buckets = body.get("buckets") or summary.get("buckets") or {}
    rows = []
    for bucket, row in sorted(buckets.items() if isinstance(buckets, dict) else []):
        if isinstance(row, dict):
            alone = theirs.get(bucket)
            rows.append(
                {
                    "bucket": str(bucket),
                    "n": row.get("n"),
                    "expert": row.get("expert", row.get("score")),
                    "baseline": row.get("baseline"),
                    "base": alone.get("base") if isinstance(alone, dict) else None,
                }
            )
    return rows


def evaluations(directory: Path, name: str) -> list[dict[str, Any]]:
    """One row per evaluation set: the shipped result's figures and gate, and the base model's score."""
    rows = []
    for path in sorted((directory / "evaluation").glob("*.json")):
        body = _read(path)
        if body is None or path.name == FORGETTING:
            continue
        row = {key: body.get(key) for key in SHOWN}
        found = body.get("expert_summary")
        summary: dict[str, Any] = found if isinstance(found, dict) else {}
        for key, fallback in (("expert", "score"), ("metric", "metric"), ("n", "n")):
            if row[key] is None:
                row[key] = summary.get(fallback)
        gate = body.get("gate")
        row["gate"] = gate.get("passed") if isinstance(gate, dict) else None
        row["set"] = path.stem
        base = _read(expertkit_home() / EVALS_DIR / name / BASE_EVALS / path.name)
        row["base"] = base.get("base") if base else None
        row["gate_failures"] = gate.get("failures") if isinstance(gate, dict) else None
        row["buckets"] = _buckets(body, summary, base)
        rows.append(row)
    return rows


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def lock_status(directory: Path) -> dict[str, Any]:
    """What the installed expert's ``expert.lock.json`` pins, and whether its files still match."""
    path = directory / LOCK_FILE
    if not path.is_file() or path.stat().st_size > MAX_RESULT_BYTES:
        return {"state": "missing"}
    try:
        lock = parse_lock(path.read_bytes(), str(directory))
    except ExpertkitError as exc:
        return {"state": "invalid", "problem": exc.message}
    changed = []
    for name, digest in lock.files.items():
        target = directory / name
        inside = target.resolve().is_relative_to(directory.resolve())
        if not inside or not target.is_file() or _sha256(target) != digest:
            changed.append(name)
    return {
        "state": "matches" if not changed else "changed",
        "changed": changed,
        "files": len(lock.files),
        "base_model": lock.base_model.name,
        "weights_sha256": lock.base_model.weights_sha256,
        "template_sha256": lock.chat_template.sha256,
    }


def forgetting(directory: Path) -> dict[str, Any] | None:
    """The shipped forgetting summary (KL against the base, match rate, per bucket) and its gate."""
    body = _read(directory / "evaluation" / FORGETTING) or {}
    summary, gate = body.get("summary"), body.get("gate")
    if not isinstance(summary, dict):
        return None
    gate = gate if isinstance(gate, dict) else {}
    keys = ("n", "kl", "kl_ci95", "match", "match_ci95")
    found = summary.get("buckets")
    buckets: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        **{k: summary.get(k) for k in keys},
        "buckets": {str(b): {k: row.get(k) for k in keys} for b, row in buckets.items() if isinstance(row, dict)},
        "gate": gate.get("passed"),
    }


def installed_experts() -> list[dict[str, Any]]:
    return [
        {
            **record.to_json(),
            "lock": lock_status(Path(record.path)),
            "evaluations": evaluations(Path(record.path), record.name),
            "forgetting": forgetting(Path(record.path)),
        }
        for record in list_installed()
    ]
