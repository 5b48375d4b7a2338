"""What goes into a package: the files, gathered and checked from an expert directory.

Refuses pickles (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ...) anywhere in what would be shipped,
checks that every shipped ``.safetensors`` file really is one, and that the adapter matches the
manifest's adapter entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from expertkit.layout import (
    ADAPTER_CONFIG,
    ADAPTER_SUBDIR,
    ADAPTER_WEIGHTS,
    FULL_SUBDIR,
    SOFT_PROMPT_DIR,
)
from expertkit.manifest.load import LoadedManifest
from expertkit.manifest.model import BaseModelEntry
from expertkit.models.fingerprint import sha256_file
from expertkit.naming import normalise_model_name
from expertkit.package.adapter_check import adapter_mismatches
from expertkit.package.archive import PackageError
from expertkit.training_meta import TrainingMeta, read_training_meta

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
README, LICENSE, GRAMMAR = "README.md", "LICENSE", "grammar.gbnf"


@dataclass(frozen=True)
class ExpertWeights:
    """One base model's trained files in an expert directory."""

    model_dir_name: str
    directory: Path
    entry: BaseModelEntry

    @property
    def adapter_dir(self) -> Path:
        return self.directory / ADAPTER_SUBDIR

    def meta(self) -> TrainingMeta | None:
        return read_training_meta(self.directory)


def trained_models(weights_root: Path) -> list[str]:
    """Names of ``weights/<model>/`` directories that hold a trained adapter or model."""
    if not weights_root.is_dir():
        return []
    return sorted(d.name for d in weights_root.iterdir() if (d / ADAPTER_SUBDIR).is_dir() or (d / FULL_SUBDIR).is_dir())


def select_weights(loaded: LoadedManifest, weights_root: Path, model: str | None) -> ExpertWeights:
    """The weights to package: ``--model``, or the only trained model; errors list the choices."""
    available = trained_models(weights_root)
    if not available:
        raise PackageError(f"no trained weights in {weights_root}", "run: expert-cli train (or pass --weights DIR)")
    if model is None and len(available) > 1:
        raise PackageError(f"{weights_root} holds weights for several models", f"pick one with --model: {available}")
    chosen = normalise_model_name(model) if model else available[0]
    if chosen not in available:
        raise PackageError(f"no trained weights for {model!r} in {weights_root}", f"available: {available}")
    entry = next((e for e in loaded.manifest.base_models if normalise_model_name(e.name) == chosen), None)
    if entry is None:
        names = loaded.manifest.model_names()
        raise PackageError(f"weights/{chosen} matches no base model in {loaded.path}", f"the manifest lists {names}")
    directory = weights_root / chosen
    if (directory / FULL_SUBDIR).is_dir() and not (directory / ADAPTER_SUBDIR).is_dir():
        raise PackageError(
            f"{directory} holds a full fine-tune (model/), not an adapter",
            "an .expert package carries an adapter over a shared base model; serve a full fine-tune as its own model",
        )
    return ExpertWeights(chosen, directory, entry)


def refuse_pickles(directories: list[Path]) -> None:
    found = sorted(
        str(p) for d in directories if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES
    )
    if found:
        raise PackageError(
            f"refusing to package pickle files (they run code when loaded): {', '.join(found)}",
            "save weights as safetensors (expertkit train always does) and remove the pickles",
        )


def require_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise PackageError(f"{path} is not a valid safetensors file: {exc}", "re-run expert-cli train") from exc


def adapter_files(weights: ExpertWeights) -> dict[str, Path]:
    """Archive name → file for the adapter, checked against the manifest's adapter entry."""
    refuse_pickles([weights.adapter_dir, weights.directory / SOFT_PROMPT_DIR])
    prefix = f"weights/{weights.model_dir_name}/{ADAPTER_SUBDIR}"
    files = {f"{prefix}/{name}": weights.adapter_dir / name for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)}
    for name, path in files.items():
        if not path.is_file():
            raise PackageError(f"{path} is missing (needed for {name})", "run: expert-cli train")
    require_safetensors(weights.adapter_dir / ADAPTER_WEIGHTS)
    try:
        config = json.loads((weights.adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PackageError(f"{weights.adapter_dir / ADAPTER_CONFIG} is not valid JSON: {exc}") from exc
    if len(weights.entry.adapters) != 1:
        raise PackageError(f"{weights.entry.name} lists {len(weights.entry.adapters)} adapters; a package holds one")
    problems = adapter_mismatches(weights.entry.adapters[0], config, str(weights.adapter_dir / ADAPTER_CONFIG))
    if problems:
        raise PackageError(
            "the weights do not match the manifest:\n  " + "\n  ".join(problems), "re-train, or fix the manifest"
        )
    return files


def soft_prompt_files(loaded: LoadedManifest, weights: ExpertWeights) -> dict[str, Path]:
    files = {}
    for prompt in loaded.manifest.soft_prompts:
        path = weights.directory / SOFT_PROMPT_DIR / f"{prompt.name}.safetensors"
        if not path.is_file():
            raise PackageError(f"soft prompt {prompt.name!r} is configured but {path} is missing", "re-run train")
        require_safetensors(path)
        files[f"{SOFT_PROMPT_DIR}/{prompt.name}.safetensors"] = path
    return files


def side_files(loaded: LoadedManifest) -> dict[str, Path]:
    """README.md, LICENSE and grammar.gbnf: the files the manifest names, or the defaults if present."""
    manifest, root = loaded.manifest, loaded.root
    decoding = manifest.training.decoding if manifest.training else None
    wanted = {
        README: manifest.readme or README,
        LICENSE: manifest.license_file or LICENSE,
        GRAMMAR: (decoding.grammar_file if decoding else None) or GRAMMAR,
    }
    return {name: root / rel for name, rel in wanted.items() if (root / rel).is_file()}


def evaluation_files(weights: ExpertWeights) -> dict[str, Path]:
    """The expert's evaluation results (``expert-cli eval``) made on the adapter being shipped (by
    its sha256), as ``evaluation/<set>.json``; results of earlier weights stay behind."""
    adapter = weights.adapter_dir / ADAPTER_WEIGHTS
    current = sha256_file(adapter) if adapter.is_file() else None
    shipped = {}
    for path in sorted((weights.directory / "eval").glob("*.json")):
        try:
            evaluated = json.loads(path.read_text(encoding="utf-8")).get("adapter_sha256")
        except ValueError:
            continue
        if evaluated == current:
            shipped[f"evaluation/{path.name}"] = path
    return shipped
