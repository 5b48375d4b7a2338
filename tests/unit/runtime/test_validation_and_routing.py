"""Output validators, retries on invalid output, and routing rules and thresholds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from expertkit.manifest.sections import DecodingConfig, Routing
from expertkit.runtime import output_checks
from expertkit.runtime.answer import AskOptions, ask
from expertkit.runtime.engine import Engine
from expertkit.runtime.output_checks import ValidationContext, validate_output
from expertkit.runtime.routing import Router


def ctx(**decoding) -> ValidationContext:
    return ValidationContext(DecodingConfig(**decoding))


@pytest.mark.parametrize(
    ("text", "kind", "valid", "error"),
    [
        ("SELECT name FROM singer WHERE age > 20;", "parser-strict", True, None),
        ("SELECT name FROM singer WHERE age >", "parser-strict", False, "sqlite SQL does not parse"),
        ("DROP TABLE singer", "parser-strict", False, "not a read-only query (Drop)"),
        ("SELECT 1; SELECT 2", "parser-strict", False, "expected one query, found 2"),
        ("DROP TABLE singer", "parser", True, None),
        ('{"name": "f", "arguments": {}}', "json", True, None),
        ('{"name": "f", "arguments": {', "json", False, "invalid JSON"),
    ],
)
def test_validators(text: str, kind: str, valid: bool, error: str | None) -> None:
    result = validate_output(text, True, ctx(validation=kind))
    assert result.valid is valid
    assert (error is None and result.error is None) or (error and error in result.error)


def test_truncated_output_is_invalid_even_if_it_parses() -> None:
    result = validate_output("SELECT name FROM singer", False, ctx(validation="parser-strict"))
    assert result.valid is False and "max_tokens" in result.error
    assert validate_output("anything", False, ctx()).valid is False


def test_json_schema_validation_names_the_path() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert validate_output('{"n": 3}', True, ctx(validation="json_schema", json_schema=schema)).valid
    bad = validate_output('{"n": "x"}', True, ctx(validation="json", json_schema=schema))
    assert bad.valid is False and bad.error.startswith("JSON Schema: $.n:")
    missing = validate_output("{}", True, ctx(validation="json_schema"))
    assert missing.valid is None and "validator unavailable" in missing.error


def test_cypher_validation_uses_the_grammar(tiny_llama_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    context = ValidationContext(DecodingConfig(validation="cypher"), tokenizer, len(tokenizer))
    assert validate_output("MATCH (m:Movie) RETURN m.title LIMIT 3", True, context).valid
    assert validate_output("MATCH (m:Movie) DELETE m", True, context).valid is False


def test_typescript_validator_unavailable_without_tsc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output_checks, "tsc_command", lambda: None)
    result = validate_output("const x: number = 1;", True, ctx(validation="tsc"))
    assert result.valid is None and "validator unavailable" in result.error


@pytest.mark.skipif(shutil.which("tsc") is None, reason="TypeScript's tsc is not installed")
def test_typescript_validator_with_tsc() -> None:
    assert validate_output("const x: number = 1;", True, ctx(validation="tsc")).valid
    assert validate_output("const x: number = 'a';", True, ctx(validation="tsc")).valid is False


def test_invalid_answers_are_resampled_with_new_seeds(expert_dir: Path) -> None:
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["training"]["decoding"] = {
        "temperature": 1.0,
        "seed": 5,
        "max_tokens": 4,
        "validation": "json",
        "retries": 2,
    }
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    engine = Engine.for_experts([str(expert_dir)])
    retried = []
    answer = ask(
        engine, "expert-tiny", [{"role": "user", "content": "hi"}], AskOptions(on_retry=lambda n, v: retried.append(n))
    )
    assert answer.attempts == 3 and retried == [1, 2] and answer.validation.valid is False
    body = answer.to_json()
    assert set(body) >= {"text", "expert", "finish_reason", "valid", "validation_error", "usage", "decoding"}
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["decoding"]["temperature"] == {"value": 1.0, "source": "manifest"}


ROUTES = {
    "sql": Routing(
        keywords=["sql", "table"],
        patterns=[r"(?i)\bCREATE TABLE\b"],
        examples=["How many singers are there?"],
        priority=10,
    ),
    "cypher": Routing(
        keywords=["graph", "node"],
        patterns=[r"(?i)\bMATCH\s*\("],
        examples=["Which actors acted in The Matrix?"],
        priority=5,
    ),
}


def fake_embed(texts: list[str]) -> torch.Tensor:
    """Bag of words over a tiny vocabulary, L2-normalised: enough to test the decision rules."""
    vocab = ["singers", "many", "actors", "matrix", "acted", "how", "joke"]
    rows = torch.tensor([[float(w in t.lower()) for w in vocab] for t in texts]) + 1e-6
    return torch.nn.functional.normalize(rows, dim=-1)


def test_patterns_win_then_priority() -> None:
    router = Router(ROUTES, fake_embed)
    decision = router.route("CREATE TABLE singer (id INT);\nQuestion: how many?")
    assert decision.expert == "sql" and decision.reason.startswith("pattern")
    both = router.route("CREATE TABLE t (a INT); MATCH (n) RETURN n")
    assert both.expert == "sql"  # one pattern each: the higher priority wins


def test_similarity_and_threshold() -> None:
    router = Router(ROUTES, fake_embed)
    assert router.route("how many singers did we sign").expert == "sql"
    assert router.route("which actors acted in the matrix").expert == "cypher"
    chat = router.route("tell me a joke")
    assert chat.expert is None and "threshold" in chat.reason
    strict = Router({**ROUTES, "sql": ROUTES["sql"].model_copy(update={"threshold": 0.99})}, fake_embed)
    assert strict.route("singers, roughly").expert is None and router.route("singers, roughly").expert == "sql"
    shown = router.route("how many singers").to_json()
    assert set(shown["scores"]) == {"sql", "cypher"} and shown["scores"]["sql"]["similarity"] > 0.5


def test_keywords_decide_without_an_embedder() -> None:
    router = Router(ROUTES)
    assert router.route("draw the graph of each node").expert == "cypher"
    assert router.route("hello there").expert is None


def test_the_base_model_embedder_works_on_a_fast_started_engine(trained_source: Path) -> None:
    from expertkit.runtime.engine import Engine
    from expertkit.runtime.routing import build_router

    engine = Engine.for_experts([str(trained_source)])  # tokenises without transformers until asked
    router = build_router(engine, "base")
    assert router.embed is not None
    vectors = router.embed(["how many singers", "a longer question about the singers and their ages"])
    assert tuple(vectors.shape) == (2, engine.model_config.hidden_size)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2))
