"""What an evaluation item is, and the readers every set format shares (errors name the file and line)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from expertkit.errors import DataError

Task = Literal["sql", "function", "cypher", "text"]
GEOQUERY_DB = "geography-db.added-in-2020.sqlite"


@dataclass(frozen=True)
class EvalItem:
    id: str
    messages: list[dict[str, str]]
    gold: str
    bucket: str
    task: Task
    database: Path | str | None = None  # a SQLite file, or a database name on the private PostgreSQL server
    truth: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None
    split: str = "test"  # the set's own split (GeoQuery's query split, "heldout" / "train" for BFCL and text2cypher)
    dialect: str = "sqlite"
    alternatives: tuple[str, ...] = ()  # every acceptable gold query (defog), when more than ``gold``


Loader = Callable[[Path, Path | None], list[EvalItem]]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}", "check --set / --answers") from exc


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise DataError(f"{path}:{number}: invalid JSON: {exc}", "fix the line") from exc
    return rows


def spider_hardness(sql: str) -> str:
    """An approximation of Spider's hardness levels from the gold query's components."""
    text = sql.lower()
    parts = sum(
        bool(re.search(pattern, text))
        for pattern in (
            r"\bjoin\b",
            r"\bgroup by\b",
            r"\border by\b",
            r"\(\s*select\b",
            r"\b(union|intersect|except)\b",
        )
    )
    return ("easy", "medium", "hard", "extra")[min(parts, 3)]
