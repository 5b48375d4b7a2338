"""Loaders name every record's file and line; field mappings build conversations or say why not."""

from __future__ import annotations

import json

import pytest

from expertkit.data.mapping import RecordError, to_conversation
from expertkit.data.sources import read_records
from expertkit.errors import DataError
from expertkit.manifest.sections import FieldMapping

from .helpers import write_jsonl


def test_jsonl_reports_line_numbers_of_bad_json(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"a": 1}, "{not json", "", "[1, 2]", {"a": 2}])
    records = list(read_records(path, None, "d.jsonl"))
    assert [(r.location, r.error is None) for r in records] == [
        ("d.jsonl:1", True), ("d.jsonl:2", False), ("d.jsonl:4", False), ("d.jsonl:5", True)
    ]  # fmt: skip
    assert records[1].error.startswith("invalid JSON")
    assert records[2].error == "expected a JSON object, found list"


def test_csv_parquet_json_and_saved_hf_dataset(tmp_path):
    import datasets

    rows = [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    (tmp_path / "d.csv").write_text('question,answer\nq1,a1\n"q\n2",a2\nq3\n', encoding="utf-8")
    csv_records = list(read_records(tmp_path / "d.csv", None, "d.csv"))
    assert [r.location for r in csv_records] == ["d.csv:2", "d.csv:3", "d.csv:5"]
    assert csv_records[1].data == {"question": "q\n2", "answer": "a2"}
    assert csv_records[2].error == "expected 2 columns, found a different number"
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    assert [r.data for r in read_records(tmp_path / "d.parquet", None, "p")] == rows
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    assert [r.location for r in read_records(tmp_path / "d.json", None, "d.json")] == [
        "d.json record 1",
        "d.json record 2",
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    assert [r.data for r in read_records(tmp_path / "hf", None, "hf")] == rows


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "d.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="cannot tell the format"):
        list(read_records(tmp_path / "d.txt", None, "d.txt"))
    with pytest.raises(DataError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl", None, "nope.jsonl"))


def test_template_mapping_builds_system_user_assistant():
    mapping = FieldMapping(prompt_template="{schema}\n\nQuestion: {question}", response="query", system="sys")
    conversation = to_conversation({"schema": "CREATE TABLE t (a INT);", "question": "How many?",
                                    "query": "SELECT count(*) FROM t", "sys": "Dialect: sqlite"}, mapping)  # fmt: skip
    assert [m.role for m in conversation.messages] == ["system", "user", "assistant"]
    assert conversation.messages[1].content == "CREATE TABLE t (a INT);\n\nQuestion: How many?"


def test_alpaca_and_sharegpt_shapes():
    alpaca = to_conversation({"instruction": "Add", "input": "1 and 2", "output": "3"}, None)
    assert [(m.role, m.content) for m in alpaca.messages] == [("user", "Add\n\n1 and 2"), ("assistant", "3")]
    sharegpt = to_conversation(
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, None
    )
    assert [m.role for m in sharegpt.messages] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("record", "mapping", "reason"),
    [
        ({"q": "x"}, FieldMapping(prompt_template="{q}", response="a"), "missing field 'a'"),
        ({"q": "x", "a": 3}, FieldMapping(prompt_template="{q}", response="a"), "field 'a' should be str, found int"),
        ({"q": "x", "a": "  "}, FieldMapping(prompt_template="{q}", response="a"), "message 2 (assistant) is empty"),
        (
            {"a": "x"},
            FieldMapping(prompt_template="{q}", response="a"),
            "prompt_template uses {q} but the record has no field 'q'",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, None, "conversation has no assistant turn"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, None, "unknown role 'wizard'"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, None, "starts with an assistant turn"),
        ({"messages": "nope"}, None, "field 'messages' should be list, found str"),
    ],
)
def test_bad_records_say_why(record, mapping, reason):
    with pytest.raises(RecordError, match=None) as info:
        to_conversation(record, mapping)
    assert reason in str(info.value)
