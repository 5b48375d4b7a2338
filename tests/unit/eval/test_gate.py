"""The regression gate: a deliberately worse expert fails ``eval --gate`` (naming each failing
bucket) and ``package --require-gate`` refuses it; one that passes can be packaged."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.eval.gate import gate_failures
from expertkit.manifest.sections import Evaluation, Threshold

_register()


def test_gate_rules_name_each_failure() -> None:
    evaluation = Evaluation(
        thresholds={
            "exact_match": Threshold(
                min=0.5,
                max_regression=0.05,
                buckets={"hard": Threshold(min=0.2), "easy": Threshold(max_regression=0.0)},
            )
        }
    )
    result = {
        "metric": "exact_match",
        "expert": 0.4,
        "baseline": 0.6,
        "buckets": {"hard": {"expert": 0.1, "baseline": 0.1}, "easy": {"expert": 0.7, "baseline": 0.7}},
    }
    failures = gate_failures(evaluation, result)
    assert failures == [
        "exact_match: 0.4000 is below the minimum 0.5000",
        "exact_match: 0.4000 regresses 0.2000 from the baseline 0.6000 (at most 0.0500 allowed)",
        "exact_match[hard]: 0.1000 is below the minimum 0.2000",
    ]
    assert (
        gate_failures(evaluation, {**result, "expert": 0.6, "buckets": {**result["buckets"], "hard": {"expert": 0.3}}})
        == []
    )
    assert gate_failures(None, result) == []


def worse_expert(expert_dir: Path) -> Path:
    """The expert with its adapter scaled up 50×: it answers worse than the base model."""
    adapter = next((expert_dir / "weights").iterdir()) / "adapter" / "adapter_model.safetensors"
    save_file({k: v * 50 for k, v in load_file(str(adapter)).items()}, str(adapter))
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["evaluation"] = {
        "thresholds": {"exact_match": {"min": 0.5, "max_regression": 0.0, "buckets": {"digits": {"min": 0.5}}}}
    }
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    return expert_dir


def test_a_worse_expert_fails_the_gate_and_cannot_be_packaged(expert_dir: Path, tmp_path: Path) -> None:
    expert = worse_expert(expert_dir)
    rows = [
        {
            "messages": [{"role": "user", "content": f"Say {n}"}, {"role": "assistant", "content": str(n)}],
            "bucket": "digits",
        }
        for n in range(3)
    ]
    path = tmp_path / "digits.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["eval", "--expert", str(expert), "--set", str(path), "--format", "jsonl", "--gate", "--dtype", "float32"],
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert "gate: digits: exact_match: 0.0000 is below the minimum 0.5000" in result.stderr
    assert "gate: digits: exact_match[digits]: 0.0000 is below the minimum 0.5000" in result.stderr
    packaged = runner.invoke(
        app,
        ["package", "--manifest", str(expert), "--output", str(tmp_path / "out"), "--require-gate"],
        catch_exceptions=False,
    )
    assert packaged.exit_code == 1 and "the last evaluation failed its gate" in packaged.stderr
    assert not (tmp_path / "out").exists()
    plain = runner.invoke(
        app, ["package", "--manifest", str(expert), "--output", str(tmp_path / "out")], catch_exceptions=False
    )
    assert plain.exit_code == 0  # without --require-gate the gate is advisory


def test_require_gate_without_any_evaluation(expert_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["package", "--manifest", str(expert_dir), "--output", str(tmp_path), "--require-gate"],
        catch_exceptions=False,
    )
    assert result.exit_code == 1 and "no evaluation results" in result.stderr


def test_evaluations_ship_in_the_package_and_plot(expert_dir: Path, tmp_path: Path) -> None:
    import tarfile

    rows = [
        {"messages": [{"role": "user", "content": "Say 1"}, {"role": "assistant", "content": "1"}], "bucket": "digits"}
    ]
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    chart = tmp_path / "chart.png"
    runner = CliRunner()
    args = [
        "eval",
        "--expert",
        str(expert_dir),
        "--set",
        str(path),
        "--format",
        "jsonl",
        "--dtype",
        "float32",
        "--plot",
        str(chart),
    ]
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    built = runner.invoke(
        app,
        ["package", "--manifest", str(expert_dir), "--output", str(tmp_path / "out"), "--json"],
        catch_exceptions=False,
    )
    package = Path(json.loads(built.stdout)["package"])
    with tarfile.open(package) as tar:
        record = json.loads(tar.extractfile("evaluation/one.json").read())
    assert record["set"] == "one" and "gate" in record
    worse_expert(expert_dir)  # new weights: the evaluation describes the old ones and stays behind
    rebuilt = runner.invoke(
        app,
        ["package", "--manifest", str(expert_dir), "--output", str(tmp_path / "again"), "--json"],
        catch_exceptions=False,
    )
    with tarfile.open(Path(json.loads(rebuilt.stdout)["package"])) as tar:
        assert not [name for name in tar.getnames() if name.startswith("evaluation/")]
    gated = runner.invoke(
        app,
        ["package", "--manifest", str(expert_dir), "--output", str(tmp_path / "gated"), "--require-gate"],
        catch_exceptions=False,
    )
    assert gated.exit_code == 1 and "one.json: evaluated other weights than the adapter now in" in gated.stderr
