"""The ``templates`` generator: Jinja templates over value tables → conversations (the SFT seed's
templated episode generators).

Config (JSON)::

    {"generator": "templates", "count": 500, "seed": 0,
     "tables": {"state": {"sqlite": "geo.sqlite", "query": "SELECT state_name AS state, capital FROM state"}},
     "templates": [{"table": "state",
                    "messages": [{"role": "system", "content": "You write SQL."},
                                 {"role": "user", "content": ["What is the capital of {{ state }}?",
                                                              "{{ state }}: capital?"]},
                                 {"role": "assistant", "content": "SELECT capital FROM state WHERE ...",
                                  "think": "The capital is a column of state."}],
                    "contrastive": {"wrong": "SELECT capital FROM city", "correction": "That is wrong. Fix it."}}],
     "think_omission": 0.5, "contrastive_ratio": 0.2,
     "checks": [{"type": "sql_returns_rows", "sqlite": "geo.sqlite"}]}

``constants`` (an object) are values every template sees beside its row (a schema text, a system prompt).
Each example draws a template (in turn), a row of its table and, for every message whose text is a
list, one variant (style diversity); ``think`` is dropped with probability ``think_omission``; with
probability ``contrastive_ratio`` the last assistant turn is first answered wrongly (shown, ``train:
false``), corrected by the user, then answered right. Duplicates are dropped and counted; every check
must pass, else the example is rejected and counted under the check's name.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from expertkit.data.conversation import ROLES, Conversation, Message
from expertkit.data.generators.base import (
    ATTEMPTS_PER_EXAMPLE,
    GENERATORS,
    MESSAGE_KEYS,
    VERSION,
    Generated,
    Progress,
    Tally,
    load_table,
    readonly_sqlite,
)
from expertkit.data.mapping import RecordError, check_conversation
from expertkit.errors import DataError
from expertkit.registry import Registry

Check = Callable[[dict[str, Any], Path], Callable[[Conversation], bool]]
CHECKS: Registry[Check] = Registry()
NAME = "templates"


@CHECKS.register("sql_returns_rows")
def sql_returns_rows(spec: dict[str, Any], root: Path) -> Callable[[Conversation], bool]:
    """The last assistant turn is SQL that runs on the database (read-only, bounded) and returns a row."""
    connection = readonly_sqlite(root / str(spec.get("sqlite", "")))

    def check(conversation: Conversation) -> bool:
        answer = next(m.content for m in reversed(conversation.messages) if m.trained)
        try:
            return connection.execute(answer).fetchone() is not None
        except (sqlite3.Error, sqlite3.Warning):
            return False

    return check


def _render(env: SandboxedEnvironment, text: Any, row: dict[str, Any], rng: random.Random, where: str) -> str:
    if isinstance(text, list):
        if not text:
            raise DataError(f"{where}: an empty list of variants", "give at least one text")
        text = text[rng.randrange(len(text))]
    if not isinstance(text, str):
        raise DataError(f"{where}: a text or a list of texts", "fix the generator config")
    try:
        return env.from_string(text).render(**row)
    except TemplateError as exc:
        raise DataError(f"{where}: {exc}", "use only the columns of the template's table") from exc


def _episode(template: dict[str, Any], row: dict[str, Any], config: dict[str, Any], env: Any, rng: random.Random,
             where: str) -> list[Message]:  # fmt: skip
    messages = []
    for number, spec in enumerate(template.get("messages") or []):
        at = f"{where}.messages[{number}]"
        if not isinstance(spec, dict) or spec.get("role") not in ROLES or set(spec) - set(MESSAGE_KEYS):
            raise DataError(f"{at}: role one of {sorted(ROLES)}, keys from {list(MESSAGE_KEYS)}", "fix the config")
        fields = {
            k: _render(env, spec[k], row, rng, f"{at}.{k}")
            for k in ("content", "think", "cite", "context")
            if k in spec
        }
        if "think" in fields and rng.random() < float(config.get("think_omission", 0.0)):
            del fields["think"]
        messages.append(Message(spec["role"], train=spec.get("train", True) is not False, **fields))
    contrast = template.get("contrastive")
    if contrast and rng.random() < float(config.get("contrastive_ratio", 0.0)):
        last = max(i for i, m in enumerate(messages) if m.trained)
        wrong = Message(
            messages[last].role,
            _render(env, contrast.get("wrong"), row, rng, f"{where}.contrastive.wrong"),
            train=False,
        )
        fix = Message("user", _render(env, contrast.get("correction", "That is wrong. Try again."), row, rng, where))
        messages[last:last] = [wrong, fix]
    return messages


@GENERATORS.register(NAME)
def templates(config: dict[str, Any], root: Path, count: int, seed: int, progress: Progress | None = None) -> Generated:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    tables = {name: load_table(spec, root, f"$.tables.{name}") for name, spec in (config.get("tables") or {}).items()}
    constants = config.get("constants") or {}
    if not isinstance(constants, dict):
        raise DataError("$.constants: an object of values every template sees", "fix the generator config")
    specs = config.get("templates")
    if not isinstance(specs, list) or not specs:
        raise DataError("$.templates: a list of templates is needed", "add at least one template")
    checks = []
    for number, spec in enumerate(config.get("checks") or []):
        kind = str(spec.get("type")) if isinstance(spec, dict) else ""
        if kind not in CHECKS:
            raise DataError(f"$.checks[{number}].type: unknown check {kind!r}", f"one of: {', '.join(CHECKS)}")
        checks.append((kind, CHECKS[kind](spec, root)))
    rng, tally, seen = random.Random(seed), Tally(), set[str]()
    records: list[dict[str, Any]] = []
    for attempt in range(count * ATTEMPTS_PER_EXAMPLE):
        if len(records) >= count:
            break
        if progress is not None:
            progress(attempt, len(records))
        index = attempt % len(specs)
        template, where = specs[index], f"$.templates[{index}]"
        rows = tables.get(template.get("table"), [{}]) if template.get("table") else [{}]
        if not rows:
            raise DataError(f"{where}.table: table {template.get('table')!r} has no rows", "fix its rows or query")
        row = {**constants, **rows[rng.randrange(len(rows))]}
        episode = _episode(template, row, config, env, rng, where)
        tally.generated += 1
        try:
            conversation = check_conversation(tuple(episode))
        except RecordError as exc:
            raise DataError(f"{where}: {exc}", "fix the template's messages") from exc
        digest = conversation.content_hash()
        if digest in seen:
            tally.duplicates += 1
            tally.note(index, "duplicate")
            continue
        seen.add(digest)
        failed = next((name for name, check in checks if not check(conversation)), None)
        if failed is not None:
            tally.rejected[failed] += 1
            tally.note(index, f"rejected:{failed}")
            continue
        tally.note(index, "kept")
        records.append({**conversation.to_json(), "generator": NAME, "template": index})
    return Generated(
        records, _lineage(config, count, seed, tally, len(records), {n: len(r) for n, r in tables.items()})
    )


def _lineage(
    config: dict[str, Any], count: int, seed: int, tally: Tally, kept: int, rows: dict[str, int]
) -> dict[str, Any]:
    return {
        "generator": NAME,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parameters": {
            "count": count,
            "seed": seed,
            "think_omission": config.get("think_omission", 0.0),
            "contrastive_ratio": config.get("contrastive_ratio", 0.0),
            "templates": len(config.get("templates") or []),
            "table_rows": rows,
            "checks": [c.get("type") for c in config.get("checks") or []],
        },
        "counts": {
            "generated": tally.generated,
            "kept": kept,
            "duplicates": tally.duplicates,
            "rejected": dict(tally.rejected),
        },
        "per_template": {str(k): dict(v) for k, v in sorted(tally.per_template.items())},
    }
