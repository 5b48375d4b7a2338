"""SQL execution accuracy: run gold and predicted SQL on the same database (SQLite, or PostgreSQL
through :mod:`expertkit.eval.postgres`), compare results.

Results are compared as multisets of rows (order-insensitive) unless the gold query has ORDER BY;
column names and aliases never matter, and when the column count is equal a column permutation of
the prediction may match (``SELECT b, a`` for ``SELECT a, b``), as Spider's test-suite evaluation
allows. A query that fails or runs past the timeout is wrong, with the reason kept. SQLite files
are opened read-only (``mode=ro``) and PostgreSQL runs predictions as a SELECT-only role in a
read-only transaction, so a predicted ``DROP`` cannot change either. With several gold queries
(defog's alternatives) the prediction is right when it matches any of them.
"""

from __future__ import annotations

import decimal
import itertools
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ROWS = 100_000
MAX_PERMUTED_COLUMNS = 6
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


@dataclass(frozen=True)
class Execution:
    rows: list[tuple[Any, ...]] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def execute(database: Path | str, sql: str, timeout_s: float = 5.0, dialect: str = "sqlite") -> Execution:
    """Rows of ``sql`` on ``database`` (a SQLite file, or a database of the private PostgreSQL
    server when ``dialect`` is ``postgres``), or the error (including a timeout)."""
    if dialect == "postgres":
        return execute_postgres(str(database), sql, timeout_s)
    return execute_sqlite(Path(database), sql, timeout_s)


def execute_postgres(database: str, sql: str, timeout_s: float) -> Execution:
    import psycopg

    from expertkit.eval.postgres import shared_server

    try:
        rows = shared_server().query(database, sql, timeout_s, MAX_ROWS)
    except psycopg.errors.QueryCanceled:
        return Execution(None, "timed out")
    except psycopg.Error as exc:
        return Execution(None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if len(rows) > MAX_ROWS:
        return Execution(None, f"more than {MAX_ROWS} rows")
    return Execution([tuple(_normal(v) for v in row) for row in rows])


def execute_sqlite(database: Path, sql: str, timeout_s: float = 5.0) -> Execution:
    """Rows of ``sql`` on ``database`` (read-only), or the error (including a timeout)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, check_same_thread=False)
    deadline = time.monotonic() + timeout_s
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        cursor = connection.execute(sql)
        rows = cursor.fetchmany(MAX_ROWS + 1)
    except sqlite3.OperationalError as exc:
        reason = "timed out" if "interrupted" in str(exc) else str(exc)
        return Execution(None, reason)
    except (sqlite3.Error, ValueError) as exc:
        return Execution(None, str(exc))
    finally:
        connection.close()
    if len(rows) > MAX_ROWS:
        return Execution(None, f"more than {MAX_ROWS} rows")
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
        gold = execute(database, sql, timeout_s, dialect)
        if not gold.ok or gold.rows is None:
            reason = f"gold query fails: {gold.error}"
            continue
        if results_match(gold.rows, predicted.rows, bool(_ORDER_BY.search(sql))):
            return ExecutionScore(True, "same result")
        reason = f"different result ({len(predicted.rows)} rows, gold {len(gold.rows)})"
    return ExecutionScore(False, reason)
