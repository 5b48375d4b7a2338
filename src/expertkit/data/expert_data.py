"""Prepare the data of an expert directory: manifest → base model's tokenizer → prepared data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expertkit.data.prepare import PreparedData, data_job, prepare_data
from expertkit.errors import DataError
from expertkit.manifest.load import load_manifest
from expertkit.models.load import load_tokenizer
from expertkit.models.resolve import resolve_model


def expert_tokenizer(target: Path, model: str | None = None) -> tuple[Any, Any]:
    """(loaded manifest, tokenizer of the chosen base model); the model must be available locally."""
    loaded = load_manifest(target)
    entry = loaded.manifest.base_model(model)
    return loaded, load_tokenizer(resolve_model(entry.name, loaded.root))  # an embedded model is prepared once


def prepare_expert_data(
    target: Path,
    model: str | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    enforce: bool = True,
    phase: str | None = None,
) -> tuple[PreparedData, Any]:
    """Prepared data of the expert at ``target`` (or of one curriculum ``phase``) and the
    tokenizer it was rendered with.

    Raises:
        DataError: bad records under ``on_error: fail``, or (with ``enforce``) a failed validator.
    """
    loaded, tokenizer = expert_tokenizer(target, model)
    job = data_job(loaded, tokenizer, phase)
    prepared = prepare_data(job, force=force, progress=progress)
    if enforce and prepared.failed_checks:
        raise validators_error(prepared.failed_checks)
    return prepared, tokenizer


def validators_error(failed: list[dict[str, Any]]) -> DataError:
    """One error for the failed data validators, with the manifest key that changes each verdict."""
    listing = "\n  ".join(f"{check['name']}: {failure}" for check in failed for failure in check["failures"])
    hints = []
    if any(c["name"] == "supervised_ratio" and "outside the band" in " ".join(c["failures"]) for c in failed):
        hints.append(
            "the trained-token band catches masking bugs (nothing or everything trained); short answers "
            "(labels, classes) are not one: set training.dataset.checks.min_supervised_ratio lower, e.g. 0.01"
        )
    hints.append("or fix the data, or list a validator in training.dataset.checks.skip to override it")
    return DataError(
        f"{len(failed)} data validator(s) failed; training would be wasted:\n  {listing}", "; ".join(hints)
    )
