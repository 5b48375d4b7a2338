"""SQL execution accuracy: run gold and predicted SQL on the same database (SQLite, or PostgreSQL
through :mod:`expertkit.eval.postgres`), compare results.

Results are compared as multisets of rows (order-insensitive) unless the gold query has ORDER BY;
column names and aliases never matter, and when the column count is equal a column permutation of
the prediction may match (``SELECT b, a`` for ``SELECT a, b``), as Spider's test-suite evaluation
allows. A query that fails or runs past the timeout is wrong, with the reason kept. With several
gold queries (defog's alternatives) the prediction is right when it matches any of them.

Model-written SQL is untrusted, so each database's own sandbox is used rather than string checks.
SQLite: the file is opened read-only and immutable (``mode=ro&immutable=1``), an authorizer allows
only reading (no ATTACH, no pragma, no write, no VACUUM INTO), strings and blobs are capped
(``SQLITE_LIMIT_LENGTH``, so ``zeroblob`` cannot exhaust memory), a progress handler enforces the
timeout and the result is bounded in rows and bytes. PostgreSQL: see :mod:`expertkit.eval.postgres`.
"""

from __future__ import annotations

import decimal
import itertools
import re
import sqlite3
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ROWS = 100_000
MAX_RESULT_BYTES = 64 << 20  # text and blobs of one result, all rows together
MAX_VALUE_BYTES = 1 << 20  # one string or blob (SQLITE_LIMIT_LENGTH)
# What a read-only query needs; everything else (ATTACH, PRAGMA, writes, transactions) is denied.
_SQLITE_ALLOWED = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
)
_SQLITE_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})
MAX_PERMUTED_COLUMNS = 6
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


@dataclass(frozen=True)
class Execution:
    rows: list[tuple[Any, ...]] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def execute(
    database: Path | str, sql: str, timeout_s: float = 5.0, dialect: str = "sqlite", gold: bool = False
) -> Execution:
    """Rows of ``sql`` on ``database`` (a SQLite file, or a database of the private PostgreSQL
    server when ``dialect`` is ``postgres``), or the error (including a timeout). ``gold``: a gold
    query, run on PostgreSQL as its own role, apart from predictions."""
    if dialect == "postgres":
        return execute_postgres(str(database), sql, timeout_s, gold)
    return execute_sqlite(Path(database), sql, timeout_s)


def execute_postgres(database: str, sql: str, timeout_s: float, gold: bool = False) -> Execution:
    import psycopg

    from expertkit.eval.postgres import UnsafeQueryError, shared_server

    try:
        rows = shared_server().query(database, sql, timeout_s, MAX_ROWS, gold)
    except UnsafeQueryError as exc:
        return Execution(None, f"refused: {exc}")
    except psycopg.errors.QueryCanceled:
        return Execution(None, "timed out")
    except psycopg.Error as exc:
        return Execution(None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if len(rows) > MAX_ROWS:
        return Execution(None, f"more than {MAX_ROWS} rows")
    return Execution([tuple(_normal(v) for v in row) for row in rows])


def _authorize(action: int, arg1: str | None, arg2: str | None, database: str | None, trigger: str | None) -> int:
    if action not in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _SQLITE_DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def sqlite_sandbox(database: Path, timeout_s: float) -> sqlite3.Connection:
    """A read-only, immutable connection that may only read, with bounded values and a deadline."""
    uri = f"file:{urllib.parse.quote(str(database.resolve()))}?mode=ro&immutable=1"
    connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
    connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    connection.set_authorizer(_authorize)
    deadline = time.monotonic() + timeout_s
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    return connection


def _bounded_rows(cursor: sqlite3.Cursor) -> list[tuple[Any, ...]] | str:
    """At most MAX_ROWS rows and MAX_RESULT_BYTES of text and blobs, or why the result is refused."""
    rows: list[tuple[Any, ...]] = []
    size = 0
    while batch := cursor.fetchmany(1000):
        for row in batch:
            size += sum(len(v) for v in row if isinstance(v, str | bytes))
        rows += batch
        if len(rows) > MAX_ROWS:
            return f"more than {MAX_ROWS} rows"
        if size > MAX_RESULT_BYTES:
            return f"a result over {MAX_RESULT_BYTES:,} bytes"
    return rows


def execute_sqlite(database: Path, sql: str, timeout_s: float = 5.0) -> Execution:
    """Rows of ``sql`` on ``database`` (read-only, sandboxed), or the error (including a timeout)."""
    if not database.is_file():
        return Execution(None, f"no database file {database}")
    connection = sqlite_sandbox(database, timeout_s)
    try:
        rows = _bounded_rows(connection.execute(sql))
    except sqlite3.OperationalError as exc:
        reason = "timed out" if "interrupted" in str(exc) else str(exc)
        return Execution(None, reason)
    except (sqlite3.Error, ValueError, MemoryError, OverflowError) as exc:
        return Execution(None, str(exc) or type(exc).__name__)
    finally:
        connection.close()
    if isinstance(rows, str):
        return Execution(None, rows)
    return Execution([tuple(_normal(v) for v in row) for row in rows])


def _normal(value: Any) -> Any:
    """Numbers compare by value (3 == 3.0, Decimal('3.50') == 3.5), text exactly."""
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float):
        return round(value, 6)
    return value


def _same(gold: list[tuple[Any, ...]], predicted: list[tuple[Any, ...]], ordered: bool) -> bool:
    return gold == predicted if ordered else Counter(gold) == Counter(predicted)


def results_match(gold: list[tuple[Any, ...]], predicted: list[tuple[Any, ...]], ordered: bool) -> bool:
    if len(gold) != len(predicted):
        return False
    if _same(gold, predicted, ordered):
        return True
    width = len(gold[0]) if gold else 0
    if not gold or width != len(predicted[0]) or width > MAX_PERMUTED_COLUMNS:
        return False
    return any(
        _same(gold, [tuple(row[i] for i in order) for row in predicted], ordered)
        for order in itertools.permutations(range(width))
    )


@dataclass(frozen=True)
class ExecutionScore:
    correct: bool
    reason: str


def execution_match(
    database: Path | str,
    gold_sql: str | tuple[str, ...],
    predicted_sql: str,
    timeout_s: float = 5.0,
    dialect: str = "sqlite",
) -> ExecutionScore:
    """Whether the prediction returns what a gold query (any of several) returns."""
    golds = (gold_sql,) if isinstance(gold_sql, str) else gold_sql
    predicted = execute(database, predicted_sql, timeout_s, dialect)
    if not predicted.ok or predicted.rows is None:
        return ExecutionScore(False, f"prediction fails: {predicted.error}")
    reason = "no gold query"
    for sql in golds:
        gold = execute(database, sql, timeout_s, dialect, gold=True)
        if not gold.ok or gold.rows is None:
            reason = f"gold query fails: {gold.error}"
            continue
        if results_match(gold.rows, predicted.rows, bool(_ORDER_BY.search(sql))):
            return ExecutionScore(True, "same result")
        reason = f"different result ({len(predicted.rows)} rows, gold {len(gold.rows)})"
    return ExecutionScore(False, reason)
