"""``expert-cli train`` / ``estimate``: files written, multi-model directories, clear errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.naming import normalise_model_name
from unit.train.helpers import write_tiny_expert

_register()
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_train_writes_adapter_meta_ledger_and_curve(tmp_path: Path, tiny_llama_dir: Path) -> None:
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir], config={"eval_steps": 3})
    result = invoke("train", "--manifest", str(expert / "manifest.json"))
    assert result.exit_code == 0, result.output
    assert "training summary" in result.output and "chosen checkpoint" in result.output
    weights = expert / "weights" / normalise_model_name(str(tiny_llama_dir))
    assert sorted(p.name for p in (weights / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert (weights / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((weights / "training_meta.json").read_text())
    for key in ("manifest", "base_model", "chat_template_sha256", "data", "libraries", "metrics", "selection", "plan"):
        assert meta[key], key
    assert len(meta["base_model"]["weights_sha256"]) == 64 and meta["libraries"]["peft"]
    assert meta["selection"]["checkpoint"].startswith(f"checkpoint-{meta['selection']['best_step']}-")
    ledgers = sorted(weights.glob("checkpoints/checkpoint-*/.ledger.json"))
    assert ledgers
    ledger = json.loads(ledgers[-1].read_text())
    assert {"step", "train_loss", "eval_loss", "tokens_seen", "learning_rate", "wall_time_s", "data_hash"} <= set(
        ledger
    )
    assert ledger["data_hash"] == meta["data"]["lineage_hash"] and ledger["tokens_seen"] > 0


def test_multi_model_manifest_needs_model_and_trains_separate_directories(
    tmp_path: Path, tiny_llama_dir: Path, tiny_qwen3_dir: Path
) -> None:
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir, tiny_qwen3_dir])
    manifest = str(expert / "manifest.json")
    result = invoke("train", "--manifest", manifest)
    assert result.exit_code == 2
    assert "pick one with --model" in result.output and str(tiny_qwen3_dir) in result.output
    assert "Traceback" not in result.output
    for model_dir in (tiny_llama_dir, tiny_qwen3_dir):
        assert invoke("train", "--manifest", manifest, "--model", str(model_dir)).exit_code == 0
    dirs = sorted(p.name for p in (expert / "weights").iterdir())
    assert dirs == sorted(normalise_model_name(str(m)) for m in (tiny_llama_dir, tiny_qwen3_dir))
    metas = [json.loads(p.read_text()) for p in (expert / "weights").glob("*/training_meta.json")]
    assert {m["base_model"]["architecture"] for m in metas} == {"LlamaForCausalLM", "Qwen3ForCausalLM"}


def test_device_bound_options_fail_before_training(tmp_path: Path, tiny_llama_dir: Path) -> None:
    for config, text in [
        ({"optimizer": "paged_adamw_8bit"}, "paged_adamw_8bit (bitsandbytes) needs a CUDA GPU"),
        ({"quantization": "int4"}, "needs a CUDA GPU"),
    ]:
        expert = write_tiny_expert(tmp_path / next(iter(config)), [tiny_llama_dir], config=config)
        result = invoke("train", "--manifest", str(expert))
        assert result.exit_code == 2, result.output
        assert text in result.output and "Traceback" not in result.output
        assert not (expert / "weights").exists()


def test_invalid_manifest_and_resume_without_checkpoint(tmp_path: Path, tiny_llama_dir: Path) -> None:
    bad = write_tiny_expert(tmp_path / "bad", [tiny_llama_dir], adapter={"type": "lora", "target_modules": ["nope"]})
    result = invoke("train", "--manifest", str(bad))
    assert result.exit_code == 1 and "nope" in result.output
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir])
    result = invoke("train", "--manifest", str(expert), "--resume")
    assert result.exit_code == 2 and "no complete checkpoint" in result.output


def test_muon_and_full_finetune_train(tmp_path: Path, tiny_llama_dir: Path) -> None:
    muon = write_tiny_expert(tmp_path / "muon", [tiny_llama_dir], config={"optimizer": "muon"})
    result = invoke("train", "--manifest", str(muon), "--json")
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout)["optimizer"]
    assert described.startswith("Muon on ") and "% of trainable parameters" in described
    full = write_tiny_expert(tmp_path / "full", [tiny_llama_dir], config={"full_finetune": True})
    result = invoke("train", "--manifest", str(full), "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["parameters"]["trainable"] == meta["parameters"]["total"]
    assert (full / "weights" / normalise_model_name(str(tiny_llama_dir)) / "model" / "model.safetensors").is_file()


def test_estimate_compares_with_the_last_run(tmp_path: Path, tiny_llama_dir: Path) -> None:
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir])
    before = json.loads(invoke("estimate", "--manifest", str(expert), "--json").stdout)
    assert before["measured_peak_mib"] is None and before["total_mib"] > 0
    assert before["activations_mib"]["with_checkpointing"] < before["activations_mib"]["without_checkpointing"]
    assert invoke("train", "--manifest", str(expert)).exit_code == 0
    after = invoke("estimate", "--manifest", str(expert))
    assert after.exit_code == 0 and "estimate off by" in after.output
    other = json.loads(invoke("estimate", "--manifest", str(expert), "--batch-size", "7", "--json").stdout)
    assert other["measured_peak_mib"] is None, "a run with other settings is not a comparison"


def test_estimate_table_and_note_agree_and_it_says_when_settings_do_not_fit(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch
) -> None:
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir])
    report = json.loads(invoke("estimate", "--expert", str(expert), "--json").stdout)
    # gradient checkpointing is off in the tiny expert: the table shows the "without" figure of the note
    assert abs(report["components_mib"]["activations"] - report["activations_mib"]["without_checkpointing"]) < 0.2
    assert report["fits"] is True and report["available_mib"] > 0
    monkeypatch.setattr("expertkit.train.estimate_report.device_memory_mib", lambda device="cpu": 64.0)
    tight = invoke("estimate", "--expert", str(expert))
    assert tight.exit_code == 0
    warning = " ".join(tight.stderr.split())
    assert "these settings do not fit" in warning and "training.config.batch_size" in warning
    assert json.loads(invoke("estimate", "--expert", str(expert), "--json").stdout)["fits"] is False


def test_the_scaffold_defaults_fit_a_small_machine(tmp_path: Path) -> None:
    assert invoke("init", str(tmp_path / "expert-s"), "--task", "sql").exit_code == 0
    config = json.loads((tmp_path / "expert-s" / "manifest.json").read_text())["training"]["config"]
    assert config["batch_size"] * config["max_seq_length"] <= 2048
    assert config["batch_size"] * config["gradient_accumulation_steps"] == 8
    assert config["packing"] is False and config["epochs"] == 3  # a small first dataset gets ~50 updates


def test_progress_is_plain_lines_when_piped(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live bar shows only at the end in a pipe or a log: plain lines come instead, about ten per run,
    and during an evaluation that takes a while (here: any), its batches."""
    monkeypatch.setattr("expertkit.train.callbacks.PLAIN_EVAL_QUIET_S", 0.0)
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir])
    result = invoke("train", "--expert", str(expert), "--max-steps", "10", "--eval-steps", "5")
    assert result.exit_code == 0, result.output
    assert "10 steps, eval + checkpoint every 5" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("train step ")]
    assert len(lines) >= 5 and lines[-1].startswith("train step 10/10 · loss ")
    assert all("ETA" in line and "tok/s" in line for line in lines)  # one line each, never wrapped at 80
    evals = [line for line in result.output.splitlines() if line.startswith("eval at step ")]
    assert [line.split(":")[0] for line in evals if "loss" in line] == ["eval at step 5", "eval at step 10"]
    assert any(line.startswith("eval at step 5: batch 1/") and "ETA" in line for line in evals), evals


def test_a_packed_small_dataset_is_named_as_few_updates_per_epoch() -> None:
    """150 short examples packed into 7 rows of 1,024 tokens at 16 rows per update: 1 update per epoch."""
    from types import SimpleNamespace

    from expertkit.train.job import epoch_shape

    sixteen = SimpleNamespace(batch_size=2, gradient_accumulation_steps=8)
    shape = epoch_shape(sixteen, {"train": {"rows": 7, "examples": 143}}, 1)  # type: ignore[arg-type]
    assert (shape.rows, shape.rows_per_update, shape.updates_per_epoch, shape.epochs(60)) == (7, 16, 1, 60.0)
    assert "set training.config.packing to false" in (shape.advice() or "")
    eight = SimpleNamespace(batch_size=2, gradient_accumulation_steps=4)
    unpacked = epoch_shape(eight, {"train": {"rows": 143, "examples": 143}}, 1)  # type: ignore[arg-type]
    assert unpacked.updates_per_epoch == 18 and unpacked.advice() is None


def test_save_steps_is_the_checkpoint_cadence_and_cannot_disagree_with_eval_steps(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    expert = write_tiny_expert(tmp_path / "e", [tiny_llama_dir], config={"max_steps": 4, "eval_steps": None})
    manifest = json.loads((expert / "manifest.json").read_text())
    manifest["training"]["config"] |= {"save_steps": 2}
    (expert / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("train", "--expert", str(expert))
    assert result.exit_code == 0, result.output
    assert "4 steps, eval + checkpoint every 2 " in result.output
    manifest["training"]["config"] |= {"eval_steps": 3}
    (expert / "manifest.json").write_text(json.dumps(manifest))
    refused = invoke("validate", "--expert", str(expert))
    assert refused.exit_code == 1
    assert "save_steps 2 cannot differ from eval_steps 3" in " ".join(refused.output.split())
