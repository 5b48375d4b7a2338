"""Output validators (chosen by the manifest's ``training.decoding.validation``), run after generation.

``parser``/``parser-strict``: SQL parsed by sqlglot in the expert's dialect (``grammar_type``
``sql-<dialect>``, default SQLite); strict also requires exactly one read-only query.
``json``: strict JSON (plus the manifest's ``json_schema`` when given); ``json_schema``: both.
``cypher``: the shipped Cypher grammar must accept the whole text (a grammar-based parser).
``tsc``: ``tsc --noEmit`` on the text when TypeScript is installed, else "validator unavailable".
A result cut off by ``max_tokens`` is never valid: a truncated identifier can still parse.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.grammars import grammar_text
from expertkit.jsonschema_guard import validate_instance
from expertkit.manifest.sections import DecodingConfig
from expertkit.registry import Registry

TSC_TIMEOUT_S = 60


@dataclass(frozen=True)
class Validation:
    valid: bool | None  # None: the validator could not run
    error: str | None = None


@dataclass(frozen=True)
class ValidationContext:
    decoding: DecodingConfig
    tokenizer: Any = None
    vocab_size: int = 0


Validator = Callable[[str, ValidationContext], Validation]
VALIDATORS: Registry[Validator] = Registry()
READ_ONLY = ("Select", "Union", "Intersect", "Except", "Subquery")


def sql_dialect(decoding: DecodingConfig) -> str:
    kind = decoding.grammar_type or ""
    return kind.split("-", 1)[1] if kind.startswith("sql-") else "sqlite"


def _parse_sql(text: str, ctx: ValidationContext) -> tuple[list[Any], Validation | None]:
    import sqlglot
    from sqlglot.errors import ErrorLevel, ParseError, TokenError

    dialect = sql_dialect(ctx.decoding)
    try:
        statements = [s for s in sqlglot.parse(text, read=dialect, error_level=ErrorLevel.RAISE) if s is not None]
    except (ParseError, TokenError) as exc:
        return [], Validation(False, f"{dialect} SQL does not parse: {str(exc).splitlines()[0]}")
    if not statements:
        return [], Validation(False, "no SQL statement")
    return statements, None


@VALIDATORS.register("parser")
def sql_parses(text: str, ctx: ValidationContext) -> Validation:
    return _parse_sql(text, ctx)[1] or Validation(True)


@VALIDATORS.register("parser-strict")
def sql_read_only_query(text: str, ctx: ValidationContext) -> Validation:
    statements, failed = _parse_sql(text, ctx)
    if failed:
        return failed
    if len(statements) != 1:
        return Validation(False, f"expected one query, found {len(statements)} statements")
    kind = type(statements[0]).__name__
    return Validation(True) if kind in READ_ONLY else Validation(False, f"not a read-only query ({kind})")


def _json(text: str) -> tuple[Any, Validation | None]:
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, Validation(False, f"invalid JSON: {exc}")
    except RecursionError:
        return None, Validation(False, "invalid JSON: nested too deeply")


def _schema_check(value: Any, schema: dict[str, Any]) -> Validation:
    error = validate_instance(value, schema)  # never fetches a $ref, never raises
    return Validation(True) if error is None else Validation(False, error)


@VALIDATORS.register("json")
def json_value(text: str, ctx: ValidationContext) -> Validation:
    value, failed = _json(text)
    if failed:
        return failed
    return _schema_check(value, ctx.decoding.json_schema) if ctx.decoding.json_schema else Validation(True)


@VALIDATORS.register("json_schema")
def json_schema_value(text: str, ctx: ValidationContext) -> Validation:
    if not ctx.decoding.json_schema:
        return Validation(None, "validator unavailable: validation json_schema needs training.decoding.json_schema")
    value, failed = _json(text)
    return failed or _schema_check(value, ctx.decoding.json_schema)


@VALIDATORS.register("cypher")
def cypher_syntax(text: str, ctx: ValidationContext) -> Validation:
    from expertkit.runtime.grammar import GrammarSpec, compile_grammar

    if ctx.tokenizer is None:
        return Validation(None, "validator unavailable: the Cypher check needs the tokenizer")
    spec = GrammarSpec("lark", grammar_text("cypher", "lark"), "cypher")
    grammar = compile_grammar(ctx.tokenizer, ctx.vocab_size, spec)
    return Validation(True) if grammar.accepts(text) else Validation(False, "not a read-only Cypher query")


def tsc_command() -> list[str] | None:
    found = shutil.which("tsc")
    return [found] if found else None


@VALIDATORS.register("tsc")
def typescript_compiles(text: str, ctx: ValidationContext) -> Validation:
    command = tsc_command()
    if command is None:
        return Validation(None, "validator unavailable: TypeScript's tsc is not installed (npm install -g typescript)")
    with tempfile.TemporaryDirectory(prefix="expertkit-tsc-") as tmp:
        source = Path(tmp) / "answer.ts"
        source.write_text(text, encoding="utf-8")
        try:
            done = subprocess.run(
                [*command, "--noEmit", "--pretty", "false", str(source)],
                capture_output=True,
                text=True,
                timeout=TSC_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return Validation(None, f"validator unavailable: tsc took over {TSC_TIMEOUT_S} s")
    if done.returncode == 0:
        return Validation(True)
    first = (done.stdout or done.stderr).strip().splitlines()
    return Validation(False, first[0].replace(str(source), "answer.ts") if first else "tsc failed")


def validate_output(text: str, stopped: bool, ctx: ValidationContext) -> Validation:
    """Run the manifest's validator; a generation cut by ``max_tokens`` is invalid whatever it parses to."""
    name = ctx.decoding.validation or "none"
    if not stopped:
        return Validation(False, "generation was cut off by max_tokens (no stop condition reached)")
    if name == "none":
        return Validation(True)
    try:
        return VALIDATORS[name](text.strip(), ctx)
    except Exception as exc:  # one output's validator failing is that output's problem, never the batch's
        return Validation(None, f"validator unavailable: {name} failed: {type(exc).__name__}: {str(exc)[:200]}")
