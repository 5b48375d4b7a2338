"""CLI conventions a new user relies on: --version, -h, completion, help text on every option and no
placeholder types, one name for the expert option, formats listed, and clean exits for missing paths."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.eval.sets import SET_LOADERS

_register()
runner = CliRunner()


def commands() -> list[tuple[str, click.Command]]:
    root = typer.main.get_command(app)
    found: list[tuple[str, click.Command]] = []

    def walk(name: str, command: click.Command) -> None:
        found.append((name, command))
        for sub_name, sub in getattr(command, "commands", {}).items():
            walk(f"{name} {sub_name}".strip(), sub)

    walk("", root)
    return found


def test_version_short_help_and_completion() -> None:
    assert runner.invoke(app, ["--version"]).output.startswith("expert-cli ")
    short = runner.invoke(app, ["-h"])
    assert short.exit_code == 0 and "--install-completion" in short.output
    assert runner.invoke(app, ["train", "-h"]).exit_code == 0


@pytest.mark.parametrize(("name", "command"), commands(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_option_has_help_and_no_placeholder_types(name: str, command: click.Command) -> None:
    missing = [p.name for p in command.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert missing == [], f"expert-cli {name}: options without help: {missing}"
    shown = runner.invoke(app, [*name.split(), "--help"], terminal_width=200).output
    assert "<bool>" not in shown


@pytest.mark.parametrize("command", [["train"], ["estimate"], ["package"], ["data", "prepare"], ["data", "inspect"]])
def test_one_name_for_the_expert_option(command: list[str]) -> None:
    shown = runner.invoke(app, [*command, "--help"], terminal_width=200).output
    assert "--expert" in shown and "--manifest" in shown


def test_eval_lists_every_format() -> None:
    shown = " ".join(runner.invoke(app, ["eval", "--help"], terminal_width=200).output.split())
    for name in SET_LOADERS:
        assert name in shown


def test_a_missing_path_is_a_usage_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = runner.invoke(app, ["validate", str(tmp_path / "nothere")])
    assert missing.exit_code == 2 and f"no manifest at {tmp_path / 'nothere'}" in missing.stderr
    monkeypatch.chdir(tmp_path)
    inspect = runner.invoke(app, ["data", "inspect"])
    assert inspect.exit_code == 2
    assert f"no manifest at {tmp_path.resolve() / 'manifest.json'}" in " ".join(inspect.stderr.split())
    assert "expert-cli validate" not in inspect.stderr and "expert-cli init" in inspect.stderr


@pytest.mark.parametrize(
    "error", [MemoryError(), __import__("torch").OutOfMemoryError("CUDA out of memory. Tried 2 GiB")]
)
def test_out_of_memory_is_an_error_with_a_hint_and_exit_75(error: BaseException) -> None:
    """Running out of memory is worth retrying (a job queue does): exit 75, EX_TEMPFAIL, never a traceback."""
    from expertkit.cli.console import reports_errors

    def command() -> None:
        raise error

    oom = typer.Typer()
    oom.command()(reports_errors(command))
    result = CliRunner().invoke(oom, [])
    assert result.exit_code == 75 and "error: out of memory" in result.stderr and "hint: lower" in result.stderr
    assert "Traceback" not in result.output


def test_other_runtime_errors_are_not_called_out_of_memory() -> None:
    from expertkit.cli.console import reports_errors

    @reports_errors
    def command() -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        command()
