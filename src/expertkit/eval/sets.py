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
from expertkit.eval.tasks import (
    bfcl_held_out,
    create_tables,
    cypher_messages,
    function_messages,
    quote_name,
    spider_create_tables,
    sql_messages,
    sqlite_type,
    text2cypher_held_out,
)
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
    database: Path | str | None = None  # a SQLite file, or a database name on the private PostgreSQL server
    truth: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None
    split: str = "test"  # the set's own split (GeoQuery's query split, "heldout" / "train" for BFCL and text2cypher)
    dialect: str = "sqlite"
    alternatives: tuple[str, ...] = ()  # every acceptable gold query (defog), when more than ``gold``


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
        bucket = spider_hardness(row["query"])
        items.append(EvalItem(f"spider-{index}", messages, row["query"], bucket, "sql", split="dev"))
    return items


def sqlite_schema(database: Path) -> str:
    """The database's tables as canonical CREATE TABLE text, in the same shape as Spider's
    (:func:`~expertkit.eval.tasks.create_tables`): a real database's DDL (quoted names, DEFAULT
    clauses, MySQL types) costs the prompt twice the tokens and differs from what the expert saw."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        names = [
            row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        tables = []
        for name in names:
            info = connection.execute(f"PRAGMA table_info({quote_name(name)})").fetchall()
            keys = connection.execute(f"PRAGMA foreign_key_list({quote_name(name)})").fetchall()
            columns = [(column[1], sqlite_type(column[2]), bool(column[5])) for column in info]
            foreign = [(key[3], key[2], key[4]) for key in keys]
            tables.append((name, columns, foreign))
    return create_tables(tables)


@SET_LOADERS.register("geoquery")
def load_geoquery(path: Path, answers: Path | None) -> list[EvalItem]:
    """One item per sentence, variables substituted into question and SQL; split = GeoQuery's query
    split (train / dev / test), bucket = hardness."""
    database = answers or path.parent / GEOQUERY_DB
    schema = sqlite_schema(database)
    items = []
    for q, record in enumerate(_json(path)):
        for s, sentence in enumerate(record["sentences"]):
            question, sql = sentence["text"], record["sql"][0]
            for variable, value in sentence["variables"].items():
                question, sql = question.replace(variable, value), sql.replace(variable, value)
            messages = sql_messages(schema, question)
            bucket = spider_hardness(sql)
            items.append(
                EvalItem(f"geoquery-{q}-{s}", messages, sql, bucket, "sql", database, split=record["query-split"])
            )
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
        split = "heldout" if bfcl_held_out(row["id"]) else "train"
        gold = json.dumps(truth)
        items.append(EvalItem(row["id"], messages, gold, bucket, "function", None, truth, row["function"], split))
    return items


@SET_LOADERS.register("text2cypher")
def load_text2cypher(path: Path, answers: Path | None) -> list[EvalItem]:
    """Rows whose checks passed (no syntax error, no timeout); bucket = database, split = "heldout"
    for the databases no expert trains on (:data:`~expertkit.eval.tasks.TEXT2CYPHER_HELDOUT`)."""
    csv.field_size_limit(1 << 30)
    with (answers or path.parent / "text2cypher_schemas.csv").open(encoding="utf-8", newline="") as handle:
        schemas = {row["database"]: row["schema"] for row in csv.DictReader(handle)}
    items = []
    with path.open(encoding="utf-8", newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if row.get("syntax_error") != "False" or row.get("timeout") != "False" or row["database"] not in schemas:
                continue
            messages = cypher_messages(schemas[row["database"]], row["question"])
            split = "heldout" if text2cypher_held_out(row["database"]) else "train"
            item = EvalItem(f"text2cypher-{index}", messages, row["cypher"], row["database"], "cypher", split=split)
            items.append(item)
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
        bucket, split = row.get("bucket", "all"), row.get("split", "test")
        items.append(EvalItem(f"jsonl-{index}", messages[:-1], messages[-1]["content"], bucket, task, split=split))
    return items


def load_set(path: Path, format_name: str, answers: Path | None = None) -> list[EvalItem]:
    if format_name not in SET_LOADERS:
        raise DataError(f"unknown set format {format_name!r}", f"choose one of: {', '.join(SET_LOADERS)}")
    if not path.exists():
        raise DataError(f"evaluation set {path} does not exist", "check --set")
    return SET_LOADERS[format_name](path, answers)


from expertkit.eval import defog as _defog  # noqa: E402,F401  (registers the "defog" loader, which needs EvalItem)
