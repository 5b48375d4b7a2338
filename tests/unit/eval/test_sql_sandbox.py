"""Model-written SQL during evaluation cannot write, attach, exhaust memory, escape the read-only
transaction or the timeout, or change what later gold queries see; set names stay file names."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from expertkit.eval.postgres import shared_server
from expertkit.eval.sql_exec import execute, execute_sqlite, execution_match
from expertkit.manifest.sections import EvalSet


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE singer (id INT, name TEXT)")
        connection.execute("INSERT INTO singer VALUES (1, 'Ana'), (2, 'Bo')")
    return path


@pytest.mark.parametrize(
    "sql",
    [
        "VACUUM INTO '{out}'",
        "ATTACH DATABASE '{out}' AS evil",
        "PRAGMA journal_mode = WAL",
        "DELETE FROM singer",
        "CREATE TEMP TABLE t (a)",
        "SELECT load_extension('{out}')",
    ],
)
def test_sqlite_predictions_can_only_read(database: Path, tmp_path: Path, sql: str) -> None:
    out = tmp_path / "written.db"
    result = execute_sqlite(database, sql.format(out=out))
    assert not result.ok
    assert not out.exists()
    assert execute_sqlite(database, "SELECT count(*) FROM singer").rows == [(2,)]


def test_sqlite_memory_and_time_are_bounded(database: Path) -> None:
    assert "too big" in (execute_sqlite(database, "SELECT zeroblob(1000000000)").error or "")
    started = time.monotonic()
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    assert execute_sqlite(database, forever, timeout_s=0.3).error == "timed out"
    assert time.monotonic() - started < 3


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> str:
    dump = tmp_path_factory.mktemp("dump") / "sandbox.sql"
    dump.write_text("CREATE TABLE singer (id bigint, name text); INSERT INTO singer VALUES (1, 'Ana'), (2, 'Bo');\n")
    return shared_server().load("sandbox_test", dump)


@pytest.mark.parametrize(
    "sql",
    [
        "COMMIT; SELECT pg_sleep(5)",
        "COMMIT; CREATE TEMP TABLE t AS SELECT 1",
        "SELECT 1; SELECT 2",
        "CREATE TEMP TABLE t (a int)",
        "ALTER ROLE expertkit_reader SET statement_timeout = 0",
        "ALTER ROLE expertkit_gold SET search_path = nowhere",
    ],
)
def test_postgres_predictions_stay_read_only_and_bounded(music: str, sql: str) -> None:
    started = time.monotonic()
    result = execute(music, sql, timeout_s=1.0, dialect="postgres")
    assert not result.ok, sql
    assert time.monotonic() - started < 3
    with shared_server().connect() as connection:
        settings = connection.execute(
            "SELECT rolname, rolconfig FROM pg_roles WHERE rolname LIKE 'expertkit_%' ORDER BY rolname"
        ).fetchall()
    for _, config in settings:
        assert "default_transaction_read_only=on" in config and not any("search_path" in c for c in config)
        assert "statement_timeout=60s" in config
    assert execution_match(music, "SELECT name FROM singer", "SELECT name FROM singer", dialect="postgres").correct


def test_postgres_gold_queries_run_as_their_own_role(music: str) -> None:
    who = execute(music, "SELECT current_user", dialect="postgres", gold=True)
    assert who.rows == [("expertkit_gold",)]
    assert execute(music, "SELECT current_user", dialect="postgres").rows == [("expertkit_reader",)]


def test_set_names_are_file_names(tmp_path: Path) -> None:
    from expertkit.safepath import UnsafePathError, child_file

    with pytest.raises(ValueError, match="pattern"):
        EvalSet(name="../../outside", path="x.json", format="jsonl")
    with pytest.raises(UnsafePathError):
        child_file(tmp_path, "../outside", ".json", "evaluation set name")
    assert child_file(tmp_path, "geoquery-test", ".json", "evaluation set name") == tmp_path / "geoquery-test.json"
