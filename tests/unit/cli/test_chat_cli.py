"""``expert-cli chat``: one-shot JSON, stdin, errors, and an interactive session in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pexpect
import pytest
from typer.testing import CliRunner

from expertkit.cli.app import _register, app

_register()


def with_decoding(expert_dir: Path, **decoding) -> Path:
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["training"]["decoding"] = decoding
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    return expert_dir


def invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin, catch_exceptions=False)


def test_one_shot_json_with_cli_overrides(expert_dir: Path) -> None:
    expert = with_decoding(expert_dir, temperature=0.7, max_tokens=6, stop_sequences=["zzz"])
    args = ("chat", "--experts", str(expert), "-p", "What is 2 plus 2?", "--json", "--seed", "3")
    args += ("--max-tokens", "4", "--dtype", "float32")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(body) >= {"text", "expert", "finish_reason", "valid", "validation_error", "usage", "decoding"}
    assert body["expert"] == "expert-tiny" and body["usage"]["completion_tokens"] <= 4
    assert body["decoding"]["max_tokens"] == {"value": 4, "source": "cli"}
    assert body["decoding"]["temperature"] == {"value": 0.7, "source": "manifest"}
    assert body["decoding"]["top_p"] == {"value": 1.0, "source": "default"}
    again = invoke(*args)
    assert json.loads(again.stdout.strip().splitlines()[-1])["text"] == body["text"]  # seeded: reproducible


def test_prompt_from_stdin_and_verbose_sources(expert_dir: Path) -> None:
    result = invoke(
        "chat", "-e", str(expert_dir), "--max-tokens", "3", "--verbose", "--dtype", "float32", stdin="hello\n"
    )
    assert result.exit_code == 0, result.output
    assert "decoding" in result.stderr and "cli" in result.stderr and "default" in result.stderr


def test_chat_errors_are_clean(tmp_path: Path, expert_dir: Path) -> None:
    result = invoke("chat", "-e", "no-such-expert", "-p", "hi")
    assert result.exit_code == 1 and "no installed expert 'no-such-expert'" in result.stderr
    assert "Traceback" not in result.output
    assert invoke("chat", "-p", "hi").exit_code == 2
    result = invoke("chat", "-e", str(expert_dir), "-p", "hi", "--dtype", "int3")
    assert result.exit_code == 2 and "--dtype" in result.stderr
    result = invoke("chat", "-e", str(expert_dir), "-p", "hi", "--quantize", "int3")
    assert result.exit_code == 2 and "error: --quantize 'int3'" in result.stderr and "none, int8, int4" in result.stderr
    result = invoke("chat", "-e", str(expert_dir), "-p", "hi", "--decoder", "fast")
    assert result.exit_code == 2 and "error: --decoder 'fast'" in result.stderr and "lean, onnx" in result.stderr


def test_quantize_is_reported_with_its_source(expert_dir: Path) -> None:
    args = ("chat", "-e", str(expert_dir), "-p", "hi", "--json", "--max-tokens", "3", "--dtype", "float32")
    result = invoke(*args, "--quantize", "int8")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["decoding"]["quantize"] == {
        "value": "int8",
        "source": "cli",
    }
    assert "expert-tiny: lean decoder, float32, quantize int8 (cli)" in result.stderr
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    (expert_dir / "manifest.json").write_text(json.dumps(manifest | {"runtime": {"quantize": "int4"}}))
    body = json.loads(invoke(*args).stdout.strip().splitlines()[-1])
    assert body["decoding"]["quantize"] == {"value": "int4", "source": "manifest"}
    assert body["decoding"]["decoder"] == {"value": "lean", "source": "default"}


def test_the_onnx_decoder_answers_under_the_experts_contract(expert_dir: Path) -> None:
    """``--decoder onnx``: the graph is built on first use (said on stderr), then read from the cache."""
    args = ("chat", "-e", str(expert_dir), "-p", "hi", "--json", "--max-tokens", "4", "--temperature", "0")
    lean = invoke(*args, "--dtype", "float32")
    first, again = invoke(*args, "--decoder", "onnx"), invoke(*args, "--decoder", "onnx")
    assert first.exit_code == 0 and again.exit_code == 0, first.output
    assert "building the ONNX Runtime decoder (none" in first.stderr and "building" not in again.stderr
    body = json.loads(again.stdout.strip().splitlines()[-1])
    assert body["decoding"]["decoder"] == {"value": "onnx", "source": "cli"}
    assert "expert-tiny: ONNX Runtime decoder (cli), float32 activations, quantize none" in again.stderr
    assert body["text"] == json.loads(lean.stdout.strip().splitlines()[-1])["text"]


@pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminal test")
@pytest.mark.slow  # subprocesses (make test runs every tier; -m "not slow" for a quick pass)
def test_interactive_session_in_a_pseudo_terminal(expert_dir: Path) -> None:
    expert = with_decoding(expert_dir, temperature=0.0, max_tokens=5)
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    cli = str(Path(sys.executable).with_name("expert-cli"))
    child = pexpect.spawn(
        cli, ["chat", "-e", str(expert), "--dtype", "float32"], env=env, encoding="utf-8", timeout=120
    )
    try:
        child.expect("Ctrl-D quits")
        child.expect_exact("> ")
        child.sendline("What is 3 plus 3?")
        child.expect(r"\[expert-tiny · (length|eos|stop)")
        child.expect_exact("> ")
        child.sendline("/params")
        child.expect("max_tokens")
        child.expect("manifest")
        child.expect_exact("> ")
        child.sendline("/expert base")
        child.expect("answering with base")
        child.expect_exact("> ")
        child.sendline("And 4 plus 4?")
        child.expect(r"\[base · ")
        child.expect_exact("> ")
        child.sendline("/expert nope")
        child.expect("no expert 'nope' loaded")
        child.expect_exact("> ")
        child.sendline("/reset")
        child.expect("history cleared")
        child.expect_exact("> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("soft_prompt", [False, True])
def test_an_untrained_expert_is_named_before_any_model_loads(
    expert_dir: Path, monkeypatch: pytest.MonkeyPatch, soft_prompt: bool
) -> None:
    import shutil

    shutil.rmtree(expert_dir / "weights")
    if soft_prompt:
        manifest = json.loads((expert_dir / "manifest.json").read_text())
        manifest["soft_prompts"] = [{"name": "task", "num_virtual_tokens": 4}]
        (expert_dir / "manifest.json").write_text(json.dumps(manifest))

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded for an expert without weights")

    monkeypatch.setattr("expertkit.runtime.engine.load_model", no_loading)
    result = invoke("chat", "--experts", str(expert_dir), "-p", "hi")
    assert result.exit_code == 1, result.output
    assert "error: expert-tiny has no trained weights for" in result.stderr
    assert f"expert-cli train --expert {expert_dir.resolve()}" in result.stderr.replace("\n", "")
    assert "Traceback" not in result.output


def test_a_bare_name_means_the_store_and_chat_says_what_it_loaded(
    built, expert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from expertkit.package.store import install_package

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(expert_dir, work / "expert-tiny")  # an unsigned folder with the installed expert's name
    monkeypatch.chdir(work)
    missing = invoke("chat", "-e", "expert-tiny", "-p", "hi", "--max-tokens", "2", "--dtype", "float32")
    assert missing.exit_code == 1 and "a bare name means the store" in missing.stderr
    assert "./expert-tiny" in missing.stderr
    install_package(built.path)
    stored = invoke("chat", "-e", "expert-tiny", "-p", "hi", "--max-tokens", "2", "--dtype", "float32")
    assert stored.exit_code == 0, stored.output
    assert "using expert-tiny 0.1.0 from the store" in stored.stderr
    local = invoke("chat", "-e", "./expert-tiny", "-p", "hi", "--max-tokens", "2", "--dtype", "float32")
    assert local.exit_code == 0, local.output
    assert "from the directory" in local.stderr and str(work / "expert-tiny") in local.stderr.replace("\n", "")
