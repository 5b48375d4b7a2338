"""The defog set on a private PostgreSQL server and its SQLite copy: gold alternatives, execution
accuracy on PostgreSQL (order, aliases, wrong rows, errors, timeouts, writes refused)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from expertkit.eval.postgres import pg_bindir, shared_server
from expertkit.eval.sets import load_set
from expertkit.eval.sets.defog import gold_alternatives
from expertkit.eval.sql_exec import execute, execution_match

needs_postgres = pytest.mark.skipif(
    pg_bindir() is None, reason="no PostgreSQL server installed (apt-get install postgresql)"
)

DUMP = """
CREATE TABLE public.singer (singer_id bigint NOT NULL, name text, age integer, joined date DEFAULT CURRENT_DATE);
CREATE SCHEMA shop;
CREATE TABLE shop.sale (singer_id bigint, amount numeric(10,2));
INSERT INTO public.singer (singer_id, name, age) VALUES (1, 'Ana', 30), (2, 'Bo', 41), (3, 'Cy', 25), (4, 'Di', 41);
INSERT INTO shop.sale VALUES (1, 10.50), (2, 3.00), (2, 4.25);
"""
METADATA = {
    "table_metadata": {
        "singer": [
            {"data_type": "bigint", "column_name": "singer_id", "column_description": ""},
            {"data_type": "text", "column_name": "name", "column_description": ""},
            {"data_type": "integer", "column_name": "age", "column_description": ""},
        ]
    }
}


def test_gold_alternatives_split_and_expand_braces() -> None:
    cell = "SELECT {a.x, a.y}, COUNT(*) FROM a GROUP BY {};SELECT 1;"
    assert gold_alternatives(cell) == [
        "SELECT a.x, COUNT(*) FROM a GROUP BY a.x",
        "SELECT a.y, COUNT(*) FROM a GROUP BY a.y",
        "SELECT a.x, a.y, COUNT(*) FROM a GROUP BY a.x, a.y",
        "SELECT 1",
    ]


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> str:
    dump = tmp_path_factory.mktemp("dump") / "music.sql"
    dump.write_text(DUMP)
    return shared_server().load("music_test", dump)


@needs_postgres
def test_postgres_execution_accuracy(music: str) -> None:
    def match(gold: Any, predicted: str, **kw: Any) -> Any:
        return execution_match(music, gold, predicted, dialect="postgres", **kw)

    assert match("SELECT name FROM singer WHERE age > 28", "SELECT name AS n FROM singer WHERE age >= 30").correct
    assert match("SELECT name, age FROM singer", "SELECT age, name FROM singer ORDER BY age").correct
    assert not match("SELECT name FROM singer ORDER BY age", "SELECT name FROM singer ORDER BY name").correct
    assert match("SELECT SUM(amount) FROM shop.sale", "SELECT 17.75").correct  # numeric compares by value
    wrong = match("SELECT name FROM singer WHERE age = 41", "SELECT name FROM singer WHERE age = 30")
    assert wrong.reason == "different result (1 rows, gold 2)"
    assert match("SELECT nme FROM singer", "SELECT 1").reason.startswith("gold query fails")
    error = match("SELECT 1", "SELECT nme FROM singer")
    assert not error.correct and 'column "nme" does not exist' in error.reason
    assert match("SELECT 1", "SELECT pg_sleep(2)", timeout_s=0.2).reason == "prediction fails: timed out"
    assert match(("SELECT 2", "SELECT 1"), "SELECT 1").correct  # any gold alternative
    for write in ("DELETE FROM singer", "DROP TABLE singer", "COMMIT; DELETE FROM singer"):
        assert not execute(music, write, dialect="postgres").ok
    assert execute(music, "SELECT count(*) FROM singer", dialect="postgres").rows == [(4,)]


@needs_postgres
def test_defog_loader_both_dialects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    database = tmp_path / "databases" / "musicdb"
    database.mkdir(parents=True)
    (database / "musicdb.sql").write_text(DUMP)
    (database / "musicdb.json").write_text(json.dumps(METADATA))
    questions = tmp_path / "questions"
    questions.mkdir()
    header = "db_name,db_type,query_category,query,question,instructions\n"
    (questions / "questions_gen_sqlite.csv").write_text(
        header
        + 'musicdb,sqlite,group_by,"SELECT {name,singer_id} FROM singer WHERE age = 41;",Who is 41?,Use exact match\n'
    )
    (questions / "questions_gen_postgres.csv").write_text(
        "question,query,db_name,query_category,instructions\n"
        "Total sales?,SELECT SUM(amount) FROM shop.sale;,musicdb,ratio,\n"
    )
    (lite,) = load_set(questions / "questions_gen_sqlite.csv", "defog")
    assert lite.dialect == "sqlite" and Path(lite.database).suffix == ".sqlite"
    assert lite.bucket == "group_by" and lite.split == "musicdb" and len(lite.alternatives) == 3
    assert lite.messages[1]["content"].endswith("Question: Who is 41? Use exact match")
    assert "CREATE TABLE singer (\n  singer_id INTEGER,\n  name TEXT,\n  age INTEGER\n);" in lite.messages[1]["content"]
    assert execution_match(lite.database, lite.alternatives, "SELECT name FROM singer WHERE age > 40").correct
    assert execute(lite.database, "SELECT SUM(amount) FROM sale").rows == [(17.75,)]  # schema-qualified table copied
    (pg,) = load_set(questions / "questions_gen_postgres.csv", "defog")
    assert pg.dialect == "postgres" and "Dialect: postgres" in pg.messages[0]["content"]
    assert execution_match(pg.database, pg.alternatives, "SELECT 10.5 + 7.25", dialect="postgres").correct
