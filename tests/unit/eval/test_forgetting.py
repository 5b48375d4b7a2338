"""Forgetting against the base model: KL(base ‖ expert) over the base's own answers and the match
rate, per bucket with intervals; zero for an adapter that changes nothing; ``eval --forgetting`` and its
gate; the shipped general prompts."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.eval.forgetting import GENERAL_PROMPTS, forgetting_failures, load_prompts, measure_forgetting
from expertkit.manifest.sections import Forgetting
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions

_register()
PROMPTS = [("p1", "facts", "What is the capital of France?"), ("p2", "math", "What is 7 plus 5?"),
           ("p3", "math", "What is 12 times 3?")]  # fmt: skip


def identity_copy(expert: Path, tmp_path: Path) -> Path:
    """The expert with its LoRA B matrices zeroed: an adapter that changes nothing."""
    copy = Path(shutil.copytree(expert, tmp_path / "identity"))
    adapter = next((copy / "weights").iterdir()) / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(adapter))
    save_file({k: v.zero_() if "lora_B" in k else v for k, v in tensors.items()}, str(adapter))
    return copy


def test_an_adapter_that_changes_nothing_has_no_forgetting_and_a_trained_one_has_some(
    expert_dir: Path, tmp_path: Path
) -> None:
    identity = identity_copy(expert_dir, tmp_path)
    engine = Engine.for_experts([str(identity)], LoadOptions(dtype="float32"))
    same = measure_forgetting(engine, "expert-tiny", PROMPTS, max_tokens=8).summary()
    assert same["kl"] < 1e-5 and same["match"] == 1.0 and same["n"] == 3
    trained = Engine.for_experts([str(expert_dir)], LoadOptions(dtype="float32"))
    report = measure_forgetting(trained, "expert-tiny", PROMPTS, max_tokens=8)
    summary = report.summary()
    assert summary["kl"] > max(100 * same["kl"], 1e-3) and set(summary["buckets"]) == {"facts", "math"}
    assert summary["buckets"]["math"]["n"] == 2 and summary["kl_ci95"][0] <= summary["kl"] <= summary["kl_ci95"][1]
    assert all(item.tokens >= 1 and item.kl >= 0 for item in report.items)


def test_eval_forgetting_writes_reports_and_gates(expert_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "ood.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "bucket": b}) + "\n" for _, b, p in PROMPTS))
    args = [
        "eval",
        "--expert",
        str(expert_dir),
        "--forgetting",
        "--forgetting-prompts",
        str(prompts),
        "--dtype",
        "float32",
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "forgetting against the base model (3 prompts)" in " ".join(result.output.split())
    written = next((expert_dir / "weights").iterdir()) / "eval" / "forgetting.json"
    body = json.loads(written.read_text())
    assert body["summary"]["n"] == 3 and len(body["items"]) == 3 and body["gate"]["passed"] is True
    from expertkit.models.fingerprint import sha256_file

    adapter = written.parent.parent / "adapter" / "adapter_model.safetensors"
    assert body["adapter_sha256"] == sha256_file(adapter)  # so it ships (and gates) with this adapter only
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["evaluation"] = {"forgetting": {"prompts": str(prompts), "max_kl": 1e-9}}
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    gated = CliRunner().invoke(
        app, ["eval", "--expert", str(expert_dir), "--forgetting", "--gate", "--dtype", "float32"]
    )
    assert gated.exit_code == 1 and "forgetting: mean KL" in gated.stderr and "above the maximum" in gated.stderr
    manifest["evaluation"]["sets"] = [{"name": "gone", "path": "missing.jsonl", "format": "jsonl"}]
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    only = CliRunner().invoke(app, ["eval", "--expert", str(expert_dir), "--forgetting-only", "--dtype", "float32"])
    assert only.exit_code == 0, only.output  # the task sets (one of them missing) are not run


def test_the_gate_and_the_shipped_prompts() -> None:
    summary = {"kl": 0.3, "match": 0.5}
    assert forgetting_failures(None, summary) == []
    assert forgetting_failures(Forgetting(max_kl=0.5, min_match=0.4), summary) == []
    failures = forgetting_failures(Forgetting(max_kl=0.1, min_match=0.9), summary)
    assert failures == ["forgetting: mean KL 0.3000 is above the maximum 0.1000",
                        "forgetting: match rate 0.5000 is below the minimum 0.9000"]  # fmt: skip
    shipped = load_prompts()
    assert len(shipped) >= 60 and len({i for i, _, _ in shipped}) == len(shipped)
    assert Counter(b for _, b, _ in shipped).keys() == {"facts", "arithmetic", "code", "instructions", "language"}
    assert GENERAL_PROMPTS.is_file()
    with pytest.raises(Exception, match="no such prompt set"):
        load_prompts(Path("/nonexistent.jsonl"))
