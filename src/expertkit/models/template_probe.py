"""The template probe: one fixed conversation, tokenised exactly as training renders text.

Training records the probe's token ids (``training_meta.json``) and the package lock carries
them (``expert.lock.json``). Loading an expert re-renders the probe with the tokenizer at hand:
any difference in the chat template, its special tokens or the tokenizer shows up as a different
id sequence, and :func:`first_difference` says where. A hash of the template text alone would
say *that* something changed but not *what the model will now see*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROBE_VERSION = 1
# Short, but covers what templates treat specially: a system turn, a finished assistant turn in
# the history, a last user turn, non-ASCII text and code-like punctuation.
PROBE_MESSAGES: list[dict[str, str]] = [
    {"role": "system", "content": "You are a precise assistant. Answer with one line."},
    {"role": "user", "content": "Which table holds the orders? Schema: CREATE TABLE orders (id INT);"},
    {"role": "assistant", "content": "SELECT * FROM orders;"},
    {"role": "user", "content": "Now count them, s'il vous plaît — ünïcode {braces} [ok]."},
]
PROBE_ANSWER = {"role": "assistant", "content": "SELECT COUNT(*) FROM orders;"}


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))
    except Exception:  # templates without a system role (jinja raises its own types): drop it
        rest = [m for m in messages if m["role"] != "system"]
        return str(tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=generation_prompt))


def probe_record(tokenizer: Any) -> dict[str, Any]:
    """The probe's ids and token strings: the full conversation and the generation prompt.

    Text is rendered with the chat template and tokenised with ``add_special_tokens=False``, the
    way the data pipeline builds training examples.
    """
    record: dict[str, Any] = {"version": PROBE_VERSION}
    for key, messages, generation in (
        ("conversation", [*PROBE_MESSAGES, PROBE_ANSWER], False),
        ("generation", PROBE_MESSAGES, True),
    ):
        text = _render(tokenizer, messages, generation)
        ids = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        record[key] = {"ids": ids, "tokens": [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]}
    return record


@dataclass(frozen=True)
class ProbeDifference:
    """Where two probe tokenisations first differ."""

    part: str
    index: int
    locked: str
    current: str

    def describe(self) -> str:
        return (
            f"the {self.part} probe differs first at token {self.index}: "
            f"the lock has {self.locked}, this tokenizer gives {self.current}"
        )


def _token(record: dict[str, Any], index: int) -> str:
    ids, tokens = record["ids"], record["tokens"]
    if index >= len(ids):
        return "the end of the text"
    return f"{tokens[index]!r} (id {ids[index]})"


def first_difference(locked: dict[str, Any], current: dict[str, Any]) -> ProbeDifference | None:
    """The first differing token between two :func:`probe_record` results, or ``None``."""
    for part in ("conversation", "generation"):
        a, b = locked[part]["ids"], current[part]["ids"]
        if a == b:
            continue
        index = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return ProbeDifference(part, index, _token(locked[part], index), _token(current[part], index))
    return None
