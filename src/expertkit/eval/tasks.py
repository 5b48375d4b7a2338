"""The prompts of the three task families, shared by training hooks and evaluation.

The example experts' preprocessing hooks build their training conversations with these functions,
and ``expert-cli eval`` builds its prompts with the same ones, so an expert is evaluated on exactly
the prompt shape it was trained on (no drift between a hook's string and an eval's string).
"""

from __future__ import annotations

import json
import re
from typing import Any

SQL_SYSTEM = "You translate questions into one SQL query. Dialect: {dialect}. Answer with the query only."
JSON_SYSTEM = 'You call functions. Answer with the JSON call only: {"name": ..., "arguments": {...}}.'
CYPHER_SYSTEM = "You translate questions into one Cypher query for the given Neo4j graph schema."
_TYPE_NAMES = {"number": "INTEGER", "text": "TEXT", "time": "TEXT", "boolean": "BOOLEAN", "others": "TEXT"}


def quote_name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def spider_create_tables(database: dict[str, Any]) -> str:
    """Canonical CREATE TABLE text of a Spider ``tables.json`` entry: columns in order, keys declared."""
    tables = database["table_names_original"]
    names = database["column_names_original"]
    primary: set[int] = set()
    for key in database["primary_keys"]:
        primary.update(key if isinstance(key, list) else [key])
    columns: list[list[str]] = [[] for _ in tables]
    for index, (table, column) in enumerate(names):
        if table >= 0:
            kind = _TYPE_NAMES.get(database["column_types"][index], "TEXT")
            columns[table].append(f"  {quote_name(column)} {kind}{' PRIMARY KEY' if index in primary else ''}")
    for source, target in database["foreign_keys"]:
        table, column = names[source]
        ref_table, ref_column = names[target]
        reference = f"{quote_name(tables[ref_table])}({quote_name(ref_column)})"
        columns[table].append(f"  FOREIGN KEY ({quote_name(column)}) REFERENCES {reference}")
    return "\n".join(
        f"CREATE TABLE {quote_name(t)} (\n" + ",\n".join(cols) + "\n);" for t, cols in zip(tables, columns, strict=True)
    )


def sql_messages(schema: str, question: str, dialect: str = "sqlite") -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SQL_SYSTEM.format(dialect=dialect)},
        {"role": "user", "content": f"{schema}\n\nQuestion: {question}"},
    ]


def function_messages(functions: list[dict[str, Any]], question: str) -> list[dict[str, str]]:
    compact = json.dumps(functions, ensure_ascii=False, separators=(",", ":"))
    return [
        {"role": "system", "content": JSON_SYSTEM},
        {"role": "user", "content": f"Functions: {compact}\n\n{question}"},
    ]


def cypher_messages(schema: str, question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": CYPHER_SYSTEM},
        {"role": "user", "content": f"{schema}\n\nQuestion: {question}"},
    ]
