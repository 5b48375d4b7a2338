"""Preprocessing hook of the SQL expert (the seed's expert-sql/preprocess.py, on Spider).

Turns each Spider record ``{question, query, db_id}`` into the fields the manifest's
``field_mapping`` reads: ``schema`` (canonical CREATE TABLE text generated from Spider's
``tables.json``), ``system`` (with ``Dialect: sqlite``) and the question and query unchanged but
for whitespace. Deduplication and length filtering are done by the pipeline's own preprocessing
settings in the manifest.

The hook contract: ``preprocess(records, manifest_dir) -> iterable of records``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

DIALECT = "sqlite"
TABLES = Path("../../../../shared/data/sql/spider/tables.json")
SYSTEM = f"You translate questions into one SQL query. Dialect: {DIALECT}. Answer with the query only."
_SPACES = re.compile(r"\s+")
_TYPE_NAMES = {"number": "INTEGER", "text": "TEXT", "time": "TEXT", "boolean": "BOOLEAN", "others": "TEXT"}


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def create_tables(database: dict[str, Any]) -> str:
    """Canonical CREATE TABLE statements: one per table, columns in order, keys declared."""
    tables = database["table_names_original"]
    columns: list[list[str]] = [[] for _ in tables]
    names = database["column_names_original"]
    for index, (table, column) in enumerate(names):
        if table < 0:
            continue
        kind = _TYPE_NAMES.get(database["column_types"][index], "TEXT")
        key = " PRIMARY KEY" if index in _primary_keys(database) else ""
        columns[table].append(f"  {_quote(column)} {kind}{key}")
    for source, target in database["foreign_keys"]:
        table, column = names[source]
        ref_table, ref_column = names[target]
        columns[table].append(
            f"  FOREIGN KEY ({_quote(column)}) REFERENCES {_quote(tables[ref_table])}({_quote(ref_column)})"
        )
    return "\n".join(
        f"CREATE TABLE {_quote(t)} (\n" + ",\n".join(cols) + "\n);" for t, cols in zip(tables, columns, strict=True)
    )


def _primary_keys(database: dict[str, Any]) -> set[int]:
    keys: set[int] = set()
    for key in database["primary_keys"]:
        keys.update(key if isinstance(key, list) else [key])
    return keys


@cache
def _schemas(tables_path: Path) -> dict[str, str]:
    databases = json.loads(tables_path.read_text(encoding="utf-8"))
    return {db["db_id"]: create_tables(db) for db in databases}


def preprocess(records: Iterable[dict[str, Any]], manifest_dir: Path) -> Iterator[dict[str, Any]]:
    """Add ``schema`` and ``system``; normalise whitespace in question and query."""
    schemas = _schemas((manifest_dir / TABLES).resolve())
    for record in records:
        schema = schemas.get(record.get("db_id", ""))
        if schema is None:
            raise ValueError(f"unknown db_id {record.get('db_id')!r}: not in {TABLES}")
        yield {
            **record,
            "schema": schema,
            "system": SYSTEM,
            "question": _SPACES.sub(" ", record["question"]).strip(),
            "query": _SPACES.sub(" ", record["query"]).strip(),
        }
