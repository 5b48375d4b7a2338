"""Our own JSONL: OpenAI-style messages whose last (assistant) message is the gold answer."""

from __future__ import annotations

from pathlib import Path

from expertkit.errors import DataError
from expertkit.eval.sets.base import EvalItem, read_jsonl


def load_jsonl(path: Path, answers: Path | None) -> list[EvalItem]:
    """Our own format: ``{"messages": [..., {"role": "assistant", "content": gold}], "bucket": ...}``."""
    items = []
    for index, row in enumerate(read_jsonl(path)):
        messages = row.get("messages") or []
        if not messages or messages[-1].get("role") != "assistant":
            raise DataError(f"{path}:{index + 1}: the last message must be the assistant's gold answer", "fix the line")
        task = row.get("task", "text")
        bucket, split = row.get("bucket", "all"), row.get("split", "test")
        items.append(EvalItem(f"jsonl-{index}", messages[:-1], messages[-1]["content"], bucket, task, split=split))
    return items
