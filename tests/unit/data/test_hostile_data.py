"""Hostile data files: a record nested past the parser's depth and a CSV field past the csv
module's limit are per-record errors with their location, and ``on_error: skip`` skips them."""

from __future__ import annotations

import csv
import json

import pytest

from expertkit.data.expert_data import prepare_expert_data
from expertkit.data.sources import read_records
from expertkit.errors import DataError

from .helpers import qa_record, write_expert

DEEP = "[" * 5000 + "]" * 5000


def _records(path, fmt):
    return [(r.index, r.error) for r in read_records(path, fmt, path.name) if r.error]


def test_deep_json_is_one_bad_record_in_jsonl_and_json_arrays(tmp_path) -> None:
    lines = [json.dumps(qa_record(1)), '{"messages": ' + DEEP + "}", json.dumps(qa_record(2))]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    assert [(i, "nested deeper" in e) for i, e in _records(tmp_path / "a.jsonl", "jsonl")] == [(2, True)]
    (tmp_path / "a.json").write_text("[" + ", ".join(lines) + "]")
    assert [(i, "nested deeper" in e) for i, e in _records(tmp_path / "a.json", "json")] == [(2, True)]


def test_a_csv_field_over_the_limit_is_one_bad_record(tmp_path) -> None:
    path = tmp_path / "a.csv"
    huge = "x" * (csv.field_size_limit() + 10)
    path.write_text(f"prompt,completion\nq1,a1\nq2,{huge}\nq3,a3\n")
    records = list(read_records(path, "csv", "a.csv"))
    assert [(r.index, r.error is None) for r in records] == [(2, True), (3, False), (4, True)]
    assert "field larger than field limit" in (records[1].error or "")


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_on_error_applies_to_hostile_records(tmp_path, tiny_llama_dir, policy: str) -> None:
    dataset = {"path": "data.jsonl", "on_error": policy, "checks": {"min_supervised_ratio": 0.05}}
    expert = write_expert(tmp_path / "e", tiny_llama_dir, dataset)
    lines = [json.dumps(qa_record(n)) for n in range(60)]
    lines[7] = '{"messages": ' + DEEP + "}"
    (expert / "data.jsonl").write_text("\n".join(lines) + "\n")
    if policy == "fail":
        with pytest.raises(DataError, match=r"data\.jsonl:8: invalid JSON: nested deeper"):
            prepare_expert_data(expert)
        return
    prepared, _ = prepare_expert_data(expert)
    assert prepared.meta["steps"]["bad_records"]["count"] == 1
