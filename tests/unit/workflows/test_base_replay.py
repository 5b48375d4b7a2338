"""The base_replay generator: the expert's base model answers general prompts greedily; answers it
ended are kept as conversations, cut ones are counted; the shipped prompts never overlap the
forgetting metric's."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.eval.forgetting import load_prompts
from expertkit.workflows.base_replay import SHIPPED_PROMPTS
from expertkit.workflows.distill import read_prompts

_register()


def _generate(tmp_path: Path, expert: Path, **config: object) -> tuple[int, str, list[dict], dict]:
    path = tmp_path / "replay.json"
    path.write_text(json.dumps({"generator": "base_replay", "expert": str(expert), **config}))
    out = tmp_path / "general.jsonl"
    result = CliRunner().invoke(app, ["data", "generate", "--config", str(path), "--out", str(out), "--json"])
    if result.exit_code != 0:
        return result.exit_code, result.output, [], {}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return 0, result.output, records, json.loads(out.with_name("general.lineage.json").read_text())


def test_answers_cut_by_max_tokens_are_counted_not_kept(trained_source: Path, tmp_path: Path) -> None:
    """The tiny random model never ends an answer: every one is cut, none is written (a trained turn
    ends with end-of-turn, so a cut answer would teach stopping mid-sentence). The answers the
    embedded model ends are kept: tests/integration/test_embedded_data.py."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about the number {n}."}) + "\n" for n in range(5)))
    code, output, records, lineage = _generate(tmp_path, trained_source, prompts=str(prompts), max_tokens=12, count=3)
    assert code == 0, output
    assert records == []
    assert lineage["counts"] == {"tried": 5, "kept": 0, "rejected": {"cut by max_tokens": 5}}
    assert lineage["generator"] == "base_replay" and lineage["parameters"]["max_tokens"] == 12


def test_shipped_replay_prompts_are_disjoint_from_the_forgetting_prompts() -> None:
    def normal(text: str) -> str:
        return " ".join(text.lower().split())

    replay = {normal(m[-1].content) for m in read_prompts(SHIPPED_PROMPTS)}
    forgetting = {normal(prompt) for _, _, prompt in load_prompts()}
    assert len(replay) >= 120
    assert not replay & forgetting


def test_a_bad_max_tokens_is_an_error_naming_it(trained_source: Path, tmp_path: Path) -> None:
    code, output, _, _ = _generate(tmp_path, trained_source, max_tokens=0)
    assert code != 0 and "$.max_tokens" in output and "Traceback" not in output
