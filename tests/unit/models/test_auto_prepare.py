"""The embedded default model is prepared by the first command that needs it, with a one-line note,
instead of failing with "not prepared"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.models.resolve import ResolvedModel

_register()


def test_data_inspect_prepares_the_embedded_model_once(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[str] = []

    def fake_prepare(resolved: ResolvedModel, report=None) -> ResolvedModel:  # the wheel + GGUF step, stubbed
        prepared.append(resolved.name)
        shutil.copytree(tiny_llama_dir, resolved.path)
        return resolved

    monkeypatch.setattr("expertkit.models.pull.prepare_model", fake_prepare)
    runner = CliRunner()
    assert runner.invoke(app, ["init", str(tmp_path / "expert-first"), "--task", "generic"]).exit_code == 0
    result = runner.invoke(app, ["data", "inspect", "--expert", str(tmp_path / "expert-first"), "-n", "0"])
    assert result.exit_code == 0, result.output
    assert "note: preparing SmolLM2-135M-Instruct once" in result.stderr
    again = runner.invoke(app, ["data", "inspect", "--expert", str(tmp_path / "expert-first"), "-n", "0"])
    assert again.exit_code == 0 and "preparing" not in again.stderr
    assert prepared == ["SmolLM2-135M-Instruct"]
