"""Golden loss masks: a fixed conversation's ids and exactly which tokens are supervised.

Regenerate with ``EXPERTKIT_UPDATE_GOLDEN=1 pytest tests/unit/data/test_render_golden.py`` and
review the diff: every change to a golden file is a change to what the model is trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from expertkit.data.mapping import to_conversation
from expertkit.data.render import IGNORE_INDEX, ConversationRenderer, supervised_spans

from .helpers import MULTI_TURN_TOOL, SINGLE_TURN, SPARRING

GOLDEN = Path(__file__).parents[2] / "fixtures" / "golden"
EXPECTED_SPANS = {
    ("chatml", "single"): ["SELECT count(*) FROM singer WHERE age > 56;<|im_end|>"],
    ("chatml", "multi_tool"): [
        "<think>\nNeed the tool.\n</think>\n\nLet me check.<|im_end|>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 22 degrees and sunny in Paris.\n<cite>get_weather</cite><|im_end|>",
    ],
    ("qwen3", "single"): ["<think>\n\n</think>\n\nSELECT count(*) FROM singer WHERE age > 56;<|im_end|>"],
    # Qwen3 drops the reasoning of turns before the last user query, and gives the last turn an
    # (empty) think block: what the template renders is what is trained.
    ("qwen3", "multi_tool"): [
        "Let me check.<|im_end|>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "<think>\n\n</think>\n\nIt is 22 degrees and sunny in Paris.\n<cite>get_weather</cite><|im_end|>",
    ],
    # the model's wrong answer (train: false) is in the text, never in a trained span
    ("chatml", "sparring"): ["It is incorrect.<|im_end|>"],
    ("qwen3", "sparring"): ["<think>\n\n</think>\n\nIt is incorrect.<|im_end|>"],
}
RECORDS = {"single": SINGLE_TURN, "multi_tool": MULTI_TURN_TOOL, "sparring": SPARRING}


def _golden(template: str, name: str, tokenizer, record) -> dict:
    renderer = ConversationRenderer(tokenizer)
    example = renderer.render(to_conversation(record, None))
    return {
        "segmenter": renderer.segmenter,
        "text": tokenizer.decode(example.input_ids),
        "input_ids": example.input_ids,
        "trained": [int(label != IGNORE_INDEX) for label in example.labels],
        "spans": [tokenizer.decode(example.input_ids[a:b]) for a, b in supervised_spans(example.labels)],
    }


@pytest.mark.parametrize("template", ["chatml", "qwen3"])
@pytest.mark.parametrize("name", ["single", "multi_tool", "sparring"])
def test_golden_masks(template, name, tiny_llama_dir, tiny_qwen3_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir if template == "chatml" else tiny_qwen3_dir)
    record = RECORDS[name]
    actual = _golden(template, name, tokenizer, record)
    path = GOLDEN / f"{template}_{name}.json"
    if os.environ.get("EXPERTKIT_UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert actual["spans"] == EXPECTED_SPANS[(template, name)]
    assert actual == expected
    # Every trained assistant turn is one span; nothing of system, user, context, tool output or an
    # assistant turn marked train: false is trained.
    trained = [m for m in record["messages"] if m["role"].startswith("assistant") and m.get("train", True)]
    assert len(actual["spans"]) == len(trained)
    forbidden = (
        "weather agent",
        "Is it warm",
        "Paris is in France",
        "22 degrees and sunny\n",
        "<|im_start|>",
        "age < 56",
    )
    for text in forbidden:
        assert not any(text in span for span in actual["spans"])
    if name == "sparring":
        assert "age < 56" in actual["text"]  # shown to the model, not learnt


def test_segmenter_chosen_by_template(tiny_llama_dir, tiny_qwen3_dir):
    assert ConversationRenderer(AutoTokenizer.from_pretrained(tiny_llama_dir)).segmenter == "prefix"
    assert ConversationRenderer(AutoTokenizer.from_pretrained(tiny_qwen3_dir)).segmenter == "qwen3"


def test_labels_weights_and_ids_align(tiny_llama_dir):
    from expertkit.manifest.sections import LossWeighting

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    renderer = ConversationRenderer(tokenizer, LossWeighting(token_weights={"<|im_end|>": 2.0}))
    example = renderer.render(to_conversation(MULTI_TURN_TOOL, None))
    assert len(example.input_ids) == len(example.labels) == len(example.weights)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for token, label, weight in zip(example.input_ids, example.labels, example.weights, strict=True):
        if label == IGNORE_INDEX:
            assert weight == 0.0
        else:
            assert label == token
            assert weight == (2.0 if token == end else 1.0)
    # the ids are exactly what serving tokenises from the model's own template
    served = tokenizer.apply_chat_template(to_conversation(MULTI_TURN_TOOL, None).to_template(), tokenize=False)
    assert example.input_ids == tokenizer(served, add_special_tokens=False)["input_ids"]


def test_non_prefix_stable_template_fails_loudly(tiny_llama_dir):
    from expertkit.errors import TemplateError

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    # A template that rewrites history (prints only the last message's content in upper case).
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if loop.last %}{{ m['content'] | upper }}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(TemplateError, match="not prefix-stable"):
        ConversationRenderer(tokenizer)


def test_control_tokens_and_weights(tiny_llama_dir):
    from expertkit.data.render import resolve_token_weights
    from expertkit.errors import DataError
    from expertkit.manifest.sections import LossWeighting
    from expertkit.models.tokens import add_control_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    with pytest.raises(DataError, match="not one"):
        resolve_token_weights(tokenizer, LossWeighting(token_weights={"<tool_call>": 2.0}))
    assert add_control_tokens(tokenizer, ["<tool_call>", "</tool_call>"]) == 2
    _, weights = resolve_token_weights(tokenizer, LossWeighting(token_weights={"<tool_call>": 2.0}))
    assert weights == {tokenizer.convert_tokens_to_ids("<tool_call>"): 2.0}
    example = ConversationRenderer(tokenizer, LossWeighting(token_weights={"<tool_call>": 2.0})).render(
        to_conversation(MULTI_TURN_TOOL, None)
    )
    assert 2.0 in example.weights
