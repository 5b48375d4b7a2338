"""The data pipeline on the embedded SmolLM2 tokenizer: golden ChatML masks and a real expert."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from expertkit.data.expert_data import prepare_expert_data
from expertkit.data.mapping import to_conversation
from expertkit.data.render import IGNORE_INDEX, ConversationRenderer, supervised_spans
from expertkit.models.load import load_tokenizer
from unit.data.helpers import MULTI_TURN_TOOL

pytestmark = pytest.mark.integration
GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden" / "smollm2_multi_tool.json"
EXAMPLES = Path(__file__).parents[2] / "examples" / "experts"


def test_smollm2_golden_multi_turn_tool_mask(embedded_model) -> None:
    tokenizer = load_tokenizer(embedded_model)
    renderer = ConversationRenderer(tokenizer)
    conversation = to_conversation(MULTI_TURN_TOOL, None)
    example = renderer.render(conversation)
    actual = {
        "segmenter": renderer.segmenter,
        "input_ids": example.input_ids,
        "trained": [int(label != IGNORE_INDEX) for label in example.labels],
        "spans": [tokenizer.decode(example.input_ids[a:b]) for a, b in supervised_spans(example.labels)],
    }
    if os.environ.get("EXPERTKIT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(actual, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    assert actual == json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert actual["segmenter"] == "prefix"
    assert actual["spans"][-1] == "It is 22 degrees and sunny in Paris.\n<cite>get_weather</cite><|im_end|>"
    served = tokenizer.apply_chat_template(conversation.to_template(), tokenize=True, return_dict=True)
    assert example.input_ids == list(served["input_ids"])


def test_typescript_expert_prepares_and_passes_validators(embedded_model) -> None:
    prepared, _ = prepare_expert_data(EXAMPLES / "expert-typescript")
    assert prepared.meta["steps"]["split"] == {"train": 10, "eval": 2}
    assert all(check["passed"] for check in prepared.meta["validators"])


def test_base_replay_keeps_the_embedded_models_own_ended_answers(embedded_model, tmp_path: Path) -> None:
    """SmolLM2 answers general prompts greedily; each answer it ended is one conversation, exactly its
    own greedy answer (the runtime's base-model path, as the forgetting metric decodes)."""
    from expertkit.data.generators import run_generator
    from expertkit.runtime.engine import Engine
    from expertkit.runtime.options import LoadOptions
    from expertkit.runtime.settings import resolve_settings
    from expertkit.workflows import base_replay  # noqa: F401  (registers the generator)

    expert = Path(__file__).resolve().parents[2] / "examples" / "experts" / "expert-sql"
    prompts = ["Reply with only the word no.", "What is 2 plus 2?", "Translate to French: the cat."]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    config = {
        "generator": "base_replay",
        "expert": str(expert),
        "prompts": "prompts.jsonl",
        "max_tokens": 48,
        "dtype": "float32",
    }
    (tmp_path / "replay.json").write_text(json.dumps(config))
    result = run_generator(tmp_path / "replay.json", tmp_path / "general.jsonl", count=3)
    written = [json.loads(line) for line in (tmp_path / "general.jsonl").read_text().splitlines()]
    assert written == result.records and len(written) >= 2
    engine = Engine.for_files([], LoadOptions(dtype="float32", base="SmolLM2-135M-Instruct"))
    settings = resolve_settings({"temperature": 0.0, "max_tokens": 48}, None)
    for record in written:
        question, answer = (m["content"] for m in record["messages"])
        assert (
            answer
            == engine.run(None, engine.prompt_ids([{"role": "user", "content": question}]), settings).text.strip()
        )
