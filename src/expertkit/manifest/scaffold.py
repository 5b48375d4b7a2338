"""``expert-cli init``: scaffold an expert directory that validates clean.

Writes manifest.json (v2.0), README.md, LICENSE, a small data/train.jsonl of correct sample
conversations (enough for every suggested command to run), and grammar.gbnf where the task has
one. Everything is written to a temp directory and renamed into place, so a failure leaves nothing
behind.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path
from typing import Any

from expertkit.errors import ScaffoldError
from expertkit.fsutil import atomic_directory
from expertkit.grammars import grammar_text
from expertkit.layout import MANIFEST_FILE
from expertkit.manifest.model import NAME_PATTERN
from expertkit.manifest.presets import TASK_PRESETS, TaskPreset
from expertkit.manifest.samples import task_samples

DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"


def build_manifest(name: str, preset: TaskPreset, base_model: str) -> dict[str, Any]:
    """The v2.0 manifest a new expert starts with."""
    return {
        "schema_version": "2.0",
        "name": name,
        "version": "0.1.0",
        "description": preset.description,
        "license": "Apache-2.0",
        "readme": "README.md",
        "license_file": "LICENSE",
        "base_models": [{"name": base_model, "prompt_template": "chatml", "adapters": [preset.adapter]}],
        "soft_prompts": preset.soft_prompts,
        "capabilities": [name.removeprefix("expert-")],
        "routing": {"keywords": preset.keywords, "examples": [preset.example[0]], "priority": 0},
        "training": {
            "config": {
                # A first dataset is a few hundred short examples: 3 epochs of 8 examples per update
                # (about 50 updates for 150 examples). Packing would fold such an epoch into a handful of
                # 1,024-token rows, i.e. 1 or 2 updates: turn it on for large data.
                "epochs": 3,
                "learning_rate": preset.learning_rate,
                # 2 rows of at most 1,024 tokens: a few GiB on a CPU for a 135M model (8 rows needed ~21 GiB).
                "batch_size": 2,
                "gradient_accumulation_steps": 4,
                "max_seq_length": 1024,
                "packing": False,
                "scheduler": "cosine",
                "warmup_ratio": 0.03,
                "weight_decay": 0.0,
                "optimizer": {"type": "adamw"},
                "bf16": "auto",
                "seed": 42,
            },
            "dataset": {
                "path": "data/train.jsonl",
                "format": "jsonl",
                "field_mapping": {"messages": "messages"},
                "split": {"eval_size": 0.05, "seed": 0},
                "on_error": "fail",
            },
            "decoding": preset.decoding,
        },
    }


def _readme(name: str, task: str, preset: TaskPreset) -> str:
    return (
        f"# {name}\n\n{preset.description}\n\n"
        f"Scaffolded by `expert-cli init {name} --task {task}`.\n\n"
        "## Files\n\n"
        "- `manifest.json`: adapters, training settings, decoding contract and routing.\n"
        '- `data/train.jsonl`: one conversation per line (`{"messages": [{"role", "content"}, ...]}`);'
        " replace the samples with your own data (or point `training.dataset.path` at it).\n"
        + (
            "- `grammar.gbnf`: the grammar `grammar_type` constrains every generated token by, in llama.cpp's GBNF for"
            " use outside expertkit (point `grammar_file` at your own grammar to replace it).\n"
            if preset.grammar
            else ""
        )
        + "\n## Check\n\n```\nexpert-cli validate --expert .\n```\n"
    )


def _sample_records(task: str) -> str:
    lines = []
    for question, answer in task_samples(task):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def next_steps(directory: Path) -> list[str]:
    """The commands a new expert is ready for, in order (a test runs them on the scaffold)."""
    path = as_path(directory)
    return [
        f"expert-cli validate --expert {path}",
        f"expert-cli data inspect --expert {path}",
        f"expert-cli train --expert {path}",
        f'expert-cli chat --experts {path} -p "{{a question}}"',
    ]


def as_path(directory: Path) -> str:
    """``directory`` as a path a command reads as a directory: a bare ``my-expert`` names an installed
    expert, ``./my-expert`` the directory."""
    text = str(directory)
    return text if directory.is_absolute() or "/" in text or text.startswith(".") else f"./{text}"


DATA_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _use_data(manifest: dict[str, Any], data: Path, target: Path) -> None:
    """Copy the user's data file into ``data/`` and point the manifest at it, its shape detected
    (OpenAI-style messages, ShareGPT, Alpaca, prompt/completion): no field_mapping to write."""
    fmt = DATA_FORMATS.get(data.suffix.lower())
    if fmt is None:
        raise ScaffoldError(
            f"{data}: cannot tell the format from the suffix {data.suffix!r}",
            f"use one of {', '.join(DATA_FORMATS)} (JSONL, a JSON array, CSV or Parquet)",
            exit_code=2,
        )
    if not data.is_file():
        raise ScaffoldError(f"{data}: no such file", "give the path of your data file", exit_code=2)
    shutil.copyfile(data, target / "data" / data.name)
    dataset = manifest["training"]["dataset"]
    dataset.update({"path": f"data/{data.name}", "format": fmt})
    dataset.pop("field_mapping", None)


def scaffold_expert(
    directory: Path,
    task: str,
    *,
    base_model: str = DEFAULT_BASE_MODEL,
    force: bool = False,
    data: Path | None = None,
) -> Path:
    """Create the expert directory; its name (the last path part) becomes the expert's name.

    Args:
        data: the user's own data file, copied into ``data/`` and used instead of the samples.

    Raises:
        ScaffoldError: unknown task, invalid name, the directory exists without ``force``, or an
            unreadable data file.
    """
    preset = TASK_PRESETS.get(task)
    if preset is None:
        raise ScaffoldError(f"unknown task '{task}'", f"choose one of: {', '.join(TASK_PRESETS)}", exit_code=2)
    name = directory.name
    if not re.match(NAME_PATTERN, name):
        raise ScaffoldError(
            f"'{name}' is not a valid expert name",
            "use lower case letters, digits, '.', '_' and '-'",
            exit_code=2,
        )
    if directory.exists() and not force:
        raise ScaffoldError(f"{directory} already exists", "choose another name or pass --force to overwrite it")
    with atomic_directory(directory, replace=True) as tmp:
        manifest = build_manifest(name, preset, base_model)
        (tmp / "data").mkdir()
        if data is not None:
            _use_data(manifest, data, tmp)
        else:
            (tmp / "data" / "train.jsonl").write_text(_sample_records(task), encoding="utf-8")
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(name, task, preset), encoding="utf-8")
        year = dt.date.today().year
        (tmp / "LICENSE").write_text(
            f"Copyright {year} the authors of {name}.\n\nLicensed under the Apache License, Version 2.0:"
            " https://www.apache.org/licenses/LICENSE-2.0\n",
            encoding="utf-8",
        )
        if preset.grammar:
            (tmp / "grammar.gbnf").write_text(grammar_text(preset.grammar), encoding="utf-8")
    return directory
