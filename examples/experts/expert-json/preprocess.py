"""Preprocessing hook of the JSON function-calling expert (BFCL v4).

A BFCL record holds the question as ``[[{role, content}, ...]]`` and the callable functions; its
answer lives in ``possible_answer/<same file>`` keyed by ``id``, as ``[{fname: {arg: [allowed
values...]}}]``. This hook adds:

* ``question``: the user turn's text;
* ``functions``: the function signatures as compact JSON;
* ``answer``: the canonical call(s) as JSON, ``{"name": ..., "arguments": {...}}`` (a list for
  parallel calls), taking each argument's first allowed value and leaving out optional arguments
  whose first allowed value is ``""`` (BFCL's "may be omitted").

Items in BFCL's evaluation hold-out (:func:`expertkit.eval.tasks.bfcl_held_out`, a fixed 20% of
every category) are skipped: ``expert-cli eval`` scores the expert on exactly those.

The hook contract: ``preprocess(records, manifest_dir) -> iterable of records``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from expertkit.eval.tasks import JSON_SYSTEM, bfcl_held_out

ANSWERS = Path("../../../../shared/data/json/bfcl/possible_answer")
SYSTEM = JSON_SYSTEM  # the same prompt expert-cli eval uses


@cache
def _answers(directory: Path) -> dict[str, list[dict[str, Any]]]:
    answers: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.json")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                answers[record["id"]] = record["ground_truth"]
    return answers


def canonical_call(ground_truth: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    ((name, arguments),) = ground_truth.items()
    chosen = {arg: allowed[0] for arg, allowed in arguments.items() if allowed and allowed[0] != ""}
    return {"name": name, "arguments": chosen}


def preprocess(records: Iterable[dict[str, Any]], manifest_dir: Path) -> Iterator[dict[str, Any]]:
    answers = _answers((manifest_dir / ANSWERS).resolve())
    for record in records:
        if "messages" in record:  # a conversation already (sparring, generated data): as it is
            yield record
            continue
        if bfcl_held_out(record["id"]):
            continue
        truth = answers.get(record["id"])
        if truth is None:
            raise ValueError(f"no ground truth for id {record['id']!r} in {ANSWERS}")
        turns = [turn for group in record["question"] for turn in group if turn.get("role") == "user"]
        calls = [canonical_call(item) for item in truth]
        yield {
            **record,
            "system": SYSTEM,
            "question": turns[-1]["content"],
            "functions": json.dumps(record["function"], ensure_ascii=False, separators=(",", ":")),
            "answer": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False),
        }
