"""Evaluation sets in their upstream formats, turned into prompts (the task prompts the experts
train on), gold answers and buckets. Loaders are chosen by ``--format`` from :data:`SET_LOADERS`."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from expertkit.errors import DataError
from expertkit.eval.tasks import cypher_messages, function_messages, spider_create_tables, sql_messages
from expertkit.registry import Registry

Task = Literal["sql", "function", "cypher", "text"]
GEOQUERY_DB = "geography-db.added-in-2020.sqlite"


@dataclass(frozen=True)
class EvalItem:
    id: str
    messages: list[dict[str, str]]
    gold: str
    bucket: str
    task: Task
    database: Path | None = None
    truth: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None


Loader = Callable[[Path, Path | None], list[EvalItem]]
SET_LOADERS: Registry[Loader] = Registry()


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}", "check --set / --answers") from exc


def _jsonl(path: Path) -> list[dict[str, Any]]:
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


@SET_LOADERS.register("spider")
def load_spider(path: Path, answers: Path | None) -> list[EvalItem]:
    tables = answers or path.parent / "tables.json"
    schemas = {db["db_id"]: spider_create_tables(db) for db in _json(tables)}
    items = []
    for index, row in enumerate(_json(path)):
        schema = schemas.get(row["db_id"])
        if schema is None:
            raise DataError(
                f"{path}: row {index} names db_id {row['db_id']!r}, not in {tables}", "pass --answers tables.json"
            )
        messages = sql_messages(schema, " ".join(row["question"].split()))
        items.append(EvalItem(f"spider-{index}", messages, row["query"], spider_hardness(row["query"]), "sql"))
    return items


def sqlite_schema(database: Path) -> str:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL").fetchall()
    return "\n".join(f"{sql.strip()};" for (sql,) in rows)


@SET_LOADERS.register("geoquery")
def load_geoquery(path: Path, answers: Path | None) -> list[EvalItem]:
    """One item per sentence, variables substituted into question and SQL; bucket = query split."""
    database = answers or path.parent / GEOQUERY_DB
    schema = sqlite_schema(database)
    items = []
    for q, record in enumerate(_json(path)):
        for s, sentence in enumerate(record["sentences"]):
            question, sql = sentence["text"], record["sql"][0]
            for variable, value in sentence["variables"].items():
                question, sql = question.replace(variable, value), sql.replace(variable, value)
            messages = sql_messages(schema, question)
            items.append(EvalItem(f"geoquery-{q}-{s}", messages, sql, record["query-split"], "sql", database))
    return items


@SET_LOADERS.register("bfcl")
def load_bfcl(path: Path, answers: Path | None) -> list[EvalItem]:
    truth_path = answers or path.parent / "possible_answer" / path.name
    truths = {row["id"]: row["ground_truth"] for row in _jsonl(truth_path)}
    items = []
    for row in _jsonl(path):
        if row["id"] not in truths:
            raise DataError(f"{path}: no ground truth for {row['id']!r} in {truth_path}", "pass --answers")
        question = [t for group in row["question"] for t in group if t.get("role") == "user"][-1]["content"]
        truth = truths[row["id"]]
        bucket = row["id"].rsplit("_", 1)[0]
        messages = function_messages(row["function"], question)
        items.append(EvalItem(row["id"], messages, json.dumps(truth), bucket, "function", None, truth, row["function"]))
    return items


@SET_LOADERS.register("text2cypher")
def load_text2cypher(path: Path, answers: Path | None) -> list[EvalItem]:
    """Rows whose checks passed (no syntax error, no timeout); bucket = database."""
    csv.field_size_limit(1 << 30)
    with (answers or path.parent / "text2cypher_schemas.csv").open(encoding="utf-8", newline="") as handle:
        schemas = {row["database"]: row["schema"] for row in csv.DictReader(handle)}
    items = []
    with path.open(encoding="utf-8", newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if row.get("syntax_error") != "False" or row.get("timeout") != "False" or row["database"] not in schemas:
                continue
            messages = cypher_messages(schemas[row["database"]], row["question"])
            items.append(EvalItem(f"text2cypher-{index}", messages, row["cypher"], row["database"], "cypher"))
    return items


@SET_LOADERS.register("jsonl")
def load_jsonl(path: Path, answers: Path | None) -> list[EvalItem]:
    """Our own format: ``{"messages": [..., {"role": "assistant", "content": gold}], "bucket": ...}``."""
    items = []
    for index, row in enumerate(_jsonl(path)):
        messages = row.get("messages") or []
        if not messages or messages[-1].get("role") != "assistant":
            raise DataError(f"{path}:{index + 1}: the last message must be the assistant's gold answer", "fix the line")
        task = row.get("task", "text")
        items.append(EvalItem(f"jsonl-{index}", messages[:-1], messages[-1]["content"], row.get("bucket", "all"), task))
    return items


def load_set(path: Path, format_name: str, answers: Path | None = None) -> list[EvalItem]:
    if format_name not in SET_LOADERS:
        raise DataError(f"unknown set format {format_name!r}", f"choose one of: {', '.join(SET_LOADERS)}")
    if not path.exists():
        raise DataError(f"evaluation set {path} does not exist", "check --set")
    return SET_LOADERS[format_name](path, answers)
