"""Small helpers to mutate manifest dicts by a dotted path such as ``base_models[0].adapters[0].r``."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

VALID_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "manifests" / "valid"
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
DELETE = object()


def load_valid(name: str = "v2_full.json") -> dict[str, Any]:
    return json.loads((VALID_DIR / name).read_text(encoding="utf-8"))


def _parts(path: str) -> list[str | int]:
    return [int(index) if index else key for key, index in _PART.findall(path)]


def mutate(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``path`` set to ``value`` (or removed when value is DELETE)."""
    out = copy.deepcopy(data)
    *parents, last = _parts(path)
    node: Any = out
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


def write_manifest(directory: Path, data: Any, name: str = "manifest.json") -> Path:
    """Write ``data`` beside copies of the files valid fixtures reference."""
    for support in ("train.jsonl", "grammar.gbnf", "README.md"):
        (directory / support).write_bytes((VALID_DIR / support).read_bytes())
    path = directory / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
