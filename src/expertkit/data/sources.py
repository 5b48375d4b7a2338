"""Read training records from local files, one format per loader in a small registry.

Every loader streams: it yields one :class:`RawRecord` at a time, with where it came from (file
and line for JSONL and CSV, record or row index otherwise), so a bad record can be named exactly
and a file larger than memory is never read whole (JSON arrays excepted: a JSON array has to be
parsed whole; use JSONL for large data). Nothing here touches the network: Hugging Face datasets
are read with ``load_from_disk`` or from a local directory with the hub switched off.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.errors import DataError
from expertkit.registry import Registry


@dataclass(frozen=True)
class RawRecord:
    """One source record, or the reason it could not be read."""

    source: str
    index: int
    unit: str  # "line", "record" or "row": what ``index`` counts (1-based)
    data: dict[str, Any] | None = None
    error: str | None = None

    @property
    def location(self) -> str:
        return f"{self.source}:{self.index}" if self.unit == "line" else f"{self.source} {self.unit} {self.index}"


Loader = Callable[[Path, str], Iterator[RawRecord]]
LOADERS: Registry[Loader] = Registry()
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def infer_format(path: Path) -> str:
    if path.is_dir():
        return "huggingface"
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}",
            f"set `format` to one of {', '.join(sorted(LOADERS))}",
        )
    return fmt


def read_records(path: Path, fmt: str | None, display: str) -> Iterator[RawRecord]:
    """Stream the records of one source file or directory."""
    if not path.exists():
        raise DataError(f"{display}: no such file or directory", "fix the dataset `path` in the manifest")
    return LOADERS[fmt or infer_format(path)](path, display)


def _object_or_error(value: Any, display: str, index: int, unit: str) -> RawRecord:
    if isinstance(value, dict):
        return RawRecord(display, index, unit, data=value)
    return RawRecord(display, index, unit, error=f"expected a JSON object, found {type(value).__name__}")


ENCODING_HINT = (
    "convert the file to UTF-8, e.g. iconv -f cp1252 -t utf-8 FILE > FILE.utf8 "
    '(Excel\'s plain "CSV" is Windows-1252; its "CSV UTF-8" is fine)'
)


def _decode(raw: bytes, display: str, number: int, offset: int) -> str:
    """One line as text, strictly UTF-8 (a byte-order mark on line 1 is dropped): training on
    replacement characters would silently corrupt the data."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{display}:{number}: not valid UTF-8: byte 0x{bad} at column {exc.start + 1} "
            f"(byte offset {offset + exc.start} in the file)",
            ENCODING_HINT,
        ) from exc


def _text_lines(path: Path, display: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, decoded strictly."""
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, _decode(raw, display, number, offset)
            offset += len(raw)


def _check_utf8(path: Path, display: str) -> None:
    for _ in _text_lines(path, display):
        pass


@LOADERS.register("jsonl")
def _jsonl(path: Path, display: str) -> Iterator[RawRecord]:
    for number, text in _text_lines(path, display):
        line = text.rstrip("\r\n")
        if not line.strip():
            continue
        if number == 1 and line.lstrip().startswith("[") and not line.rstrip().endswith("]"):
            raise DataError(
                f"{display}: this looks like a JSON array (the first line opens '['), not JSON Lines",
                'set "format": "json" for this source, or write one JSON object per line',
            )
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRecord(display, number, "line", error=f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            yield RawRecord(display, number, "line", error=TOO_DEEP)
            continue
        yield _object_or_error(value, display, number, "line")


TOO_DEEP = "invalid JSON: nested deeper than the parser allows (about 1,000 levels)"


def _array_elements(text: str) -> Iterator[str]:
    """The source text of each element of a top-level JSON array, found by scanning brackets and
    strings without recursion: the fallback that lets one too-deep record fail alone."""
    depth, start, in_string, escaped = 0, -1, False, False
    for at, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth == 1:
                start = at + 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                if text[start:at].strip():
                    yield text[start:at]
                return
        elif char == "," and depth == 1:
            yield text[start:at]
            start = at + 1


def _deep_array(text: str, display: str) -> Iterator[RawRecord]:
    if not text.lstrip().startswith("["):
        raise DataError(f"{display}: {TOO_DEEP}", "flatten the data, or use JSONL (one record per line)")
    for number, element in enumerate(_array_elements(text), start=1):
        try:
            yield _object_or_error(json.loads(element), display, number, "record")
        except RecursionError:
            yield RawRecord(display, number, "record", error=TOO_DEEP)
        except json.JSONDecodeError as exc:
            yield RawRecord(display, number, "record", error=f"invalid JSON: {exc.msg}")


@LOADERS.register("json")
def _json(path: Path, display: str) -> Iterator[RawRecord]:
    text = "".join(line for _, line in _text_lines(path, display))
    try:
        value = json.loads(text)
    except RecursionError:
        yield from _deep_array(text, display)
        return
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{display}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})", "fix the file or use JSONL"
        ) from exc
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(f"{display}: expected a JSON array of records", "use a list of objects, or JSONL")
    for number, item in enumerate(value, start=1):
        yield _object_or_error(item, display, number, "record")


@LOADERS.register("csv")
def _csv(path: Path, display: str) -> Iterator[RawRecord]:
    _check_utf8(path, display)  # the csv module needs text: check every byte first, then read with a BOM dropped
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        width = len(reader.fieldnames or [])
        start = 2  # line 1 is the header
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over csv.field_size_limit(): this record alone
                yield RawRecord(display, start, "line", error=f"unreadable CSV record: {exc}")
                start += 1  # the reader skipped the bad line without counting it
                continue
            if None in row or any(value is None for value in row.values()):
                error = f"expected {width} columns, found a different number"
                yield RawRecord(display, start, "line", error=error)
            else:
                yield RawRecord(display, start, "line", data=dict(row))
            start = reader.line_num + 1


@LOADERS.register("parquet")
def _parquet(path: Path, display: str) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield RawRecord(display, number, "row", data=row)


@LOADERS.register("huggingface")
def _huggingface(path: Path, display: str) -> Iterator[RawRecord]:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets

    try:
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            dataset = datasets.load_from_disk(str(path))
        else:
            dataset = datasets.load_dataset(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(f"{display}: cannot read the local dataset: {exc}", "save it with save_to_disk") from exc
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise DataError(f"{display}: dataset has splits {list(dataset)} but no 'train'", "save the train split")
        dataset = dataset["train"]
    for number, row in enumerate(dataset, start=1):
        yield RawRecord(display, number, "row", data=dict(row))
