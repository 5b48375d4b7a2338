"""Build small experts on disk for data-pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MULTI_TURN_TOOL = {
    "messages": [
        {"role": "system", "content": "You are a weather agent."},
        {"role": "user", "content": "Is it warm in Paris?", "context": "Paris is in France."},
        {"role": "assistant", "content": "Let me check.", "think": "Need the tool."},
        {"role": "user", "content": "Yes please check the weather."},
        {"role": "assistant_toolcall", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"role": "toolresult", "content": "22 degrees and sunny"},
        {"role": "assistant", "content": "It is 22 degrees and sunny in Paris.", "cite": "get_weather"},
    ]
}
SINGLE_TURN = {
    "messages": [
        {"role": "system", "content": "You write SQL."},
        {"role": "user", "content": "How many singers are older than 56?"},
        {"role": "assistant", "content": "SELECT count(*) FROM singer WHERE age > 56;"},
    ]
}

# A sparring example: the model's own wrong answer is shown (train: false), only the verdict is trained.
SPARRING = {
    "messages": [
        {"role": "system", "content": "You write SQL."},
        {"role": "user", "content": "How many singers are older than 56?"},
        {"role": "assistant", "content": "SELECT count(*) FROM singer WHERE age < 56;", "train": False},
        {"role": "user", "content": "Is this correct?"},
        {"role": "assistant", "content": "It is incorrect."},
    ]
}


def qa_record(number: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"What is {number} plus {number}? Say it as SQL please."},
            {"role": "assistant", "content": f"SELECT {number} + {number};"},
        ]
    }


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_expert(
    directory: Path, model_dir: Path, dataset: dict[str, Any], config: dict[str, Any] | None = None
) -> Path:
    """An expert directory with a v2 manifest whose base model is ``model_dir`` (a local HF dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "schema_version": "2.0",
        "name": "expert-test",
        "version": "0.1.0",
        "description": "test expert",
        "base_models": [
            {"name": str(model_dir), "adapters": [{"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj"]}]}
        ],
        "training": {"config": {"max_seq_length": 128, **(config or {})}, "dataset": dataset},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return directory
