"""The runtime on the embedded SmolLM2-135M: the SQL grammar and validator on real Spider questions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from expertkit.runtime.answer import AskOptions, ask
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SYSTEM = "You translate questions into one SQLite query for the given schema. Dialect: sqlite"


def zero_lora_expert(directory: Path, base_dir: Path) -> Path:
    """An expert whose LoRA starts at zero (B = 0): the base model's own answers, under the SQL
    expert's decoding contract (grammar, stop sequences, strict parser, retries)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from expertkit.models.fingerprint import fingerprint

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    weights = directory / "weights" / "smollm2-135m-instruct"
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(
        str(weights / "adapter")
    )
    example = json.loads((REPO / "examples/experts/expert-sql/manifest.json").read_text())
    decoding = {**example["training"]["decoding"], "retries": 0}
    manifest = {
        "schema_version": "2.0",
        "name": "expert-sql-zero",
        "version": "0.0.1",
        "description": "the SQL expert's decoding contract on the base model",
        "base_models": [
            {
                "name": "SmolLM2-135M-Instruct",
                "adapters": [{"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}],
            }
        ],
        "training": {"decoding": decoding},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    fp = fingerprint(base_dir)
    meta = {
        "base_model": {
            "weights_sha256": fp.weights_sha256,
            "architecture": fp.architecture,
            "vocab_size": fp.vocab_size,
        },
        "chat_template_sha256": fp.chat_template_sha256,
    }
    (weights / "training_meta.json").write_text(json.dumps(meta))
    return directory


def spider_dev_prompts(count: int) -> list[str]:
    spec = importlib.util.spec_from_file_location("sql_hook", REPO / "examples/experts/expert-sql/preprocess.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    schemas = hook._schemas((SHARED_DATA / "sql/spider/tables.json").resolve())
    rows = json.loads((SHARED_DATA / "sql/spider/dev.json").read_text())[:count]
    return [f"{schemas[r['db_id']]}\n\nQuestion: {r['question']}" for r in rows]


def test_sql_grammar_gives_sql_that_parses_for_20_spider_questions(tmp_path: Path, embedded_model) -> None:
    """The base model alone (an untrained adapter) under the SQL grammar, greedy with a repetition
    penalty: every answer that ends by a stop condition is SQL that sqlglot parses, and most answers
    end (the rest loop until max_tokens, which the validator then marks invalid)."""
    import sqlglot

    expert = zero_lora_expert(tmp_path / "expert-sql-zero", embedded_model.path)
    engine = Engine.for_experts([str(expert)], LoadOptions(dtype="bfloat16"))
    overrides = {"temperature": 0.0, "repetition_penalty": 1.2, "max_tokens": 160, "stop_sequences": [";"]}
    answers = []
    for prompt in spider_dev_prompts(20):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        answers.append(ask(engine, "expert-sql-zero", messages, AskOptions(overrides=overrides)))
    finished = [a for a in answers if a.result.stopped]
    assert len(finished) >= 14, [a.text for a in answers if not a.result.stopped]
    for answer in finished:
        assert answer.text.lstrip().upper().startswith(("SELECT", "WITH", "("))
        sqlglot.parse_one(answer.text, read="sqlite")
    for answer in answers:
        assert answer.validation.valid is (answer.result.stopped and answer.validation.error is None)
