"""Render a conversation into ``input_ids``, ``labels`` and per-token loss ``weights``.

The whole rendered text is tokenised once, exactly as serving tokenises it
(``add_special_tokens=False``, like ``apply_chat_template``), and each token is labelled from the
character spans the segmenter built (:mod:`expertkit.data.templates`): a token is trained when
any of its characters belongs to a trained segment. Labels are ``-100`` where not trained;
weights are 0 there, ``loss_weighting.default`` on ordinary trained tokens and the configured
weight on control tokens (end-of-turn, tool-call and think tags: the WeFT-style weighted mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from expertkit.data.conversation import Conversation
from expertkit.data.templates import SEGMENTERS, Segment, select_segmenter, template_renderer
from expertkit.errors import DataError, TemplateError
from expertkit.manifest.sections import LossWeighting

IGNORE_INDEX = -100


@dataclass(frozen=True)
class RenderedExample:
    input_ids: list[int]
    labels: list[int]
    weights: list[float]
    assistant_turns: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def resolve_token_weights(tokenizer: Any, weighting: LossWeighting | None) -> tuple[float, dict[int, float]]:
    """(default weight, {token id: weight}); every weighted text must be exactly one token."""
    if weighting is None:
        return 1.0, {}
    weights: dict[int, float] = {}
    for text, weight in weighting.token_weights.items():
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise DataError(
                f"training.config.loss_weighting.token_weights: {text!r} is {len(ids)} tokens, not one",
                "weight single tokens only; declare control tokens in training.dataset.special_tokens",
            )
        weights[ids[0]] = weight
    return weighting.default, weights


class ConversationRenderer:
    """Everything needed to turn conversations into labelled token ids for one tokenizer.

    Picklable, so ``datasets.map(num_proc=...)`` can ship it to worker processes.
    """

    def __init__(self, tokenizer: Any, weighting: LossWeighting | None = None) -> None:
        self.tokenizer = tokenizer
        self.segmenter = select_segmenter(template_renderer(tokenizer))
        self.default_weight, self.token_weights = resolve_token_weights(tokenizer, weighting)

    def segments(self, conversation: Conversation) -> list[Segment]:
        render = template_renderer(self.tokenizer)
        messages = conversation.to_template()
        flags = [m.trained for m in conversation.messages]
        segments = SEGMENTERS[self.segmenter](render, messages, flags)
        text = "".join(s.text for s in segments)
        if text != render(messages):
            raise TemplateError(
                f"{conversation.location or 'a conversation'}: the {self.segmenter} segments drift from the "
                "chat template's own output",
                "report this with the conversation; the template changed in a way expertkit does not model",
            )
        return segments

    def render(self, conversation: Conversation) -> RenderedExample:
        segments = self.segments(conversation)
        text = "".join(s.text for s in segments)
        trained_chars = np.zeros(len(text) + 1, dtype=np.int64)
        position = 0
        for segment in segments:
            if segment.trained:
                trained_chars[position + 1 : position + 1 + len(segment.text)] = 1
            position += len(segment.text)
        cumulative = np.cumsum(trained_chars)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = list(encoding["input_ids"])
        labels, weights = [], []
        for token, (start, end) in zip(input_ids, encoding["offset_mapping"], strict=True):
            trained = end > start and cumulative[end] - cumulative[start] > 0
            labels.append(token if trained else IGNORE_INDEX)
            weights.append(self.token_weights.get(token, self.default_weight) if trained else 0.0)
        return RenderedExample(input_ids, labels, weights, conversation.assistant_turns)


def supervised_spans(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) runs of trained positions."""
    spans: list[tuple[int, int]] = []
    start = None
    for index, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = index
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, index))
            start = None
    return spans
