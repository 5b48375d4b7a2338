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


def geoquery_records(record: dict[str, Any], manifest_dir: Path) -> Iterator[dict[str, Any]]:
    """A GeoQuery query of the ``train`` query split, one record per sentence (variables filled
    in), on the schema of the real GeoQuery database; dev and test queries are held out."""
    if record.get("query-split") != "train":
        return
    schema = sqlite_schema((manifest_dir / GEOQUERY_DB).resolve())
    for sentence in record["sentences"]:
        question, query = sentence["text"], record["sql"][0]
        for variable, value in sentence["variables"].items():
            question, query = question.replace(variable, value), query.replace(variable, value)
        yield {"schema": schema, "system": SYSTEM, "question": question, "query": _SPACES.sub(" ", query).strip()}


def preprocess(records: Iterable[dict[str, Any]], manifest_dir: Path) -> Iterator[dict[str, Any]]:
    """Add ``schema`` and ``system``; normalise whitespace in question and query. GeoQuery
    records (they have ``sentences``) become one record per training sentence."""
    schemas = _schemas((manifest_dir / TABLES).resolve())
    for record in records:
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
