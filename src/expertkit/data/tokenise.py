"""Stage two: render collected conversations to labelled tokens in parallel, and apply length rules.

Runs as a batched ``datasets.map`` so it spreads over ``num_proc`` processes and over Arrow files
on disk rather than memory. Each example gets a ``status``: ``ok``, ``truncated`` (prompt cut from
the left to fit ``max_seq_length``), ``overflow`` (too long and dropped), ``too_short`` or
``too_long`` (outside ``preprocessing.min_tokens``/``max_tokens``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from expertkit.data.conversation import Conversation
from expertkit.data.render import IGNORE_INDEX, ConversationRenderer, RenderedExample


@dataclass(frozen=True)
class LengthRules:
    max_seq_length: int
    overflow: str = "drop"  # or "truncate_prompt"
    min_tokens: int | None = None
    max_tokens: int | None = None


def truncate_prompt(example: RenderedExample, limit: int) -> RenderedExample | None:
    """Cut tokens from the left so the example fits, only if nothing trained is cut; else None."""
    cut = len(example) - limit
    if cut <= 0:
        return example
    if any(label != IGNORE_INDEX for label in example.labels[: cut + 1]):
        return None
    return RenderedExample(
        example.input_ids[cut:], example.labels[cut:], example.weights[cut:], example.assistant_turns
    )


def length_status(example: RenderedExample, rules: LengthRules) -> tuple[str, RenderedExample]:
    if rules.min_tokens is not None and len(example) < rules.min_tokens:
        return "too_short", example
    if rules.max_tokens is not None and len(example) > rules.max_tokens:
        return "too_long", example
    if len(example) <= rules.max_seq_length:
        return "ok", example
    if rules.overflow == "truncate_prompt":
        truncated = truncate_prompt(example, rules.max_seq_length)
        if truncated is not None:
            return "truncated", truncated
    return "overflow", example


def render_batch(batch: dict[str, list[Any]], renderer: ConversationRenderer, rules: LengthRules) -> dict[str, Any]:
    out: dict[str, list[Any]] = {
        key: [] for key in ("input_ids", "labels", "weights", "assistant_turns", "length", "status")
    }
    for text, location in zip(batch["conversation"], batch["location"], strict=True):
        conversation = Conversation.from_json(json.loads(text), location=location)
        status, example = length_status(renderer.render(conversation), rules)
        out["input_ids"].append(example.input_ids)
        out["labels"].append(example.labels)
        out["weights"].append(example.weights)
        out["assistant_turns"].append(example.assistant_turns)
        out["length"].append(len(example))
        out["status"].append(status)
    return out
