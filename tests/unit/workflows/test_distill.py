"""The distill generator over real HTTP: ``expert-cli serve`` on the tiny expert is the teacher; answers
are kept only when the expert's validator accepts them and the SQL returns rows; rejections (cut-off
answers, an unreachable teacher) are counted by reason in the lineage."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from unit.serve.conftest import free_port, wait_healthy

_register()


@pytest.fixture
def teacher(trained_source: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The tiny expert under a grammar that allows only "SELECT <one or two digits>;" and the SQL parser as
    its validator, served."""
    expert = Path(shutil.copytree(trained_source, tmp_path / "teacher"))
    (expert / "grammar.gbnf").write_text('root ::= "SELECT " [0-9] [0-9]? ";"\n')
    manifest = json.loads((expert / "manifest.json").read_text())
    manifest["training"]["decoding"] = {"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "grammar.gbnf",
                                        "validation": "parser", "max_tokens": 16}  # fmt: skip
    (expert / "manifest.json").write_text(json.dumps(manifest))
    port = free_port()
    cli = [sys.executable, "-m", "expertkit", "serve", "-e", str(expert), "--port", str(port), "--dtype", "float32",
           "--router-embedder", "none"]  # fmt: skip
    process = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 120)
        yield f"http://127.0.0.1:{port}/v1", expert
    finally:
        process.terminate()
        process.wait(timeout=60)


def write_config(tmp_path: Path, url: str, expert: Path, **teacher: Any) -> Path:
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"system": "You write SQL.", "prompt": f"What is {n} plus {n}?"}) + "\n" for n in range(4))
    )
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (a INTEGER)")
    config = {
        "generator": "distill",
        "count": 10,
        "expert": str(expert),
        "prompts": "prompts.jsonl",
        "teacher": {"url": url, "model": "expert-tiny", "max_tokens": 16, **teacher},
        "checks": [{"type": "validator"}, {"type": "sql_returns_rows", "sqlite": "db.sqlite"}],
    }
    path = tmp_path / "distill.json"
    path.write_text(json.dumps(config))
    return path


def generate(config: Path, out: Path) -> dict[str, Any]:
    args = ["data", "generate", "--config", str(config), "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_teacher_answers_and_only_valid_executable_answers_are_kept(
    teacher: tuple[str, Path], tmp_path: Path
) -> None:
    url, expert = teacher
    lineage = generate(write_config(tmp_path, url, expert), tmp_path / "kept.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert lineage["generator"] == "distill" and lineage["counts"]["tried"] == 4
    assert lineage["counts"]["kept"] == len(rows) and len(rows) + sum(lineage["counts"]["rejected"].values()) == 4
    assert rows, lineage["counts"]  # the grammar makes every answer "SELECT <digits>;": valid, and it returns a row
    for row in rows:
        assert row["messages"][0] == {"role": "system", "content": "You write SQL."}
        answer = row["messages"][-1]["content"]
        assert answer.startswith("SELECT ") and answer.endswith(";")
    cut = generate(write_config(tmp_path, url, expert, max_tokens=1), tmp_path / "cut.jsonl")
    assert cut["counts"]["kept"] == 0
    assert cut["counts"]["rejected"] == {"validator: generation was cut off by max_tokens": 4}  # details dropped
    assert (tmp_path / "cut.jsonl").read_text() == ""


def test_an_unreachable_teacher_is_counted_not_a_crash(tmp_path: Path, trained_source: Path) -> None:
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}/v1", trained_source, timeout_s=5)
    lineage = generate(config, tmp_path / "none.jsonl")
    assert lineage["counts"] == {"tried": 4, "kept": 0, "rejected": {"teacher: URLError": 4}}
    bad = json.loads(config.read_text())
    bad["teacher"]["url"] = "file:///etc/passwd"
    config.write_text(json.dumps(bad))
    refused = CliRunner().invoke(app, ["data", "generate", "--config", str(config), "--out", str(tmp_path / "x.jsonl")])
    assert refused.exit_code != 0 and "$.teacher.url: an http(s) URL" in " ".join(refused.output.split())
