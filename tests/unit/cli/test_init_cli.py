"""``expert-cli init``: every task scaffolds an expert that validates clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.manifest import validate_manifest
from expertkit.manifest.presets import TASK_PRESETS

_register()
runner = CliRunner()


@pytest.mark.parametrize("task", sorted(TASK_PRESETS))
def test_scaffolded_expert_validates_clean(tmp_path: Path, task: str) -> None:
    target = tmp_path / f"expert-{task}"
    result = runner.invoke(app, ["init", str(target), "--task", task])
    assert result.exit_code == 0, result.output
    expected = {"manifest.json", "README.md", "LICENSE", "data"} | (
        {"grammar.gbnf"} if TASK_PRESETS[task].grammar else set()
    )
    assert {p.name for p in target.iterdir()} == expected
    report, manifest = validate_manifest(target)
    assert report.ok and not report.warnings, [p.render() for p in report.problems]
    assert manifest is not None and manifest.name == f"expert-{task}"


def test_seed_recommended_settings(tmp_path: Path) -> None:
    runner.invoke(app, ["init", str(tmp_path / "expert-sql"), "--task", "sql"])
    runner.invoke(app, ["init", str(tmp_path / "expert-json"), "--task", "json"])
    sql = json.loads((tmp_path / "expert-sql" / "manifest.json").read_text())
    adapter = sql["base_models"][0]["adapters"][0]
    assert (adapter["type"], adapter["r"], adapter["alpha"]) == ("dora", 12, 24)
    decoding = sql["training"]["decoding"]
    assert (decoding["temperature"], decoding["top_k"], decoding["stop_sequences"]) == (
        0.1,
        50,
        [";", "\n\n"],
    )
    assert decoding["validation"] == "parser-strict"
    js = json.loads((tmp_path / "expert-json" / "manifest.json").read_text())
    assert js["base_models"][0]["adapters"][0]["target_modules"] == ["k_proj", "v_proj", "down_proj"]
    assert [p["num_virtual_tokens"] for p in js["soft_prompts"]] == [32, 64]


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "expert-x"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["init", str(target), "--task", "generic"])
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert (target / "keep.txt").read_text() == "mine"
    forced = runner.invoke(app, ["init", str(target), "--task", "generic", "--force"])
    assert forced.exit_code == 0
    assert not (target / "keep.txt").exists()


def test_unknown_task_and_bad_name_are_usage_errors(tmp_path: Path) -> None:
    assert runner.invoke(app, ["init", str(tmp_path / "expert-x"), "--task", "poetry"]).exit_code == 2
    assert runner.invoke(app, ["init", str(tmp_path / "Bad Name"), "--task", "sql"]).exit_code == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task", sorted(TASK_PRESETS))
def test_the_scaffold_passes_every_command_it_suggests(
    tmp_path: Path, tiny_llama_dir: Path, task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """init prints its next steps; each of them, run in order as printed from the same directory,
    succeeds on the scaffold (a bare name would mean an installed expert: the steps say ./NAME)."""
    import shlex

    from expertkit.manifest.scaffold import next_steps

    monkeypatch.chdir(tmp_path)
    target = Path(f"expert-{task}")
    result = runner.invoke(app, ["init", str(target), "--task", task, "--base-model", str(tiny_llama_dir)])
    assert result.exit_code == 0, result.output
    steps = next_steps(target)
    assert steps[-1].startswith(f"expert-cli chat --experts ./expert-{task} ")
    assert all(step in result.output.replace("\n  ", "\n") for step in steps)
    for step in steps:
        args = shlex.split(step.replace("{a question}", "hello"))[1:]
        if args[0] in ("chat", "train"):
            args += ["--dtype", "float32"] if args[0] == "chat" else []
        outcome = runner.invoke(app, args)
        assert outcome.exit_code == 0, f"{step}\n{outcome.output}"
        assert "Traceback" not in outcome.output
