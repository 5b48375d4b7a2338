"""Training on the embedded SmolLM2-135M: bf16 where the CPU has it, LoRA, a few steps, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertkit.train.job import TrainRequest
from expertkit.train.run import train_expert
from expertkit.training_meta import TrainingMeta

pytestmark = pytest.mark.integration


def test_a_few_steps_on_the_embedded_model(tmp_path: Path, embedded_model) -> None:
    expert = tmp_path / "expert"
    expert.mkdir()
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You translate questions into one SQL query."},
                {"role": "user", "content": f"CREATE TABLE t (id INTEGER, v INTEGER);\nHow many rows have v > {n}?"},
                {"role": "assistant", "content": f"SELECT count(*) FROM t WHERE v > {n};"},
            ]
        }
        for n in range(40)
    ]
    (expert / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    manifest = {
        "schema_version": "2.0",
        "name": "expert-embedded-train",
        "version": "0.0.1",
        "description": "integration",
        "base_models": [
            {
                "name": "SmolLM2-135M-Instruct",
                "adapters": [{"type": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}],
            }
        ],
        "training": {
            "config": {"max_steps": 3, "batch_size": 2, "max_seq_length": 256, "eval_steps": 3, "learning_rate": 1e-3},
            "dataset": {"path": "data.jsonl", "split": {"eval_size": 6}, "checks": {"min_supervised_ratio": 0.1}},
        },
    }
    (expert / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    result = train_expert(TrainRequest(expert, progress=False))
    meta = result.meta
    assert meta is not None and meta.base_model.architecture == "LlamaForCausalLM"
    assert meta.metrics.steps == 3 and (meta.metrics.best_eval_loss or 10) < 10
    written = json.loads((result.weights_dir / "training_meta.json").read_text(encoding="utf-8"))
    assert meta.to_json() == written  # the typed result is the file, key for key
    assert list(written) == list(TrainingMeta.model_fields)  # the order it was always written in
    assert TrainingMeta.model_validate(written).to_json() == written  # and it reads back unchanged
    history = meta.selection.history
    assert history and history[-1]["eval_loss"] < 5.0
    assert (result.weights_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (result.weights_dir / "loss_curve.png").is_file()
