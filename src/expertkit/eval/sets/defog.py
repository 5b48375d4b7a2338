"""The defog ``sql-eval`` set: questions per dialect (``questions_gen_<dialect>.csv``) over eleven
databases shipped as PostgreSQL dumps (``databases/<db>/<db>.sql``, column list in ``<db>.json``).

Every database is loaded into a private PostgreSQL server (:mod:`expertkit.eval.postgres`). The
PostgreSQL questions run there; the SQLite questions run on a SQLite copy made from that load
(table by table, values converted), so both dialects see the same rows, including the dates the
dumps compute at load time (``NOW()``, ``CURRENT_DATE``). A gold cell may hold several acceptable
queries separated by ``;``, and ``{a,b}`` means any non-empty subset of those columns (with
``GROUP BY {}`` following the choice), expanded as sql-eval's ``get_all_minimal_queries`` does.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

from expertkit.errors import DataError
from expertkit.eval.postgres import PostgresServer, shared_server
from expertkit.eval.sets.base import EvalItem
from expertkit.eval.tasks import create_tables, sql_messages, sqlite_type
from expertkit.fsutil import atomic_directory
from expertkit.home import expertkit_home
from expertkit.models.fingerprint import sha256_file

DIALECTS = {"sqlite": "sqlite", "postgres": "postgres"}
SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema')"


def gold_alternatives(cell: str) -> list[str]:
    """Every acceptable gold query of a cell: split on ``;``, braces expanded to column subsets."""
    queries = []
    for query in (q.strip() for q in cell.split(";")):
        start, end = query.find("{"), query.find("}")
        if not query:
            continue
        if start < 0 or end < start or query[start + 1 : end].strip() == "":
            queries.append(query)
            continue
        options = [o.strip() for o in query[start + 1 : end].split(",")]
        for size in range(1, len(options) + 1):
            for chosen in itertools.combinations(options, size):
                columns = ", ".join(chosen)
                right = query[end + 1 :].replace("GROUP BY {}", f"GROUP BY {columns}")
                queries.append(query[:start] + columns + right)
    return queries


def defog_schema(metadata: Path, dialect: str) -> str:
    tables = json.loads(metadata.read_text(encoding="utf-8"))["table_metadata"]
    rendered: list[tuple[str, list[tuple[str, str, bool]], list[tuple[str, str, str]]]] = []
    for table, columns in tables.items():
        kinds = [(c["column_name"], _type(c["data_type"], dialect), False) for c in columns]
        rendered.append((table, kinds, []))
    return create_tables(rendered)


def _type(declared: str, dialect: str) -> str:
    return sqlite_type(declared) if dialect == "sqlite" else declared.upper()


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return value


def sqlite_copy(server: PostgresServer, database: str, dump: Path) -> Path:
    """A SQLite file with the rows of the loaded PostgreSQL ``database`` (cached per dump and day);
    tables of every schema land in SQLite's one namespace (``consumer_div.users`` → ``users``)."""
    key = f"{database}-{sha256_file(dump)[:12]}-{datetime.date.today().isoformat()}"
    target = expertkit_home() / "cache" / "defog" / key
    if (target / f"{database}.sqlite").is_file():
        return target / f"{database}.sqlite"
    server.load(database, dump)
    with server.connect(database) as source, atomic_directory(target, replace=True) as staged:
        columns = source.execute(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema NOT IN {SYSTEM_SCHEMAS} ORDER BY table_schema, table_name, ordinal_position"
        ).fetchall()
        copy = sqlite3.connect(staged / f"{database}.sqlite")
        for (schema, table), group in itertools.groupby(columns, key=lambda row: row[:2]):
            names = [(name, sqlite_type(kind)) for _, _, name, kind in group]
            copy.execute(f'CREATE TABLE "{table}" ({", ".join(f"{n} {k}" for n, k in names)})')
            rows = source.execute(f'SELECT {", ".join(n for n, _ in names)} FROM "{schema}"."{table}"').fetchall()
            marks = ", ".join("?" for _ in names)
            copy.executemany(f'INSERT INTO "{table}" VALUES ({marks})', [tuple(map(_sqlite_value, r)) for r in rows])
        copy.commit()
        copy.close()
    return target / f"{database}.sqlite"


def load_defog(path: Path, answers: Path | None) -> list[EvalItem]:
    """``questions_gen_<dialect>.csv`` (``--answers``: the databases directory, default
    ``../databases``); bucket = query category, split = database."""
    dialect = next((d for d in DIALECTS if path.stem.endswith(d)), None)
    if dialect is None:
        raise DataError(f"{path}: cannot tell the dialect from the name", "use questions_gen_sqlite/postgres.csv")
    databases = answers or path.parent.parent / "databases"
    server = shared_server()
    items = []
    with path.open(encoding="utf-8", newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            name = row["db_name"]
            dump = databases / name / f"{name}.sql"
            if not dump.is_file():
                raise DataError(f"{path}: row {index + 1} names database {name!r}, no {dump}", "pass --answers DIR")
            target: Path | str = sqlite_copy(server, name, dump) if dialect == "sqlite" else server.load(name, dump)
            question = " ".join(f"{row['question']} {row.get('instructions') or ''}".split())
            messages = sql_messages(defog_schema(dump.with_suffix(".json"), dialect), question, dialect)
            golds = tuple(gold_alternatives(row["query"]))
            bucket = row["query_category"]
            items.append(
                EvalItem(
                    f"defog-{index}",
                    messages,
                    golds[0],
                    bucket,
                    "sql",
                    target,
                    split=name,
                    dialect=dialect,
                    alternatives=golds,
                )
            )
    return items
