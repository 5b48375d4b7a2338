"""What ``models list`` and ``models info`` show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertkit.home import models_dir
from expertkit.models.fingerprint import Fingerprint, cached_fingerprint, fingerprint
from expertkit.models.registry import EMBEDDED_MODELS
from expertkit.models.resolve import READY_MARKER, ResolvedModel, resolve_model
from expertkit.naming import normalise_model_name


@dataclass(frozen=True)
class ModelListing:
    name: str
    kind: str
    ready: bool
    path: Path
    description: str = ""


@dataclass(frozen=True)
class ModelInfo:
    resolved: ResolvedModel
    fingerprint: Fingerprint

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.resolved.name,
            "kind": self.resolved.kind,
            "path": str(self.resolved.path),
            "normalised_name": self.resolved.normalised_name,
            **self.fingerprint.to_json(),
        }


def list_models() -> list[ModelListing]:
    """Embedded models (pulled or not) and every other model converted into the cache."""
    listings = []
    embedded_dirs = set()
    for model in EMBEDDED_MODELS.values():
        resolved = resolve_model(model.name)
        embedded_dirs.add(resolved.path.name)
        listings.append(ModelListing(model.name, "embedded", resolved.ready, resolved.path, model.description))
    root = models_dir()
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        if (
            directory.name in embedded_dirs
            or directory.name.startswith(".")
            or not (directory / READY_MARKER).is_file()
        ):
            continue
        listings.append(ModelListing(directory.name, "gguf", True, directory, "converted from a GGUF file"))
    return listings


def model_info(name: str) -> ModelInfo:
    """Fingerprint of a model that is ready (pull embedded and GGUF models first)."""
    from expertkit.models.pull import prepare_model

    resolved = prepare_model(resolve_model(name))
    return ModelInfo(resolved, fingerprint(resolved.path))


def known_fingerprint(name: str, base_dir: Path | None = None) -> Fingerprint | None:
    """The fingerprint if the model is available locally and already fingerprinted; no torch import."""
    resolved = resolve_model(name, base_dir)
    return cached_fingerprint(resolved.path) if resolved.ready else None


__all__ = ["ModelInfo", "ModelListing", "list_models", "model_info", "normalise_model_name"]
