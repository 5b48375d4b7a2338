"""The prompts of the three task families, shared by training hooks and evaluation.

The example experts' preprocessing hooks build their training conversations with these functions,
and ``expert-cli eval`` builds its prompts with the same ones, so an expert is evaluated on exactly
the prompt shape it was trained on (no drift between a hook's string and an eval's string).
"""

from __future__ import annotations

import json
import re
from typing import Any

from expertkit.manifest.sections import TOOLS_SYSTEM

SQL_SYSTEM = "You translate questions into one SQL query. Dialect: {dialect}. Answer with the query only."
JSON_SYSTEM = TOOLS_SYSTEM  # the function-calling expert's system line is its tools contract's default
CYPHER_SYSTEM = "You translate questions into one Cypher query for the given Neo4j graph schema."
# The fixed hold-outs, read by the example experts' hooks (which skip them) and by the set loaders
# (which mark them ``split="heldout"``): one definition, so training never sees an evaluation item.
BFCL_HOLDOUT_EVERY = 5  # BFCL items whose number is divisible by 5: a fixed 20% of every category
TEXT2CYPHER_HELDOUT = frozenset({"bluesky", "buzzoverflow", "stackoverflow2"})  # whole databases, never trained on
_TYPE_NAMES = {"number": "INTEGER", "text": "TEXT", "time": "TEXT", "boolean": "BOOLEAN", "others": "TEXT"}


def bfcl_held_out(item_id: str) -> bool:
    """Whether a BFCL item (``simple_python_12``) is in the evaluation hold-out."""
    number = item_id.rsplit("_", 1)[-1]
    return number.isdigit() and int(number) % BFCL_HOLDOUT_EVERY == 0


def text2cypher_held_out(database: str) -> bool:
    return database in TEXT2CYPHER_HELDOUT


def quote_name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


Column = tuple[str, str, bool]  # name, SQL type, primary key
ForeignKey = tuple[str, str, str]  # column, referenced table, referenced column


def create_tables(tables: list[tuple[str, list[Column], list[ForeignKey]]]) -> str:
    """Canonical CREATE TABLE text: one column per line, keys declared, names quoted only when needed."""
    statements = []
    for table, columns, foreign in tables:
        lines = [f"  {quote_name(name)} {kind}{' PRIMARY KEY' if primary else ''}" for name, kind, primary in columns]
        lines += [
            f"  FOREIGN KEY ({quote_name(column)}) REFERENCES {quote_name(ref_table)}({quote_name(ref_column)})"
            for column, ref_table, ref_column in foreign
        ]
        statements.append(f"CREATE TABLE {quote_name(table)} (\n" + ",\n".join(lines) + "\n);")
    return "\n".join(statements)


def sqlite_type(declared: str) -> str:
    """SQLite's type affinity of a declared type (``int(11)`` → INTEGER, ``varchar(3)`` → TEXT)."""
    upper = declared.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")) or not upper:
        return "TEXT"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def spider_create_tables(database: dict[str, Any]) -> str:
    """Canonical CREATE TABLE text of a Spider ``tables.json`` entry: columns in order, keys declared."""
    tables = database["table_names_original"]
    names = database["column_names_original"]
    primary: set[int] = set()
    for key in database["primary_keys"]:
        primary.update(key if isinstance(key, list) else [key])
    columns: list[list[Column]] = [[] for _ in tables]
    foreign: list[list[ForeignKey]] = [[] for _ in tables]
    for index, (table, column) in enumerate(names):
        if table >= 0:
            kind = _TYPE_NAMES.get(database["column_types"][index], "TEXT")
            columns[table].append((column, kind, index in primary))
    for source, target in database["foreign_keys"]:
        table, column = names[source]
        ref_table, ref_column = names[target]
        foreign[table].append((column, tables[ref_table], ref_column))
    return create_tables(list(zip(tables, columns, foreign, strict=True)))


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
