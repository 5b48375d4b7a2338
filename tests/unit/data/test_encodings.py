"""Data files as editors and spreadsheets write them: invalid UTF-8 (a Windows-1252 export) is an
error naming the file, line and byte offset, never trained as replacement characters; a UTF-8 BOM is
accepted everywhere; JSON error columns are the real ones; a JSON array declared as JSONL says so."""

from __future__ import annotations

import json

import pytest

from expertkit.data.sources import read_records
from expertkit.errors import DataError

RECORD = {"prompt": "Café au lait?", "completion": "Oui."}


def test_windows_1252_csv_is_an_error_with_location_and_hint(tmp_path) -> None:
    path = tmp_path / "tickets.csv"
    path.write_bytes("prompt,completion\nhello,world\nCafé?,Oui\n".encode("cp1252"))
    with pytest.raises(DataError) as info:
        list(read_records(path, "csv", "tickets.csv"))
    assert info.value.message == "tickets.csv:3: not valid UTF-8: byte 0xe9 at column 4 (byte offset 33 in the file)"
    assert "iconv -f cp1252 -t utf-8" in info.value.hint


def test_invalid_utf8_in_jsonl_is_an_error_not_replacement_characters(tmp_path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(RECORD).encode() + b"\n" + json.dumps(RECORD, ensure_ascii=False).encode("cp1252"))
    with pytest.raises(DataError, match=r"data\.jsonl:2: not valid UTF-8"):
        list(read_records(path, "jsonl", "data.jsonl"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_a_utf8_bom_is_accepted(tmp_path, fmt: str) -> None:
    path = tmp_path / f"data.{fmt}"
    text = {
        "csv": "ticket,answer\nCafé?,Oui\n",
        "jsonl": json.dumps(RECORD, ensure_ascii=False) + "\n",
        "json": json.dumps([RECORD], ensure_ascii=False),
    }[fmt]
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    records = list(read_records(path, fmt, path.name))
    assert [r.error for r in records] == [None]
    first = records[0].data or {}
    assert next(iter(first)) in ("ticket", "prompt")  # the first field keeps its name
    assert "Café?" in first.values() or "Café au lait?" in first.values()


def test_json_error_columns_are_the_real_ones(tmp_path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + '{"prompt": "' + "x" * 290 + '", "completion": [1, 2\n')
    records = list(read_records(path, "jsonl", "data.jsonl"))
    assert records[1].error == "invalid JSON: Expecting ',' delimiter (column 325)"


def test_a_json_array_declared_as_jsonl_says_so(tmp_path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([RECORD, RECORD], indent=2))
    with pytest.raises(DataError, match="looks like a JSON array") as info:
        list(read_records(path, "jsonl", "alpaca.json"))
    assert '"format": "json"' in info.value.hint
