"""Resolve a manifest's base-model name to a directory transformers can load offline.

Order: the embedded default (converted once into the cache), a local Hugging Face model
directory, a GGUF file (converted once into the cache), a hub id found in the local Hugging Face
cache. Never a network call to a model hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from expertkit.errors import ModelLoadError, ModelNotFoundError
from expertkit.home import expertkit_home, models_dir
from expertkit.models.registry import EMBEDDED_MODELS, find_embedded
from expertkit.naming import normalise_model_name

ModelKind = Literal["embedded", "local", "gguf", "hub-cache"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
READY_MARKER = "config.json"


@dataclass(frozen=True)
class ResolvedModel:
    """A base model located on disk. ``path`` is an HF-format directory once ``ready``."""

    name: str
    kind: ModelKind
    path: Path
    source: Path | None = None  # the GGUF file for embedded/gguf models, once known

    @property
    def normalised_name(self) -> str:
        return normalise_model_name(self.name)

    @property
    def ready(self) -> bool:
        """True when ``path`` holds a loadable model (embedded and GGUF models need a pull first)."""
        return (self.path / READY_MARKER).is_file() and any(self.path.glob("*.safetensors"))


def ensure_offline() -> None:
    """Forbid hub downloads in this process (set before transformers reads the environment)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    return hf_home / "hub"


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return models_dir() / f"gguf-{normalise_model_name(gguf.name)}-{key}"


def _hub_cache_snapshot(repo_id: str) -> Path | None:
    ensure_offline()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=hf_hub_cache()))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _not_found(name: str, base_dir: Path | None) -> ModelNotFoundError:
    embedded = ", ".join(m.name for m in EMBEDDED_MODELS.values())
    where = [
        f"embedded models ({embedded})",
        f"a local directory {(base_dir or Path.cwd()) / name}",
        "a .gguf file",
        f"the local Hugging Face cache {hf_hub_cache()}",
    ]
    return ModelNotFoundError(
        f"base model '{name}' not found; looked at: " + "; ".join(where),
        "expertkit never downloads models from a hub; bring the model yourself: `hf download ID` on a machine "
        "with access (then copy the Hugging Face cache here, or pass the downloaded directory), a local "
        "directory (config.json + *.safetensors + tokenizer), or a .gguf file",
    )


REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json")


def refuse_remote_code(directory: Path) -> None:
    """Refuse a model directory whose config asks transformers to import its own Python
    (``auto_map``): expertkit loads with ``trust_remote_code=False`` and says why, rather than
    letting transformers prompt on the terminal."""
    for name in REMOTE_CODE_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            text = path.read_bytes()[: 4 << 20].decode("utf-8", errors="replace")
            config = json.loads(text)
        except (OSError, ValueError, RecursionError):
            continue  # transformers reports a broken config itself
        if isinstance(config, dict) and "auto_map" in config:
            raise ModelLoadError(
                f"{path} asks to run the model's own Python code (auto_map {list(config['auto_map'])[:3]})",
                "expertkit never runs code shipped with a model; use a model transformers supports natively",
            )


def _inside_store(path: Path) -> bool:
    home = expertkit_home().resolve()
    resolved = path.resolve()
    return any(root == resolved or root in resolved.parents for root in (home / "experts", home / "cache" / "packages"))


def resolve_model(name: str, base_dir: Path | None = None) -> ResolvedModel:
    """Locate ``name`` without loading or converting anything.

    Args:
        name: embedded model name, directory, GGUF file, or hub id.
        base_dir: directory that relative paths are resolved against (the user's own manifest's;
            ``None`` for a packaged or installed expert, which never resolves a model inside itself).

    Raises:
        ModelNotFoundError: nothing matched; the message lists every place looked at.
    """
    embedded = find_embedded(name)
    if embedded is not None:
        return ResolvedModel(embedded.name, "embedded", models_dir() / normalise_model_name(embedded.name))
    candidate = Path(name).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if (candidate.is_dir() or candidate.is_file()) and _inside_store(candidate):
        raise ModelNotFoundError(
            f"base model {name!r} points inside an installed or unpacked expert ({candidate})",
            "a base model never comes from inside an expert: name the embedded model, a hub id or your own directory",
        )
    if candidate.is_dir():
        if not (candidate / READY_MARKER).is_file():
            raise ModelNotFoundError(f"{candidate} is a directory but has no config.json", "point at a model directory")
        return ResolvedModel(name, "local", candidate.resolve())
    if candidate.suffix.lower() == ".gguf" and candidate.is_file():
        return ResolvedModel(name, "gguf", _gguf_cache_dir(candidate), source=candidate.resolve())
    if HUB_ID.match(name):
        snapshot = _hub_cache_snapshot(name)
        if snapshot is not None and (snapshot / READY_MARKER).is_file():
            return ResolvedModel(name, "hub-cache", snapshot)
    raise _not_found(name, base_dir)
