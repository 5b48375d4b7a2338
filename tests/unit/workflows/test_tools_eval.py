"""``eval --via-tools``: BFCL items scored through the served tools API with the same checker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.eval.job import EvalRequest
from expertkit.workflows.tools_eval import eval_via_tools, openai_tools

_register()

UNIT = {"type": "string", "enum": ["celsius", "fahrenheit"]}
FUNCTION = {
    "name": "weather.get",
    "description": "Weather now.",
    "parameters": {"type": "dict", "properties": {"unit": UNIT}, "required": ["unit"]},
}


def write_bfcl(root: Path) -> tuple[Path, Path]:
    (root / "possible_answer").mkdir(parents=True)
    rows = [
        {"id": f"simple_python_{n}", "question": [[{"role": "user", "content": q}]], "function": [FUNCTION]}
        for n, q in enumerate(["Weather in celsius?", "Weather in fahrenheit?"])
    ]
    truths = [
        {"id": "simple_python_0", "ground_truth": [{"weather.get": {"unit": ["celsius"]}}]},
        {"id": "simple_python_1", "ground_truth": [{"weather.get": {"unit": ["fahrenheit"]}}]},
    ]
    (root / "simple.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "possible_answer" / "simple.json").write_text("\n".join(json.dumps(t) for t in truths) + "\n")
    irrelevant = {"id": "irrelevance_0", "question": [[{"role": "user", "content": "Sing."}]], "function": [FUNCTION]}
    (root / "irrelevance.json").write_text(json.dumps(irrelevant) + "\n")
    return root / "simple.json", root / "irrelevance.json"


@pytest.fixture
def tools_expert(trained_source: Path, tmp_path: Path) -> Path:
    copy = Path(shutil.copytree(trained_source, tmp_path / "expert-tiny"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["training"]["decoding"] = {"tools": {"schema_style": "bfcl", "call_format": "object"}, "max_tokens": 40}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_bfcl_types_become_json_schema_for_the_api() -> None:
    (tool,) = openai_tools([FUNCTION])
    assert tool["function"]["parameters"] == {"type": "object", "properties": {"unit": UNIT}, "required": ["unit"]}


def test_required_calls_are_scored_by_the_checker_and_irrelevance_by_not_calling(tools_expert, tmp_path) -> None:
    simple, irrelevance = write_bfcl(tmp_path / "bfcl")
    (result,) = eval_via_tools(EvalRequest(str(tools_expert), simple, "bfcl", dtype="float32"), "required")
    assert [i.called and i.parsed for i in result.items] == [True, True]  # the grammar forces a declared call
    units = {i.reason for i in result.items}
    assert units <= {"correct", "argument 'unit' = 'celsius' is not among ['fahrenheit']"} | {
        "argument 'unit' = 'fahrenheit' is not among ['celsius']"
    }
    body = result.to_json()
    assert body["n"] == 2 and body["calls_parsed_and_declared"] == 1.0 and body["tool_choice"] == "required"
    assert body["call_accuracy"] == sum(i.correct for i in result.items) / 2
    (called,) = eval_via_tools(
        EvalRequest(str(tools_expert), irrelevance, "bfcl-irrelevance", dtype="float32"), "required"
    )
    assert called.items[0].called and not called.items[0].correct  # required forces a call: wrong here


def test_the_cli_prints_one_json_object_per_set_and_refuses_other_choices(tools_expert, tmp_path) -> None:
    simple, _ = write_bfcl(tmp_path / "bfcl")
    args = ["eval", "--expert", str(tools_expert), "--set", str(simple), "--format", "bfcl", "--dtype", "float32"]
    result = CliRunner().invoke(app, [*args, "--via-tools", "auto", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["via"] == "tools" and body["n"] == 2 and body["tool_choice"] == "auto"
    refused = CliRunner().invoke(app, [*args, "--via-tools", "always"])
    assert refused.exit_code != 0 and "hint:" in refused.output
