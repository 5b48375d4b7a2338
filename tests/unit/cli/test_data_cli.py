"""``expert-cli data prepare | inspect``: summary, highlighted examples, exit codes, no traceback."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from unit.data.helpers import qa_record, write_expert, write_jsonl

_register()
runner = CliRunner()
DATASET = {"path": "data.jsonl", "split": {"eval_size": 2}, "checks": {"min_supervised_ratio": 0.05}}


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_prepare_prints_summary_and_writes_sidecar(tmp_path, tiny_llama_dir, expertkit_home):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, DATASET)
    write_jsonl(expert / "data.jsonl", [qa_record(n) for n in range(12)])
    result = invoke("data", "prepare", "--expert", str(expert))
    assert result.exit_code == 0, result.output
    for text in ("sources and mix", "records read", "packing", "supervised_ratio", "pass"):
        assert text in result.output
    sidecars = list((expertkit_home / "cache" / "data").glob("*/dataset.meta.json"))
    assert len(sidecars) == 1
    assert json.loads(sidecars[0].read_text())["steps"]["records_read"] == 12
    again = invoke("data", "prepare", "--expert", str(expert), "--json")
    assert json.loads(again.output)["key"] == sidecars[0].parent.name


def test_prepare_with_bad_lines_exits_1_naming_each(tmp_path, tiny_llama_dir):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, DATASET)
    write_jsonl(expert / "data.jsonl", [qa_record(1), "{oops", qa_record(2), {"x": 1}, qa_record(3)])
    result = invoke("data", "prepare", "--expert", str(expert))
    assert result.exit_code == 1
    assert "data.jsonl:2: invalid JSON" in result.output
    assert "data.jsonl:4: no field_mapping and no known fields" in result.output
    assert "Traceback" not in result.output


def test_inspect_shows_examples_and_fails_on_failed_validator(tmp_path, tiny_llama_dir):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, {**DATASET, "checks": {"min_supervised_ratio": 0.9}})
    write_jsonl(expert / "data.jsonl", [qa_record(n) for n in range(6)])
    result = invoke("data", "inspect", "--expert", str(expert), "-n", "2")
    assert result.exit_code == 1
    assert "data.jsonl:1 ·" in result.output and "data.jsonl:2 ·" in result.output
    assert "data.jsonl:3 ·" not in result.output
    assert "FAIL" in result.output and "example length" in result.output


def test_missing_manifest_is_a_clean_error(tmp_path):
    result = invoke("data", "prepare", "--expert", str(tmp_path))
    assert result.exit_code == 2  # a path that is not there is a usage error
    assert "error: no manifest at" in result.output and "Traceback" not in result.output


def _classification(n: int) -> dict:
    ticket = f"Ticket {n}: my invoice from last month shows a charge I do not recognise, please check it for me."
    return {"messages": [{"role": "user", "content": ticket}, {"role": "assistant", "content": "billing"}]}


def test_short_answers_pass_the_default_band(tmp_path, tiny_llama_dir):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, {"path": "data.jsonl", "split": {"eval_size": 2}})
    write_jsonl(expert / "data.jsonl", [_classification(n) for n in range(12)])
    result = invoke("data", "inspect", "--expert", str(expert), "-n", "0")
    assert result.exit_code == 0, result.output


def test_a_band_failure_is_an_error_naming_the_key_to_change(tmp_path, tiny_llama_dir):
    dataset = {"path": "data.jsonl", "split": {"eval_size": 2}, "checks": {"min_supervised_ratio": 0.25}}
    expert = write_expert(tmp_path / "e", tiny_llama_dir, dataset)
    write_jsonl(expert / "data.jsonl", [_classification(n) for n in range(12)])
    for command in ("inspect", "prepare"):
        result = invoke("data", command, "--expert", str(expert))
        assert result.exit_code == 1
        assert "error: 1 data validator(s) failed" in result.stderr
        assert "outside the band [25%, 95%]" in result.stderr
        assert "hint:" in result.stderr and "training.dataset.checks.min_supervised_ratio" in result.stderr


def test_every_record_failing_names_the_fields_and_the_mapping_not_skip(tmp_path, tiny_llama_dir):
    rows = [
        {"instruction": f"Classify ticket {n}", "input": "my invoice is wrong", "output": "billing"} for n in range(40)
    ]
    for policy in ("fail", "skip"):
        dataset = {"path": "data.jsonl", "field_mapping": {"messages": "messages"}, "on_error": policy}
        expert = write_expert(tmp_path / policy, tiny_llama_dir, dataset)
        write_jsonl(expert / "data.jsonl", rows)
        result = invoke("data", "inspect", "--expert", str(expert), "-n", "0")
        assert result.exit_code == 1
        err = " ".join(result.stderr.split())
        assert "missing field 'messages' (40 records, e.g. data.jsonl:1, data.jsonl:2, data.jsonl:3)" in err
        assert "['input', 'instruction', 'output']" in err and "remove training.dataset.field_mapping" in err
        assert "skip" not in err.split("hint:")[1]


def sparring_record(number: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"What is {number} plus {number}? Say it as SQL please."},
            {"role": "assistant", "content": f"SELECT {number} - {number} AS wrong_{number};", "train": False},
            {"role": "user", "content": "Is this correct?"},
            {"role": "assistant", "content": "It is incorrect."},
        ]
    }


def test_a_turn_marked_train_false_is_shown_never_trained_and_validated(tmp_path, tiny_llama_dir):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, DATASET)
    records = [sparring_record(n) for n in range(6)] + [qa_record(n) for n in range(6)]
    weight_zero = sparring_record(99)
    weight_zero["messages"][1] = {**weight_zero["messages"][1], "train": None, "weight": 0}
    write_jsonl(expert / "data.jsonl", [*records, weight_zero])
    result = invoke("data", "inspect", "--expert", str(expert), "-n", "13")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "12 trained · 1 turn train: false" in out  # shown in the example, never trained
    assert "[[It is incorrect.<|im_end|>]]" in out and "AS wrong_1;" in out
    assert "[[SELECT 1 - 1" not in out and "wrong_99" in out and "[[SELECT 99 - 99" not in out
    assert "span_count" in out and "trained_text" in out and "FAIL" not in out


def test_bad_train_flags_name_the_message(tmp_path, tiny_llama_dir):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, DATASET)
    bad = [
        {"messages": [{"role": "user", "content": "q", "train": True}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": "no"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": False}]},
    ]
    write_jsonl(expert / "data.jsonl", [*bad, *[qa_record(n) for n in range(6)]])
    result = invoke("data", "prepare", "--expert", str(expert))
    out = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in out
    assert "data.jsonl:1: messages[0]: only assistant turns can be trained (user never is)" in out
    assert "data.jsonl:2: messages[1].train should be true or false, found str" in out
    assert "data.jsonl:3: messages[1].weight should be 0 (not trained) or 1, found 0.5" in out
    assert "data.jsonl:4: every assistant turn has train: false: nothing to train on" in out
