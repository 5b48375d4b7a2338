"""Metrics on hand-made cases: SQL execution (order, aliases, wrong rows, errors, timeouts) and
BFCL function calls (types, missing and extra arguments, parallel calls)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from expertkit.eval.bfcl import check_answer
from expertkit.eval.sql_exec import execute, execution_match


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "music.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE singer (id INTEGER, name TEXT, country TEXT, age INTEGER)")
        db.executemany(
            "INSERT INTO singer VALUES (?, ?, ?, ?)",
            [(1, "Ann", "France", 30), (2, "Bo", "Norway", 41), (3, "Cy", "France", 25), (4, "Di", "Spain", 30)],
        )
    return path


@pytest.mark.parametrize(
    ("gold", "predicted", "correct", "reason"),
    [
        (
            "SELECT name FROM singer WHERE country = 'France'",
            "SELECT name FROM singer WHERE country='France' ORDER BY age",
            True,
            "same result",
        ),
        ("SELECT name, age FROM singer", "SELECT age AS years, name AS who FROM singer", True, "same result"),
        ("SELECT count(*) FROM singer", "SELECT COUNT(id) AS n FROM singer", True, "same result"),
        ("SELECT avg(age) FROM singer WHERE country = 'France'", "SELECT 27.5", True, "same result"),
        (
            "SELECT name FROM singer ORDER BY age",
            "SELECT name FROM singer ORDER BY age DESC",
            False,
            "different result",
        ),
        ("SELECT name FROM singer WHERE age > 26", "SELECT name FROM singer WHERE age > 35", False, "different result"),
        ("SELECT name FROM singer", "SELECT nme FROM singer", False, "prediction fails: no such column: nme"),
        ("SELECT name FROM singer", "SELEC name FROM singer", False, "prediction fails"),
        ("SELECT name FROM singer", "DROP TABLE singer", False, "prediction fails"),
    ],
)
def test_execution_match(database: Path, gold: str, predicted: str, correct: bool, reason: str) -> None:
    score = execution_match(database, gold, predicted)
    assert score.correct is correct and score.reason.startswith(reason)
    assert execute(database, "SELECT count(*) FROM singer").rows == [(4,)]  # read-only: nothing dropped


def test_a_runaway_query_times_out(database: Path) -> None:
    forever = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    result = execute(database, forever, timeout_s=0.3)
    assert result.error == "timed out"
    assert execution_match(database, "SELECT 1", forever, timeout_s=0.3).reason == "prediction fails: timed out"


FUNCTIONS = [
    {
        "name": "calculate_triangle_area",
        "parameters": {
            "type": "dict",
            "properties": {"base": {"type": "integer"}, "height": {"type": "integer"}, "unit": {"type": "string"}},
            "required": ["base", "height"],
        },
    },
    {
        "name": "convert",
        "parameters": {
            "type": "dict",
            "properties": {"amount": {"type": "float"}, "to": {"type": "string"}},
            "required": ["amount", "to"],
        },
    },
]
TRUTH = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]


@pytest.mark.parametrize(
    ("answer", "correct", "reason"),
    [
        ({"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}, True, "correct"),
        ({"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "Units"}}, True, "correct"),
        (
            {"name": "calculate_triangle_area", "arguments": {"base": "10", "height": 5}},
            False,
            "argument 'base' is str, declared integer",
        ),
        (
            {"name": "calculate_triangle_area", "arguments": {"base": 10.5, "height": 5}},
            False,
            "argument 'base' is float, declared integer",
        ),
        ({"name": "calculate_triangle_area", "arguments": {"base": 10}}, False, "missing required argument 'height'"),
        (
            {"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "color": "red"}},
            False,
            "unexpected argument 'color'",
        ),
        (
            {"name": "calculate_triangle_area", "arguments": {"base": 12, "height": 5}},
            False,
            "argument 'base' = 12 is not among [10]",
        ),
        ({"name": "triangle_area", "arguments": {"base": 10, "height": 5}}, False, "called 'triangle_area'"),
        ({"base": 10}, False, "not a call"),
    ],
)
def test_bfcl_call_checks(answer: dict, correct: bool, reason: str) -> None:
    score = check_answer(json.dumps(answer), TRUTH, FUNCTIONS)
    assert score.correct is correct and score.reason.startswith(reason)


def test_bfcl_parallel_calls_match_in_any_order_and_bad_json() -> None:
    truth = [{"convert": {"amount": [100.0], "to": ["EUR"]}}, {"convert": {"amount": [50.0], "to": ["GBP"]}}]
    answer = [
        {"name": "convert", "arguments": {"amount": 50, "to": "gbp"}},
        {"name": "convert", "arguments": {"amount": 100.0, "to": "EUR"}},
    ]
    assert check_answer(json.dumps(answer), truth, FUNCTIONS).correct
    assert not check_answer(json.dumps(answer[:1]), truth, FUNCTIONS).correct
    assert check_answer("{not json", truth, FUNCTIONS).reason.startswith("not JSON")


def test_normalised_sql_and_cypher_match() -> None:
    from expertkit.eval.sql_match import cypher_match, normalise_sql, sql_match

    assert sql_match("SELECT count(*) FROM singer;", "select COUNT(*)   from singer")
    assert not sql_match("SELECT name FROM singer", "SELECT age FROM singer")
    assert normalise_sql("SELEC x FRM") is None and not sql_match("SELECT 1", "SELEC x FRM")
    assert cypher_match("MATCH (m:Movie) RETURN m.title;", "match (m:movie)\n  return m.title")
    assert not cypher_match("MATCH (p {name: 'Tom Hanks'}) RETURN p", "MATCH (p {name: 'tom hanks'}) RETURN p")


def test_bootstrap_intervals() -> None:
    from expertkit.eval.stats import bootstrap_ci, paired_delta_ci

    low, high = bootstrap_ci([1.0] * 30 + [0.0] * 70)
    assert 0.2 < low < 0.3 < high < 0.4
    assert paired_delta_ci([1.0] * 10, [1.0] * 10) == (0.0, 0.0)
    low, high = paired_delta_ci([1.0] * 40 + [0.0] * 10, [0.0] * 50)
    assert 0.65 < low <= 0.8 <= high < 0.92
