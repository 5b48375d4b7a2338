"""Neo4j text2cypher (CSV with a schemas CSV): normalised Cypher match, bucket = database."""

from __future__ import annotations

import csv
from pathlib import Path

from expertkit.eval.sets.base import EvalItem
from expertkit.eval.tasks import cypher_messages, text2cypher_held_out


def load_text2cypher(path: Path, answers: Path | None) -> list[EvalItem]:
    """Rows whose checks passed (no syntax error, no timeout); bucket = database, split = "heldout"
    for the databases no expert trains on (:data:`~expertkit.eval.tasks.TEXT2CYPHER_HELDOUT`)."""
    csv.field_size_limit(1 << 30)
    with (answers or path.parent / "text2cypher_schemas.csv").open(encoding="utf-8", newline="") as handle:
        schemas = {row["database"]: row["schema"] for row in csv.DictReader(handle)}
    items = []
    with path.open(encoding="utf-8", newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if row.get("syntax_error") != "False" or row.get("timeout") != "False" or row["database"] not in schemas:
                continue
            messages = cypher_messages(schemas[row["database"]], row["question"])
            split = "heldout" if text2cypher_held_out(row["database"]) else "train"
            item = EvalItem(f"text2cypher-{index}", messages, row["cypher"], row["database"], "cypher", split=split)
            items.append(item)
    return items
