"""Tiny experts to train in tests: a manifest on a tiny model and a small arithmetic-SQL dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from expertkit.train.job import TrainRequest, TrainResult
from expertkit.train.run import train_expert

LORA = {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
FAST = {"max_steps": 6, "batch_size": 2, "eval_steps": 6, "logging_steps": 2, "learning_rate": 5e-3, "bf16": False}


def qa_records(count: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {n} plus {n}? Say it as SQL please."},
                {"role": "assistant", "content": f"SELECT {n} + {n};"},
            ]
        }
        for n in range(count)
    ]


def write_tiny_expert(
    directory: Path,
    model_dirs: list[Path],
    adapter: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    soft_prompts: list[dict[str, Any]] | None = None,
    records: int = 48,
) -> Path:
    """An expert directory training ``adapter`` on each of ``model_dirs`` (local tiny HF models)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in qa_records(records)]
    (directory / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = {
        "schema_version": "2.0",
        "name": "expert-tiny",
        "version": "0.1.0",
        "description": "tiny test expert",
        "base_models": [{"name": str(m), "adapters": [adapter or LORA]} for m in model_dirs],
        "soft_prompts": soft_prompts or [],
        "training": {
            "config": {"max_seq_length": 128, **FAST, **(config or {})},
            "dataset": {
                "path": "data.jsonl",
                "split": {"eval_size": 8},
                "checks": {"min_supervised_ratio": 0.05},
            },
        },
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return directory


def train_tiny(directory: Path, model: str | None = None, **request: Any) -> tuple[TrainResult, Any]:
    """Train quietly; returns the result and the in-memory job (whose model holds the final weights)."""
    captured: dict[str, Any] = {}

    def keep(job: Any, trainer: Any) -> None:
        captured["job"], captured["trainer"] = job, trainer

    result = train_expert(TrainRequest(directory, model, progress=False, **request), on_start=keep)
    return result, captured["job"]
