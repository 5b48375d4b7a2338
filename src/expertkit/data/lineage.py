"""Content hashes for the prepared-data cache, and the ``.meta.json`` lineage sidecar.

The cache key covers everything that changes the prepared tokens: every source file's bytes, the
dataset section of the manifest, the training settings that shape rows (``max_seq_length``,
``packing``, ``loss_weighting``), the hook's source, the tokenizer (vocabulary, added tokens and
chat template) and :data:`PIPELINE_VERSION`. Same key, same data: a second ``train`` reuses it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from expertkit.home import expertkit_home

PIPELINE_VERSION = 1
META_FILE = "dataset.meta.json"


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """Identity of a tokenizer as far as rendering goes: vocabulary, added tokens, chat template."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": sorted(str(t) for t in tokenizer.all_special_tokens),
        "template": tokenizer.chat_template or "",
        "class": type(tokenizer).__name__,
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def cache_key(inputs: dict[str, Any]) -> str:
    payload = json.dumps({"pipeline": PIPELINE_VERSION, **inputs}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def data_cache_dir() -> Path:
    return expertkit_home() / "cache" / "data"


def read_meta(directory: Path) -> dict[str, Any] | None:
    path = directory / META_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
