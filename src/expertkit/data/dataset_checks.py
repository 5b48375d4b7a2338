"""Five checks over rendered and packed data that run before any training step.

Each validator is registered by name (the names ``training.dataset.checks.skip`` accepts) and
returns a :class:`CheckResult`. A failed check aborts preparation unless the manifest lists it in
``skip``, in which case it is reported as overridden.

1. ``supervised_ratio``: trained tokens / all tokens within the band, and no example untrained.
2. ``span_count``: every example has one supervised span per trained assistant turn.
3. ``trained_text``: no trained token is a role marker, and no trained span contains system,
   user or tool-result text, or an assistant turn marked ``train: false``.
4. ``packed_layout``: in packed rows, position ids restart exactly at example boundaries, every
   boundary label is masked and each example's labels are exactly its unpacked labels.
5. ``label_sanity``: every label is inside the vocabulary and they are not all one token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from expertkit.data.conversation import TRAINED_ROLES
from expertkit.data.render import IGNORE_INDEX, supervised_spans
from expertkit.manifest.sections import DataChecks
from expertkit.registry import Registry

MAX_LISTED = 5
MIN_QUOTED_CHARS = 16


@dataclass(frozen=True)
class CheckInput:
    """What the validators look at: rendered examples (with their conversations) and packed rows."""

    examples: Sequence[dict[str, Any]]  # input_ids, labels, assistant_turns, conversation, location
    rows: Sequence[dict[str, Any]]  # packed rows over ``examples``
    tokenizer: Any
    settings: DataChecks
    allowed_special_ids: frozenset[int] = frozenset()


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    failures: list[str] = field(default_factory=list)
    overridden: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "overridden": self.overridden,
            "detail": self.detail,
            "failures": self.failures,
        }


Validator = Callable[[CheckInput], CheckResult]
VALIDATORS: Registry[Validator] = Registry()


def _result(name: str, failures: list[str], detail: str) -> CheckResult:
    listed = failures[:MAX_LISTED] + (
        [f"... and {len(failures) - MAX_LISTED} more"] if len(failures) > MAX_LISTED else []
    )
    return CheckResult(name, not failures, detail, listed)


@VALIDATORS.register("supervised_ratio")
def supervised_ratio(data: CheckInput) -> CheckResult:
    total = sum(len(e["labels"]) for e in data.examples)
    trained = sum(sum(label != IGNORE_INDEX for label in e["labels"]) for e in data.examples)
    ratio = trained / total if total else 0.0
    low, high = data.settings.min_supervised_ratio, data.settings.max_supervised_ratio
    failures = [f"{e['location']}: no trained token" for e in data.examples if all(x == -100 for x in e["labels"])]
    if not low <= ratio <= high:
        failures.insert(
            0,
            f"{ratio:.1%} of tokens are trained, outside the band [{low:.0%}, {high:.0%}] "
            "(training.dataset.checks.min_supervised_ratio / max_supervised_ratio)",
        )
    return _result("supervised_ratio", failures, f"{trained}/{total} tokens trained ({ratio:.1%})")


@VALIDATORS.register("span_count")
def span_count(data: CheckInput) -> CheckResult:
    failures = []
    for example in data.examples:
        spans = len(supervised_spans(example["labels"]))
        if spans != example["assistant_turns"]:
            failures.append(f"{example['location']}: {spans} supervised spans for {example['assistant_turns']} turns")
    return _result("span_count", failures, f"{len(data.examples)} examples checked")


def _forbidden_ids(data: CheckInput) -> set[int]:
    tokenizer = data.tokenizer
    special = set(getattr(tokenizer, "all_special_ids", []))
    allowed = {tokenizer.eos_token_id, *data.allowed_special_ids}
    return special - allowed


@VALIDATORS.register("trained_text")
def trained_text(data: CheckInput) -> CheckResult:
    forbidden = _forbidden_ids(data)
    failures = []
    for example in data.examples:
        trained_ids = [label for label in example["labels"] if label != IGNORE_INDEX]
        markers = sorted({data.tokenizer.convert_ids_to_tokens(i) for i in trained_ids if i in forbidden})
        if markers:
            failures.append(f"{example['location']}: trained role markers {markers}")
            continue
        text = data.tokenizer.decode(trained_ids)
        conversation = example["conversation"]
        messages = (json.loads(conversation) if isinstance(conversation, str) else conversation)["messages"]

        def trained(message: dict[str, Any]) -> bool:  # an assistant turn without train: false
            return message["role"] in TRAINED_ROLES and message.get("train", True) is not False

        answers = " ".join(m["content"] for m in messages if trained(m))
        for message in messages:
            content = message["content"].strip()
            if not trained(message) and len(content) >= MIN_QUOTED_CHARS and content in text and content not in answers:
                what = message["role"] if message["role"] not in TRAINED_ROLES else f"{message['role']} (train: false)"
                failures.append(f"{example['location']}: {what} text is trained: {content[:40]!r}")
                break
    return _result("trained_text", failures, f"{len(forbidden)} special tokens never trained")


@VALIDATORS.register("packed_layout")
def packed_layout(data: CheckInput) -> CheckResult:
    failures = []
    for number, row in enumerate(data.rows, start=1):
        expected_positions = [p for length in row["seq_lens"] for p in range(length)]
        if list(row["position_ids"]) != expected_positions:
            failures.append(f"row {number}: position ids do not restart exactly at example boundaries")
            continue
        start = 0
        for example_id, length in zip(row["example_ids"], row["seq_lens"], strict=True):
            labels = list(row["labels"][start : start + length])
            alone = [IGNORE_INDEX, *data.examples[example_id]["labels"][1:]]
            if labels[0] != IGNORE_INDEX:
                failures.append(f"row {number}: the token at offset {start} is trained on the previous example")
            elif labels != alone:
                failures.append(f"row {number}: example {example_id}'s trained spans moved when packed")
            start += length
    return _result("packed_layout", failures, f"{len(data.rows)} rows checked")


@VALIDATORS.register("label_sanity")
def label_sanity(data: CheckInput) -> CheckResult:
    vocab = len(data.tokenizer)
    labels = {label for e in data.examples for label in e["labels"] if label != IGNORE_INDEX}
    failures = [f"label {label} outside the vocabulary (size {vocab})" for label in sorted(labels) if label >= vocab]
    failures += [f"negative label {label}" for label in sorted(labels) if label < 0]
    if len(labels) == 1:
        failures.append(f"every trained label is the same token ({next(iter(labels))})")
    return _result("label_sanity", failures, f"{len(labels)} distinct trained tokens")


def run_validators(data: CheckInput) -> list[CheckResult]:
    results = []
    for name, function in VALIDATORS.items():
        result = function(data)
        result.overridden = not result.passed and name in data.settings.skip
        results.append(result)
    return results
