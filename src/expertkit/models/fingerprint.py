"""Fingerprints of base models: what an expert was trained on, checkable later.

A fingerprint holds the content hash of the weights, the hash of the chat template, vocabulary
size, architecture, and the leaf names of the model's modules (what adapters can target). Hashing
~540 MB of weights takes seconds, so fingerprints are cached in
``$EXPERTKIT_HOME/fingerprints/`` keyed by the directory, invalidated when any file's size or
mtime changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from expertkit.errors import ModelLoadError
from expertkit.fsutil import write_text_atomic
from expertkit.home import expertkit_home

FINGERPRINT_VERSION = 1
_CHUNK = 1 << 22


@dataclass(frozen=True)
class Fingerprint:
    weights_sha256: str
    chat_template_sha256: str | None
    vocab_size: int
    architecture: str
    model_type: str
    num_parameters: int
    linear_modules: list[str] = field(default_factory=list)
    module_names: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"no *.safetensors weights in {model_dir}", "expertkit loads safetensors only (no pickles)"
        )
    return files


def weights_sha256(model_dir: Path) -> str:
    """sha256 over (file name, file sha256) of every safetensors file, in name order."""
    digest = hashlib.sha256()
    for path in weight_files(model_dir):
        digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def read_chat_template(model_dir: Path) -> str | None:
    """The chat template text saved with a tokenizer (``chat_template.jinja`` or tokenizer_config)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config_path = model_dir / "tokenizer_config.json"
    if not config_path.is_file():
        return None
    template = json.loads(config_path.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):  # named templates: use the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def text_sha256(text: str | None) -> str | None:
    return hashlib.sha256(text.encode("utf-8")).hexdigest() if text is not None else None


def _module_names(config: Any) -> tuple[list[str], list[str], int]:
    """(linear leaf names, all leaf names, parameter count) from a model built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear: set[str] = set()
    leaves: set[str] = set()
    for name, module in model.named_modules():
        if not name or any(True for _ in module.children()):
            continue
        leaf = name.rsplit(".", 1)[-1]
        leaves.add(leaf)
        if isinstance(module, torch.nn.Linear):
            linear.add(leaf)
    count = sum(p.numel() for p in model.parameters())
    return sorted(linear), sorted(leaves), int(count)


def compute_fingerprint(model_dir: Path) -> Fingerprint:
    from transformers import AutoConfig

    from expertkit.models.resolve import refuse_remote_code

    refuse_remote_code(model_dir)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    linear, leaves, count = _module_names(config)
    architectures = getattr(config, "architectures", None) or [type(config).__name__]
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return Fingerprint(
        weights_sha256=weights_sha256(model_dir),
        chat_template_sha256=text_sha256(read_chat_template(model_dir)),
        vocab_size=int(text_config.vocab_size),
        architecture=str(architectures[0]),
        model_type=str(config.model_type),
        num_parameters=count,
        linear_modules=linear,
        module_names=leaves,
    )


def _stamp(model_dir: Path) -> list[list[Any]]:
    files = [p for p in sorted(model_dir.iterdir()) if p.is_file()]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _cache_path(model_dir: Path) -> Path:
    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:32]
    return expertkit_home() / "fingerprints" / f"{key}.json"


def cached_fingerprint(model_dir: Path) -> Fingerprint | None:
    """The cached fingerprint if the directory has not changed since; never imports torch."""
    path = _cache_path(model_dir)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry.get("version") == FINGERPRINT_VERSION and entry.get("stamp") == _stamp(model_dir):
            return Fingerprint(**entry["fingerprint"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return None


def fingerprint(model_dir: Path) -> Fingerprint:
    """The model directory's fingerprint, computed once and cached."""
    cached = cached_fingerprint(model_dir)
    if cached is not None:
        return cached
    result = compute_fingerprint(model_dir)
    entry = {"version": FINGERPRINT_VERSION, "path": str(model_dir.resolve()), "stamp": _stamp(model_dir)}
    write_text_atomic(_cache_path(model_dir), json.dumps({**entry, "fingerprint": result.to_json()}, indent=2))
    return result
