"""The shipped grammars accept the gold answers of the shared data; grammars constrain decoding."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SHARED_DATA
from expertkit.grammars import grammar_text
from expertkit.manifest.sections import DecodingConfig
from expertkit.runtime.generate import GenerationRequest, generate
from expertkit.runtime.grammar import GrammarError, GrammarSpec, compile_grammar, grammar_for
from expertkit.runtime.llama_decoder import LeanDecoder
from expertkit.runtime.settings import resolve_settings

REPO = Path(__file__).resolve().parents[3]
# Gold rows of text2cypher that are not Cypher at all (SQL inside Cypher, GROUP BY, a pattern as a
# function argument): the grammar rejects them on purpose. Everything else must be accepted.
NOT_CYPHER = ("SELECT ", "GROUP BY", "relationships(p-")


@pytest.fixture(scope="module")
def compile_with(tiny_llama_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    return lambda spec: compile_grammar(tokenizer, len(tokenizer), spec)


def spider_and_geoquery() -> list[str]:
    sql = SHARED_DATA / "sql"
    queries = [r["query"] for r in json.loads((sql / "spider/train_spider.min.json").read_text())]
    queries += [r["query"] for r in json.loads((sql / "spider/dev.json").read_text())]
    for record in json.loads((sql / "geoquery/geography.json").read_text()):
        for sentence in record["sentences"]:
            query = record["sql"][0]
            for variable, value in sentence["variables"].items():
                query = query.replace(variable, value)
            queries.append(query)
    return queries


def text2cypher() -> list[str]:
    csv.field_size_limit(1 << 30)
    rows = []
    for name in ("text2cypher_gpt4turbo.csv", "text2cypher_claudeopus.csv"):
        with (SHARED_DATA / "cypher/text2cypher" / name).open(encoding="utf-8") as handle:
            rows += [r["cypher"] for r in csv.DictReader(handle) if r["syntax_error"].lower() in ("false", "")]
    return rows


def bfcl_calls() -> list[str]:
    path = REPO / "examples/experts/expert-json/preprocess.py"
    spec = importlib.util.spec_from_file_location("bfcl_hook", path)
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    answers = hook._answers((SHARED_DATA / "json/bfcl/possible_answer").resolve())
    calls = []
    for truth in answers.values():
        made = [hook.canonical_call(item) for item in truth]
        calls.append(json.dumps(made[0] if len(made) == 1 else made, ensure_ascii=False))
    return calls


# The Lark forms are checked on every 4th gold query (a matcher per query costs ~2 ms); every query:
# EXPERTKIT_GRAMMAR_SAMPLE=1 pytest tests/unit/runtime/test_grammars.py
LARK_SAMPLE = int(os.environ.get("EXPERTKIT_GRAMMAR_SAMPLE", "4"))


def test_sql_grammars_accept_every_spider_and_geoquery_gold_query(compile_with) -> None:
    queries = spider_and_geoquery()
    assert len(queries) == 8034 + 877
    gbnf = compile_with(GrammarSpec("gbnf", grammar_text("sql"), "sql.gbnf"))
    lark = compile_with(GrammarSpec("lark", grammar_text("sql", "lark"), "sql.lark"))
    assert [q for q in queries if not gbnf.accepts(q)] == []
    assert [q for q in queries[::LARK_SAMPLE] if not lark.accepts(q)] == []
    for grammar in (gbnf, lark):
        assert not grammar.accepts("DROP TABLE singer;") and not grammar.accepts("SELECT (name FROM singer")
        # one ORDER BY and one LIMIT per SELECT (the base model once wrote the second; sqlglot refuses it)
        assert not grammar.accepts("SELECT name FROM singer ORDER BY age LIMIT 1 ORDER BY name")
        assert not grammar.accepts("SELECT a FROM t UNION SELECT b FROM u ORDER BY b LIMIT 1 ORDER BY a")
        assert grammar.accepts("SELECT a FROM t ORDER BY a LIMIT 1 UNION SELECT b FROM u ORDER BY b LIMIT 2")
        assert grammar.accepts("(SELECT a FROM t) ORDER BY a")


# Every function form the SQL grammars allow, by number of arguments ("*": count(*)); nothing else.
SQL_FUNCTIONS = {
    "count": ("*", 1), "sum": (1,), "avg": (1,), "total": (1,), "min": (1, 2, 3, 4), "max": (1, 2, 3, 4),
    "group_concat": (1, 2), "abs": (1,), "length": (1,), "lower": (1,), "upper": (1,), "typeof": (1,),
    "hex": (1,), "quote": (1,), "unicode": (1,), "sign": (1,), "round": (1, 2), "trim": (1, 2),
    "ltrim": (1, 2), "rtrim": (1, 2), "instr": (2,), "ifnull": (2,), "nullif": (2,), "substr": (2, 3),
    "substring": (2, 3), "replace": (3,), "iif": (3,), "coalesce": (2, 3, 4), "date": (0, 1, 2, 3, 4),
    "time": (0, 1, 2, 3, 4), "datetime": (0, 1, 2, 3, 4), "julianday": (0, 1, 2, 3, 4), "strftime": (0, 1, 2, 3, 4),
}  # fmt: skip


def _call(name: str, arity: object) -> str:
    if arity == "*":
        return f"SELECT {name}(*) FROM t"
    values = ["'2020-01-01'" if name in ("date", "time", "datetime", "julianday") else "a", "'x'", "2", "3"]
    return f"SELECT {name}({', '.join(values[: int(arity)])}) FROM t"  # type: ignore[call-overload]


def test_sql_grammars_allow_exactly_the_function_forms_sqlite_and_sqlglot_both_take(compile_with) -> None:
    """A free function name with any arguments let the base model write CONVERT(',', 64), which
    sqlglot refuses: every allowed form parses in sqlglot and runs in SQLite, and other names or
    other argument counts are refused."""
    import sqlite3

    import sqlglot

    database = sqlite3.connect(":memory:")
    database.execute("CREATE TABLE t (a TEXT)")
    grammars = [compile_with(GrammarSpec("gbnf", grammar_text("sql"), "sql.gbnf")),
                compile_with(GrammarSpec("lark", grammar_text("sql", "lark"), "sql.lark"))]  # fmt: skip
    for name, arities in SQL_FUNCTIONS.items():
        for arity in ("*", 0, 1, 2, 3, 4):
            query = _call(name, arity)
            allowed = arity in arities
            assert [grammar.accepts(query) for grammar in grammars] == [allowed, allowed], query
            if allowed:
                sqlglot.parse_one(query, read="sqlite")
                database.execute(query).fetchall()
    for query in ("SELECT convert(',', 64) FROM t", "SELECT cast2(a) FROM t", "SELECT foo(a) FROM t"):
        assert not any(grammar.accepts(query) for grammar in grammars), query
    for query in ("SELECT count(DISTINCT a) FROM t", "SELECT max(DISTINCT a) FROM t", "SELECT COUNT (*) FROM t"):
        assert all(grammar.accepts(query) for grammar in grammars), query
        sqlglot.parse_one(query, read="sqlite")


def test_the_lark_sql_grammar_takes_a_sqlglot_keyword_as_a_name_only_where_sqlglot_does(compile_with) -> None:
    """Words sqlglot's SQLite tokenizer treats as keywords (IF, VALUES, GLOB, ...) are names only where
    sqlglot still parses the query; the base model once wrote CASE IF NOT IN (...), which it refuses."""
    import re

    import sqlglot
    from sqlglot.dialects.sqlite import SQLite

    lark = compile_with(GrammarSpec("lark", grammar_text("sql", "lark"), "sql.lark"))
    parser = SQLite.parser_class
    special = [*SQLite.tokenizer_class.KEYWORDS, *parser.FUNCTION_PARSERS, *parser.NO_PAREN_FUNCTION_PARSERS]
    keywords = {k.lower() for k in special if re.fullmatch(r"[A-Za-z_]\w*", k)}
    assert {"if", "values", "glob", "interval"} <= keywords
    shapes = ("SELECT {} FROM t", "SELECT a FROM t WHERE {} = 1", "SELECT a FROM {}",
              "SELECT CASE WHEN {} THEN 1 END FROM t")  # fmt: skip
    for keyword in sorted(keywords):
        for shape in shapes:
            query = shape.format(keyword)
            if lark.accepts(query):
                sqlglot.parse_one(query, read="sqlite")


def test_cypher_grammars_accept_the_text2cypher_gold_queries(compile_with) -> None:
    queries = text2cypher()
    assert len(queries) > 14_000
    gbnf = compile_with(GrammarSpec("gbnf", grammar_text("cypher"), "cypher.gbnf"))
    lark = compile_with(GrammarSpec("lark", grammar_text("cypher", "lark"), "cypher.lark"))
    for grammar, sample in ((gbnf, queries), (lark, queries[::LARK_SAMPLE])):
        rejected = [q for q in sample if not grammar.accepts(q)]
        assert [q for q in rejected if not any(marker in q for marker in NOT_CYPHER)] == []
        assert len(rejected) < 20
        assert not grammar.accepts("MATCH (n) DETACH DELETE n") and not grammar.accepts("CREATE (n:Person)")


def test_json_grammars_accept_every_bfcl_gold_call(compile_with) -> None:
    calls = bfcl_calls()
    assert len(calls) == 1150
    for text in (grammar_text("json"), (REPO / "examples/experts/expert-json/grammar.gbnf").read_text()):
        grammar = compile_with(GrammarSpec("gbnf", text, "json"))
        assert [c for c in calls if not grammar.accepts(c)] == []


def test_example_grammars_are_the_shipped_ones() -> None:
    assert (REPO / "examples/experts/expert-sql/grammar.gbnf").read_text() == grammar_text("sql")
    assert (REPO / "examples/experts/expert-neo4j/grammar.gbnf").read_text() == grammar_text("cypher")


def test_an_invalid_grammar_file_names_the_line(tmp_path: Path, compile_with) -> None:
    path = tmp_path / "grammar.gbnf"
    path.write_text('root ::= item ";"\nitem ::= "a" | undefined-rule\n')
    spec = grammar_for(DecodingConfig(use_grammar=True, grammar_file="grammar.gbnf"), tmp_path)
    with pytest.raises(GrammarError, match=r"grammar.gbnf: line 2, column \d+: .*undefined-rule"):
        compile_with(spec)
    (tmp_path / "bad.lark").write_text('start: "a" missing_rule\n')
    lark = grammar_for(DecodingConfig(use_grammar=True, grammar_file="bad.lark"), tmp_path)
    with pytest.raises(GrammarError, match=r"bad.lark: at 1\(\d+\): unknown name: \"missing_rule\""):
        compile_with(lark)
    with pytest.raises(GrammarError, match="cannot read grammar file"):
        grammar_for(DecodingConfig(use_grammar=True, grammar_file="missing.gbnf"), tmp_path)


def test_grammar_choice_from_the_manifest(tmp_path: Path) -> None:
    assert grammar_for(None, tmp_path) is None
    assert grammar_for(DecodingConfig(use_grammar=False, grammar_type="json"), tmp_path) is None
    assert grammar_for(DecodingConfig(use_grammar=True, grammar_type="json"), tmp_path).kind == "json"
    sql = grammar_for(DecodingConfig(use_grammar=True, grammar_type="sql-postgres"), tmp_path)
    assert (sql.kind, sql.text) == ("lark", grammar_text("sql", "lark"))
    (tmp_path / "mine.lark").write_text('start: "yes" | "no"\n')
    assert grammar_for(DecodingConfig(use_grammar=True, grammar_file="mine.lark"), tmp_path).kind == "lark"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    spec = grammar_for(DecodingConfig(use_grammar=True, grammar_type="json_schema", json_schema=schema), tmp_path)
    assert spec.kind == "json_schema" and json.loads(spec.text) == schema


def test_grammar_forces_valid_json_from_a_random_model(tiny_llama_dir: Path, compile_with) -> None:
    """100 seeds of a random model sampling at temperature 1: every output parses and fits the schema."""
    import jsonschema

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    decoder = LeanDecoder(model)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": "^[a-z0-9 ]{0,8}$"}, "ok": {"type": "boolean"}},
        "required": ["name", "ok"],
        "additionalProperties": False,
    }
    compiled = compile_with(GrammarSpec("json_schema", json.dumps(schema), "schema"))
    prompt = tokenizer("Give me JSON:", add_special_tokens=False)["input_ids"]
    end = {tokenizer.eos_token_id}
    for seed in range(100):
        settings = resolve_settings({"temperature": 1.0, "seed": seed, "max_tokens": 128}, None)
        result = generate(decoder, tokenizer, GenerationRequest(prompt, settings, end, grammar=compiled.matcher()))
        assert result.finish_reason == "eos", (seed, result.text)
        jsonschema.validate(json.loads(result.text), schema)


class AlwaysMask:
    """A grammar view that never takes the greedy shortcut (the full mask every step)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def mask(self, logits):
        return self.inner.mask(logits)

    def allows(self, token: int) -> bool:
        return False

    def accept(self, token: int) -> None:
        self.inner.accept(token)

    def finished(self) -> bool:
        return self.inner.finished()


@pytest.mark.parametrize("kind", ["json", "lark"])
def test_greedy_shortcut_gives_the_same_tokens_as_masking_every_step(
    tiny_llama_dir: Path, compile_with, kind: str
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    decoder = LeanDecoder(model)
    spec = (
        GrammarSpec("json", source="json")
        if kind == "json"
        else GrammarSpec("lark", grammar_text("sql", "lark"), "sql")
    )
    compiled = compile_with(spec)
    prompt = tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    settings = resolve_settings({"temperature": 0.0, "max_tokens": 40, "repetition_penalty": 1.3}, None)
    end = {tokenizer.eos_token_id}
    fast = generate(decoder, tokenizer, GenerationRequest(prompt, settings, end, grammar=compiled.matcher()))
    slow = generate(
        decoder, tokenizer, GenerationRequest(prompt, settings, end, grammar=AlwaysMask(compiled.matcher()))
    )
    assert fast.token_ids == slow.token_ids and fast.finish_reason == slow.finish_reason
