"""The ``distill`` generator: a teacher behind any OpenAI-compatible endpoint (vLLM, Ollama, a llama.cpp
server, another ``expert-cli serve``) answers prompts, and an answer is kept only if it passes:

- ``validator``: the expert's own output validator (its manifest's ``training.decoding.validation``:
  SQL parses and is read-only, JSON matches its schema, ...); an answer cut off by ``max_tokens`` never
  passes;
- ``sql_returns_rows``: the SQL runs on a database (read-only, bounded) and returns a row.

Every rejection is counted by reason in the lineage sidecar (the format every generator writes), so a
teacher that writes invalid SQL shows up as such. A workflow, not a data generator: it needs the
runtime's validators. The teacher is called with ``urllib`` (one small JSON POST per prompt; bounded
response size and time), so no client library is needed.

Config::

    {"generator": "distill", "count": 200, "expert": "..", "prompts": "prompts.jsonl",
     "teacher": {"url": "http://127.0.0.1:8000/v1", "model": "teacher", "api_key_env": "TEACHER_KEY",
                 "temperature": 0.0, "max_tokens": 256, "timeout_s": 60},
     "checks": [{"type": "validator"}, {"type": "sql_returns_rows", "sqlite": "geo.sqlite"}]}

``prompts`` is JSONL: ``{"messages": [...]}`` without the answer, or ``{"prompt": "...", "system": "..."}``.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from expertkit.data.conversation import Conversation, Message
from expertkit.data.generators.base import GENERATORS, Answers, Generated, Progress
from expertkit.data.generators.templates import CHECKS
from expertkit.errors import DataError
from expertkit.manifest.load import load_manifest
from expertkit.manifest.sections import DecodingConfig
from expertkit.runtime.output_checks import ValidationContext, validate_output

NAME = "distill"
MAX_RESPONSE_BYTES = 1 << 20
MAX_PROMPTS = 100_000


def read_prompts(path: Path) -> list[list[Message]]:
    if not path.is_file():
        raise DataError(f"{path}: no such prompts file", "give prompts as JSONL (relative to the config)")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()[:MAX_PROMPTS], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if "messages" in row:
                messages = [Message(str(m["role"]), str(m["content"])) for m in row["messages"]]
            else:
                messages = ([Message("system", str(row["system"]))] if row.get("system") else []) + [
                    Message("user", str(row["prompt"]))
                ]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{number}: a prompt is {{messages}} or {{prompt}}: {exc}", "fix the line") from exc
        prompts.append(messages)
    return prompts


def ask_teacher(teacher: dict[str, Any], messages: list[Message]) -> tuple[str, bool]:
    """(answer, finished with a stop rather than by max_tokens); raises OSError / ValueError on failure."""
    body = {
        "model": teacher.get("model", "teacher"),
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "temperature": float(teacher.get("temperature", 0.0)),
        "max_tokens": int(teacher.get("max_tokens", 256)),
    }
    headers = {"Content-Type": "application/json"}
    if teacher.get("api_key_env") and os.environ.get(str(teacher["api_key_env"])):
        headers["Authorization"] = f"Bearer {os.environ[str(teacher['api_key_env'])]}"
    url = str(teacher["url"]).rstrip("/") + "/chat/completions"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=float(teacher.get("timeout_s", 60))) as response:
        answer = json.loads(response.read(MAX_RESPONSE_BYTES))
    choice = answer["choices"][0]
    return str(choice["message"]["content"] or ""), choice.get("finish_reason") != "length"


def _teacher(config: dict[str, Any]) -> dict[str, Any]:
    teacher = config.get("teacher")
    if not isinstance(teacher, dict) or urlparse(str(teacher.get("url", ""))).scheme not in ("http", "https"):
        raise DataError("$.teacher.url: an http(s) URL of an OpenAI-compatible API", "e.g. http://127.0.0.1:8000/v1")
    return teacher


def _checks(config: dict[str, Any], root: Path) -> list[tuple[str, Callable[[Conversation, bool], str | None]]]:
    """Each check returns ``None`` (passed) or the rejection reason."""
    found: list[tuple[str, Callable[[Conversation, bool], str | None]]] = []
    for number, spec in enumerate(config.get("checks") or []):
        kind = str(spec.get("type")) if isinstance(spec, dict) else ""
        if kind == "validator":
            decoding = _decoding(config, root)

            def validator(conversation: Conversation, stopped: bool, decoding: DecodingConfig = decoding) -> str | None:
                verdict = validate_output(conversation.messages[-1].content, stopped, ValidationContext(decoding))
                return None if verdict.valid else f"validator: {_kind(verdict.error or 'invalid')}"

            found.append((kind, validator))
        elif kind in CHECKS:
            found.append((kind, _named(kind, CHECKS[kind](spec, root))))
        else:
            raise DataError(f"$.checks[{number}].type: unknown check {kind!r}", f"validator, {', '.join(CHECKS)}")
    return found


def _kind(error: str) -> str:
    """An error without the details that make each one unique (positions, names, parentheses)."""
    return re.sub(r"\s*\([^)]*\)", "", error.split(":")[0]).strip()


def _named(kind: str, check: Callable[[Conversation], bool]) -> Callable[[Conversation, bool], str | None]:
    def named(conversation: Conversation, stopped: bool) -> str | None:
        return None if check(conversation) else kind

    return named


def _decoding(config: dict[str, Any], root: Path) -> DecodingConfig:
    if not config.get("expert"):
        raise DataError("$.expert: the validator check needs the expert whose validator to run", "name its directory")
    loaded = load_manifest(root / str(config["expert"]))
    training = loaded.manifest.training
    return training.decoding if training and training.decoding else DecodingConfig()


def run_distill(
    config: dict[str, Any], root: Path, count: int, seed: int, progress: Progress | None = None
) -> Generated:
    teacher = _teacher(config)
    prompts = read_prompts(root / str(config.get("prompts", "prompts.jsonl")))
    checks = _checks(config, root)
    answers = Answers(NAME, progress=progress)
    for messages in prompts:
        if len(answers.records) >= count:
            break
        answers.attempt()
        try:
            answer, stopped = ask_teacher(teacher, messages)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            answers.reasons[f"teacher: {type(exc).__name__}"] += 1
            continue

        def failed(conversation: Conversation, stopped: bool = stopped) -> str | None:
            return next((reason for _, check in checks if (reason := check(conversation, stopped))), None)

        answers.add(messages, answer, failed)
    return answers.generated({
        "teacher": {k: teacher.get(k) for k in ("url", "model", "temperature", "max_tokens")},
        "expert": config.get("expert"), "count": count, "seed": seed, "checks": [name for name, _ in checks],
    })  # fmt: skip


GENERATORS.register(NAME)(run_distill)  # beside the data stage's own generators, for expert-cli data generate
