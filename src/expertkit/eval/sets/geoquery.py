"""GeoQuery (the text2sql-data JSON and its SQLite database): execution accuracy on a real database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from expertkit.eval.sets.base import EvalItem, read_json, spider_hardness
from expertkit.eval.tasks import create_tables, quote_name, sql_messages, sqlite_type

GEOQUERY_DB = "geography-db.added-in-2020.sqlite"


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


def load_geoquery(path: Path, answers: Path | None) -> list[EvalItem]:
    """One item per sentence, variables substituted into question and SQL; split = GeoQuery's query
    split (train / dev / test), bucket = hardness."""
    database = answers or path.parent / GEOQUERY_DB
    schema = sqlite_schema(database)
    items = []
    for q, record in enumerate(read_json(path)):
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
