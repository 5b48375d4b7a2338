"""Preprocessing hook of the Cypher expert (neo4j text2cypher).

Keeps only rows whose query is known good (no syntax error, no timeout, no false-schema flag) and
adds ``schema``, the graph schema text of the row's ``database`` from ``text2cypher_schemas.csv``.
Filtered rows are counted by the pipeline (records read vs. after hook) rather than dropped
silently. Rows of the held-out databases (:data:`expertkit.eval.tasks.TEXT2CYPHER_HELDOUT`) are
skipped: ``expert-cli eval`` scores the expert on those whole databases, never seen in training.
So are rows of a database without a schema in ``text2cypher_schemas.csv`` (``slack``).

The hook contract: ``preprocess(records, manifest_dir) -> iterable of records``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from expertkit.eval.tasks import CYPHER_SYSTEM, text2cypher_held_out

SCHEMAS = Path("../../../../shared/data/cypher/text2cypher/text2cypher_schemas.csv")
SYSTEM = CYPHER_SYSTEM  # the same prompt expert-cli eval uses


@cache
def _schemas(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return {row["database"]: row["schema"] for row in csv.DictReader(handle)}


def is_clean(record: dict[str, Any]) -> bool:
    return record.get("syntax_error") == "False" and record.get("timeout") == "False" and not record.get("false_schema")


def preprocess(records: Iterable[dict[str, Any]], manifest_dir: Path) -> Iterator[dict[str, Any]]:
    schemas = _schemas((manifest_dir / SCHEMAS).resolve())
    for record in records:
        if "messages" in record:  # a conversation already (sparring, generated data): as it is
            yield record
            continue
        if not is_clean(record) or text2cypher_held_out(record["database"]):
            continue
        schema = schemas.get(record["database"])
        if schema is None:  # `slack` (gpt4turbo rows) has no schema text: such a row cannot be prompted
            continue
        yield {**record, "schema": schema, "system": SYSTEM, "cypher": record["cypher"].strip()}
