"""Spider (dev/train JSON with tables.json): one item per question, bucket = hardness."""

from __future__ import annotations

from pathlib import Path

from expertkit.errors import DataError
from expertkit.eval.sets.base import EvalItem, read_json, spider_hardness
from expertkit.eval.tasks import spider_create_tables, sql_messages


def load_spider(path: Path, answers: Path | None) -> list[EvalItem]:
    tables = answers or path.parent / "tables.json"
    schemas = {db["db_id"]: spider_create_tables(db) for db in read_json(tables)}
    items = []
    for index, row in enumerate(read_json(path)):
        schema = schemas.get(row["db_id"])
        if schema is None:
            raise DataError(
                f"{path}: row {index} names db_id {row['db_id']!r}, not in {tables}", "pass --answers tables.json"
            )
        messages = sql_messages(schema, " ".join(row["question"].split()))
        bucket = spider_hardness(row["query"])
        items.append(EvalItem(f"spider-{index}", messages, row["query"], bucket, "sql", split="dev"))
    return items
