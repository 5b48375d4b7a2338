"""Packing efficiency on Spider (schema + question → SQL, embedded SmolLM2 tokenizer), beside TRL.

Runs the SQL expert's own sources, hook and field mapping (examples/experts/expert-sql), renders
every example with its loss mask, then packs the examples that fit into rows of 512 and 1024
tokens with expertkit's best-fit-decreasing packer, and the same 1024-token set with TRL's
``pack_dataset(strategy="bfd")`` in the same run. Efficiency = real tokens / (rows × row length).

    .venv/bin/python benchmarks/packing.py

The last line is one JSON object: efficiency_512, efficiency_1024, trl_efficiency_1024, examples.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from expertkit.data.collect import collect
from expertkit.data.conversation import Conversation
from expertkit.data.packing import best_fit_decreasing
from expertkit.data.prepare import data_job
from expertkit.data.render import ConversationRenderer
from expertkit.manifest.load import load_manifest
from expertkit.models.load import load_tokenizer
from expertkit.models.pull import pull_model

SQL_EXPERT = Path(__file__).resolve().parent.parent / "examples" / "experts" / "expert-sql"
LENGTHS = (512, 1024)


def rendered_ids() -> list[list[int]]:
    tokenizer = load_tokenizer(pull_model("SmolLM2-135M-Instruct"))
    job = data_job(load_manifest(SQL_EXPERT), tokenizer)
    renderer = ConversationRenderer(tokenizer)
    with tempfile.TemporaryDirectory() as work:
        output = Path(work) / "conversations.jsonl"
        collect(job.plans, job.preprocessing, job.hook, job.root, output)
        lines = output.read_text(encoding="utf-8").splitlines()
    conversations = [Conversation.from_json(json.loads(json.loads(line)["conversation"])) for line in lines]
    return [renderer.render(conversation).input_ids for conversation in conversations]


def expertkit_efficiency(lengths: list[int], capacity: int) -> tuple[float, int, float]:
    start = time.perf_counter()
    rows = best_fit_decreasing(lengths, capacity)
    seconds = time.perf_counter() - start
    return sum(lengths) / (len(rows) * capacity), len(rows), seconds


def trl_efficiency(ids: list[list[int]], capacity: int) -> tuple[float, int, float]:
    import datasets
    from trl import pack_dataset

    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_dict({"input_ids": ids})
    start = time.perf_counter()
    packed = pack_dataset(dataset, capacity, strategy="bfd")
    seconds = time.perf_counter() - start
    real = sum(len(row) for row in packed["input_ids"])
    return real / (len(packed) * capacity), len(packed), seconds


def main() -> None:
    ids = rendered_ids()
    table = Table("packer", "max_seq_length", "examples", "rows", "efficiency", "seconds")
    result: dict[str, float | int] = {}
    for capacity in LENGTHS:
        fitting = [x for x in ids if len(x) <= capacity]
        efficiency, rows, seconds = expertkit_efficiency([len(x) for x in fitting], capacity)
        result[f"efficiency_{capacity}"] = round(efficiency, 4)
        cells = (str(capacity), str(len(fitting)), str(rows), f"{efficiency:.2%}", f"{seconds:.3f}")
        table.add_row("expertkit BFD", *cells)
    fitting = [x for x in ids if len(x) <= 1024]
    efficiency, rows, seconds = trl_efficiency(fitting, 1024)
    table.add_row("TRL pack_dataset bfd", "1024", str(len(fitting)), str(rows), f"{efficiency:.2%}", f"{seconds:.3f}")
    result["trl_efficiency_1024"] = round(efficiency, 4)
    result["examples"] = len(fitting)
    Console(stderr=True).print(table)
    print(json.dumps({k: result[k] for k in ("efficiency_512", "efficiency_1024", "trl_efficiency_1024", "examples")}))


if __name__ == "__main__":
    main()
