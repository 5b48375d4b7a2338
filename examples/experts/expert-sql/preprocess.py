"""Preprocessing hook of the SQL expert (the seed's expert-sql/preprocess.py, on Spider).

Turns each Spider record ``{question, query, db_id}`` (and each GeoQuery ``train`` query, one record
per sentence, on the real GeoQuery schema) into the fields the manifest's
``field_mapping`` reads: ``schema`` (canonical CREATE TABLE text generated from Spider's
``tables.json`` by :func:`expertkit.eval.tasks.spider_create_tables`), ``system`` (with ``Dialect:
sqlite``) and the question and query unchanged but
for whitespace. Deduplication and length filtering are done by the pipeline's own preprocessing
settings in the manifest.

The hook contract: ``preprocess(records, manifest_dir) -> iterable of records``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from expertkit.eval.sets import sqlite_schema
from expertkit.eval.tasks import SQL_SYSTEM, spider_create_tables

DIALECT = "sqlite"
TABLES = Path("../../../../shared/data/sql/spider/tables.json")
GEOQUERY_DB = Path("../../../../shared/data/sql/geoquery/geography-db.added-in-2020.sqlite")
SYSTEM = SQL_SYSTEM.format(dialect=DIALECT)  # the same prompt expert-cli eval uses
_SPACES = re.compile(r"\s+")


@cache
def _schemas(tables_path: Path) -> dict[str, str]:
    databases = json.loads(tables_path.read_text(encoding="utf-8"))
    return {db["db_id"]: spider_create_tables(db) for db in databases}


_ALIAS = re.compile(r"\b[A-Z_]+alias\d+\b")
_QUOTED = re.compile(r'"([^"]*)"')
_KEYWORDS = frozenset(
    {
        "SELECT",
        "FROM",
        "WHERE",
        "AS",
        "AND",
        "OR",
        "NOT",
        "IN",
        "GROUP",
        "BY",
        "ORDER",
        "HAVING",
        "LIMIT",
        "DISTINCT",
        "COUNT",
        "MAX",
        "MIN",
        "SUM",
        "AVG",
        "ASC",
        "DESC",
        "LIKE",
        "BETWEEN",
        "IS",
        "NULL",
        "UNION",
        "EXCEPT",
        "INTERSECT",
        "JOIN",
        "ON",
        "EXISTS",
    }
)
_WORD = re.compile(r"'(?:[^']|'')*'|\b[A-Za-z_][A-Za-z0-9_]*\b")


def canonical_geoquery_sql(query: str) -> str:
    """GeoQuery's gold SQL in the style the expert writes for Spider: lower-case names, ``T1``-style
    aliases, single-quoted strings, no trailing ``;`` (``CITYalias0.CITY_NAME`` → ``T1.city_name``).

    Half the target tokens of the original go, and with them a naming style found nowhere else in
    the training data. :func:`geoquery_records` checks that both queries return the same rows.
    """
    query = _QUOTED.sub(lambda m: "'" + m.group(1).replace("'", "''") + "'", query)
    aliases: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        word = match.group(0)
        if word.startswith("'") or word.upper() in _KEYWORDS:
            return word
        if _ALIAS.fullmatch(word):
            prefix = "D" if word.startswith("DERIVED_") else "T"
            return aliases.setdefault(word, f"{prefix}{sum(a[0] == prefix for a in aliases.values()) + 1}")
        return word.lower()

    query = _WORD.sub(rename, query).strip().rstrip(";").strip()
    query = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", query))
    return re.sub(r"\b(COUNT|MAX|MIN|SUM|AVG)\s+\(", r"\1(", re.sub(r"\s+,", ",", _SPACES.sub(" ", query)))


def _rows(database: Path, query: str) -> list[str] | None:
    """The query's rows (as sorted reprs) on the database, or None when SQLite cannot run it."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        try:
            return sorted(map(repr, connection.execute(query)))
        except sqlite3.Error:
            return None


def geoquery_records(record: dict[str, Any], manifest_dir: Path) -> Iterator[dict[str, Any]]:
    """A GeoQuery query of the ``train`` query split, one record per sentence (variables filled
    in), on the schema of the real GeoQuery database; dev and test queries are held out, and so is
    a gold query that SQLite cannot run."""
    if record.get("query-split") != "train":
        return
    database = (manifest_dir / GEOQUERY_DB).resolve()
    schema = sqlite_schema(database)
    for sentence in record["sentences"]:
        question, query = sentence["text"], record["sql"][0]
        for variable, value in sentence["variables"].items():
            question, query = question.replace(variable, value), query.replace(variable, value)
        gold = _rows(database, query)
        if gold is None:  # one train query uses `> ALL (...)`, which SQLite lacks: it teaches nothing runnable
            return
        canonical = canonical_geoquery_sql(query)
        if _rows(database, canonical) != gold:
            raise ValueError(f"canonical form of {query!r} returns other rows: {canonical!r}")
        yield {"schema": schema, "system": SYSTEM, "question": question, "query": canonical}


def preprocess(records: Iterable[dict[str, Any]], manifest_dir: Path) -> Iterator[dict[str, Any]]:
    """Add ``schema`` and ``system``; normalise whitespace in question and query. GeoQuery
    records (they have ``sentences``) become one record per training sentence. Records that are
    conversations already (``messages``: sparring and generated data, whose prompts ``eval`` built
    with the same schema and system text) pass through unchanged."""
    schemas = _schemas((manifest_dir / TABLES).resolve())
    for record in records:
        if "messages" in record:
            yield record
            continue
        if "sentences" in record:
            yield from geoquery_records(record, manifest_dir)
            continue
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
