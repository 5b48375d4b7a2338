"""Training throughput: expertkit vs TRL's SFTTrainer on the same CPU, data, adapter and tokens.

The embedded SmolLM2-135M-Instruct with LoRA r=8 (alpha 16) on every linear layer, max_seq_length
512, trained on Spider examples (the SQL expert's own hook: CREATE TABLE schema + question → SQL)
for one epoch, twice in one run:

- TRL ``SFTTrainer``: its defaults plus ``packing=True``, on the same conversations as
  prompt/completion pairs (so it, too, trains on the SQL answer only);
- expertkit ``expert-cli train``'s library path on the same examples.

Both use the same learning rate, schedule, seed, rows per step and examples, so they see the same
tokens. Tokens/s counts real (non-pad) tokens. Both final adapters are then scored by one evaluator
(supervised-token cross-entropy on the same held-out Spider examples), so the losses compare.

    .venv/bin/python benchmarks/train_throughput.py [--examples 400] [--eval-examples 100]

The last line is one JSON object: ratio, expertkit_tokens_per_s, trl_tokens_per_s,
expertkit_eval_loss, trl_eval_loss.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from expertkit.models.pull import pull_model

SPIDER = Path(__file__).resolve().parent.parent / "examples" / "experts" / "expert-sql"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS = {"learning_rate": 2e-4, "batch_size": 4, "seed": 42, "warmup_ratio": 0.03, "max_seq_length": 512}
console = Console(stderr=True)


def write_expert(root: Path, conversations: list[dict[str, Any]], eval_size: int) -> Path:
    """An expert directory holding the conversations as JSONL, LoRA r=8 on every linear layer."""
    expert = root / "expert-bench"
    expert.mkdir(parents=True)
    lines = [json.dumps(c, ensure_ascii=False) for c in conversations]
    (expert / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = {
        "schema_version": "2.0",
        "name": "expert-bench",
        "version": "0.0.1",
        "description": "throughput benchmark",
        "base_models": [
            {
                "name": "SmolLM2-135M-Instruct",
                "adapters": [{"type": "lora", "r": 8, "alpha": 16, "target_modules": LINEAR}],
            }
        ],
        "training": {
            "config": {**SETTINGS, "epochs": 1, "scheduler": "linear", "eval_steps": 10_000, "logging_steps": 1},
            "dataset": {
                "path": "data.jsonl",
                "split": {"eval_size": eval_size},
                "checks": {"min_supervised_ratio": 0.01},
            },
        },
    }
    (expert / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return expert


def spider_conversations(count: int) -> list[dict[str, Any]]:
    """The SQL expert's conversations (its hook, mapping and normalisation), the first ``count``."""
    from expertkit.data.collect import collect
    from expertkit.data.prepare import data_job
    from expertkit.manifest.load import load_manifest
    from expertkit.models.load import load_tokenizer

    job = data_job(load_manifest(SPIDER), load_tokenizer(pull_model("SmolLM2-135M-Instruct")))
    with tempfile.TemporaryDirectory() as work:
        output = Path(work) / "conversations.jsonl"
        collect(job.plans, job.preprocessing, job.hook, job.root, output)
        lines = output.read_text(encoding="utf-8").splitlines()[:count]
    return [json.loads(json.loads(line)["conversation"]) for line in lines]


def train_expertkit(expert: Path) -> tuple[Any, dict[str, Any]]:
    from expertkit.train.job import TrainRequest
    from expertkit.train.run import train_expert

    captured: dict[str, Any] = {}
    result = train_expert(TrainRequest(expert, progress=True), on_start=lambda job, _: captured.update(job=job))
    assert result.meta is not None
    metrics = result.meta.metrics  # logged at the last step, before the final evaluation
    tokens, rate = metrics.tokens_seen or 0, metrics.tokens_per_s or float("nan")
    return captured["job"], {"tokens": tokens, "seconds": tokens / rate}


def split_conversations(job: Any) -> list[dict[str, Any]]:
    """The conversations expertkit trained on (its hash split), for TRL to train on the same."""
    examples = job.prepared.load("examples")
    used = sorted({i for row in job.prepared.load("train") for i in row["example_ids"]})
    return [json.loads(examples[i]["conversation"]) for i in used]


def trl_dataset(conversations: list[dict[str, Any]]) -> Any:
    import datasets

    rows = []
    for conversation in conversations:
        messages = [{"role": m["role"], "content": m["content"]} for m in conversation["messages"]]
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return datasets.Dataset.from_list(rows)


def train_trl(conversations: list[dict[str, Any]], steps: int, output: Path) -> tuple[Any, dict[str, Any]]:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    path = pull_model("SmolLM2-135M-Instruct").path
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = SFTConfig(
        output_dir=str(output),
        packing=True,
        max_length=SETTINGS["max_seq_length"],
        per_device_train_batch_size=SETTINGS["batch_size"],
        learning_rate=SETTINGS["learning_rate"],
        warmup_steps=math.ceil(SETTINGS["warmup_ratio"] * steps),  # what expertkit derives from the ratio
        lr_scheduler_type="linear",
        max_steps=steps,
        seed=SETTINGS["seed"],
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=LINEAR, task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=trl_dataset(conversations), processing_class=tokenizer, peft_config=lora
    )
    counted = {"tokens": 0}
    collate = trainer.data_collator

    def counting_collator(examples: list[dict[str, Any]]) -> Any:
        counted["tokens"] += sum(len(example["input_ids"]) for example in examples)  # before padding
        return collate(examples)

    trainer.data_collator = counting_collator
    trainer.callback_handler.remove_callback(ProgressCallback)
    start = time.time()
    trainer.train()
    return trainer.model, {"tokens": counted["tokens"], "seconds": time.time() - start}


def eval_loss(peft_model: Any, job: Any) -> float:
    """Supervised-token CE on expertkit's held-out packed rows, the same for both models."""
    from expertkit.train.collator import PackedCollator
    from expertkit.train.objective import SupervisedCausalLM

    objective = SupervisedCausalLM(peft_model).eval()
    collate = PackedCollator(job.tokenizer.pad_token_id)
    rows = list(job.prepared.load("eval"))
    ce = tokens = 0.0
    with torch.no_grad():
        for start in range(0, len(rows), 4):
            batch = collate(rows[start : start + 4])
            batch.pop("real_tokens")
            sums = objective(**batch)
            ce += float(sums["ce"])
            tokens += float(sums["tokens"])
    return ce / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=400, help="training examples")
    parser.add_argument("--eval-examples", type=int, default=100, help="held-out examples")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="expertkit-bench-"))
    try:
        conversations = spider_conversations(args.examples + args.eval_examples)
        expert = write_expert(work, conversations, args.eval_examples)
        console.print(f"expertkit: LoRA r=8 on all linear layers, {args.examples} Spider examples, 512 tokens")
        job, ours = train_expertkit(expert)
        steps = job.total_steps
        console.print(f"TRL SFTTrainer (defaults + packing=True): {steps} steps")
        trl_model, theirs = train_trl(split_conversations(job), steps, work / "trl")
        ours_loss = eval_loss(job.trainable.objective.model, job)
        trl_loss = eval_loss(trl_model, job)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_tps, trl_tps = ours["tokens"] / ours["seconds"], theirs["tokens"] / theirs["seconds"]
    table = Table("trainer", "tokens", "seconds", "tokens/s", "eval loss")
    table.add_row(
        "TRL SFTTrainer", f"{theirs['tokens']:,.0f}", f"{theirs['seconds']:.1f}", f"{trl_tps:.1f}", f"{trl_loss:.4f}"
    )
    table.add_row(
        "expertkit", f"{ours['tokens']:,.0f}", f"{ours['seconds']:.1f}", f"{ours_tps:.1f}", f"{ours_loss:.4f}"
    )
    console.print(table)
    result = {
        "ratio": round(ours_tps / trl_tps, 3),
        "expertkit_tokens_per_s": round(ours_tps, 1),
        "trl_tokens_per_s": round(trl_tps, 1),
        "expertkit_eval_loss": round(ours_loss, 4),
        "trl_eval_loss": round(trl_loss, 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
