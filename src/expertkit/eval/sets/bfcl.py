"""BFCL (Berkeley Function Calling Leaderboard JSONL with possible_answer/): call accuracy; and its
irrelevance category, where no function fits and the right answer is not to call."""

from __future__ import annotations

import json
from pathlib import Path

from expertkit.errors import DataError
from expertkit.eval.sets.base import EvalItem, read_jsonl
from expertkit.eval.tasks import bfcl_held_out, function_messages


def load_bfcl(path: Path, answers: Path | None) -> list[EvalItem]:
    truth_path = answers or path.parent / "possible_answer" / path.name
    truths = {row["id"]: row["ground_truth"] for row in read_jsonl(truth_path)}
    items = []
    for row in read_jsonl(path):
        if row["id"] not in truths:
            raise DataError(f"{path}: no ground truth for {row['id']!r} in {truth_path}", "pass --answers")
        question = [t for group in row["question"] for t in group if t.get("role") == "user"][-1]["content"]
        truth = truths[row["id"]]
        bucket = row["id"].rsplit("_", 1)[0]
        messages = function_messages(row["function"], question)
        split = "heldout" if bfcl_held_out(row["id"]) else "train"
        gold = json.dumps(truth)
        items.append(EvalItem(row["id"], messages, gold, bucket, "function", None, truth, row["function"], split))
    return items


def load_bfcl_irrelevance(path: Path, answers: Path | None = None) -> list[EvalItem]:
    """BFCL's irrelevance items: the expected calls are none (``truth == []``), so an answer is correct
    only when it calls nothing. The same fixed hold-out as the other categories applies."""
    items = []
    for row in read_jsonl(path):
        question = [t for group in row["question"] for t in group if t.get("role") == "user"][-1]["content"]
        messages = function_messages(row["function"], question)
        split = "heldout" if bfcl_held_out(row["id"]) else "train"
        items.append(EvalItem(row["id"], messages, "[]", "irrelevance", "function", None, [], row["function"], split))
    return items
