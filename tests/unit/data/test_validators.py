"""Each of the five validators passes on good data and trips on data built to break it."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from expertkit.data.dataset_checks import VALIDATORS, CheckInput, run_validators
from expertkit.data.mapping import to_conversation
from expertkit.data.packing import best_fit_decreasing, pack_rows
from expertkit.data.render import IGNORE_INDEX, ConversationRenderer
from expertkit.manifest.sections import DataChecks

from .helpers import MULTI_TURN_TOOL, SINGLE_TURN, qa_record


@pytest.fixture
def tokenizer(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def _examples(tokenizer, records):
    renderer = ConversationRenderer(tokenizer)
    examples = []
    for number, record in enumerate(records, start=1):
        conversation = to_conversation(record, None)
        rendered = renderer.render(conversation)
        examples.append({
            "input_ids": rendered.input_ids, "labels": rendered.labels, "weights": rendered.weights,
            "assistant_turns": rendered.assistant_turns, "location": f"data.jsonl:{number}",
            "conversation": json.dumps(conversation.to_json()),
        })  # fmt: skip
    return examples


def _check(tokenizer, examples, rows=None, settings=None):
    if rows is None:
        rows = pack_rows(examples, best_fit_decreasing([len(e["input_ids"]) for e in examples], 512))
    results = run_validators(CheckInput(examples, rows, tokenizer, settings or DataChecks()))
    return {r.name: r for r in results}


def test_all_pass_on_good_data(tokenizer):
    results = _check(tokenizer, _examples(tokenizer, [SINGLE_TURN, MULTI_TURN_TOOL, qa_record(1), qa_record(2)]))
    assert set(results) == set(VALIDATORS) == {
        "supervised_ratio", "span_count", "trained_text", "packed_layout", "label_sanity"
    }  # fmt: skip
    assert all(r.passed for r in results.values()), [r.failures for r in results.values()]


def test_supervised_ratio_trips_outside_band_and_on_untrained_example(tokenizer):
    examples = _examples(tokenizer, [SINGLE_TURN, qa_record(1)])
    result = _check(tokenizer, examples, settings=DataChecks(min_supervised_ratio=0.9))["supervised_ratio"]
    assert not result.passed and "outside the band [90%, 95%]" in result.failures[0]
    examples[1]["labels"] = [IGNORE_INDEX] * len(examples[1]["labels"])
    result = _check(tokenizer, examples, settings=DataChecks(min_supervised_ratio=0.0))["supervised_ratio"]
    assert result.failures == ["data.jsonl:2: no trained token"]


def test_span_count_trips_when_only_the_first_turn_is_trained(tokenizer):
    """The DIO changelog bug: a multi-turn example with only its first assistant turn supervised."""
    examples = _examples(tokenizer, [MULTI_TURN_TOOL])
    labels = examples[0]["labels"]
    first_end = next(i for i in range(len(labels)) if labels[i] != IGNORE_INDEX and labels[i + 1] == IGNORE_INDEX)
    examples[0]["labels"] = labels[: first_end + 1] + [IGNORE_INDEX] * (len(labels) - first_end - 1)
    result = _check(tokenizer, examples)["span_count"]
    assert result.failures == ["data.jsonl:1: 1 supervised spans for 3 turns"]


def test_trained_text_trips_on_trained_prompt(tokenizer):
    examples = _examples(tokenizer, [SINGLE_TURN])
    examples[0]["labels"] = list(examples[0]["input_ids"])  # the whole prompt trained
    result = _check(tokenizer, examples)["trained_text"]
    assert not result.passed and "trained role markers ['<|im_start|>']" in result.failures[0]
    # user text trained without any marker token
    examples = _examples(tokenizer, [SINGLE_TURN])
    ids = examples[0]["input_ids"]
    user = tokenizer("How many singers are older than 56?", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i : i + len(user)] == user)
    examples[0]["labels"][start : start + len(user)] = user
    result = _check(tokenizer, examples)["trained_text"]
    assert result.failures == ["data.jsonl:1: user text is trained: 'How many singers are older than 56?'"]


def test_packed_layout_trips_on_wrong_positions_and_boundary_labels(tokenizer):
    examples = _examples(tokenizer, [SINGLE_TURN, qa_record(1)])
    rows = pack_rows(examples, [[0, 1]])
    rows[0]["position_ids"] = list(range(len(rows[0]["input_ids"])))  # no restart at the boundary
    assert _check(tokenizer, examples, rows)["packed_layout"].failures == [
        "row 1: position ids do not restart exactly at example boundaries"
    ]
    rows = pack_rows(examples, [[0, 1]])
    boundary = rows[0]["seq_lens"][0]
    rows[0]["labels"][boundary] = rows[0]["input_ids"][boundary]  # trained across the boundary
    assert _check(tokenizer, examples, rows)["packed_layout"].failures == [
        f"row 1: the token at offset {boundary} is trained on the previous example"
    ]


def test_label_sanity_trips_on_out_of_vocab_and_constant_labels(tokenizer):
    examples = _examples(tokenizer, [SINGLE_TURN])
    trained = [i for i, label in enumerate(examples[0]["labels"]) if label != IGNORE_INDEX]
    examples[0]["labels"][trained[0]] = len(tokenizer) + 7
    result = _check(tokenizer, examples, rows=[])["label_sanity"]
    assert f"label {len(tokenizer) + 7} outside the vocabulary (size {len(tokenizer)})" in result.failures
    for i in trained:
        examples[0]["labels"][i] = 42
    result = _check(tokenizer, examples, rows=[])["label_sanity"]
    assert result.failures == ["every trained label is the same token (42)"]


def test_skip_marks_a_failure_overridden(tokenizer):
    examples = _examples(tokenizer, [SINGLE_TURN])
    settings = DataChecks(min_supervised_ratio=0.9, skip=["supervised_ratio"])
    result = _check(tokenizer, examples, settings=settings)["supervised_ratio"]
    assert not result.passed and result.overridden
