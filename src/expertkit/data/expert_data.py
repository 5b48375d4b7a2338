"""Prepare the data of an expert: its manifest and base model's tokenizer (opened once) → prepared data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expertkit.data.prepare import PreparedData, data_job, prepare_data
from expertkit.errors import DataError
from expertkit.models.context import ExpertContext, open_expert


def prepare_expert_data(
    expert: ExpertContext | Path,
    model: str | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    enforce: bool = True,
    phase: str | None = None,
) -> tuple[PreparedData, Any]:
    """Prepared data of an opened expert (or of the expert directory at a path, opened here without
    the validate checks; ``model`` picks its base model) or of one curriculum ``phase``, and the
    tokenizer it was rendered with.

    Raises:
        DataError: bad records under ``on_error: fail``, or (with ``enforce``) a failed validator.
    """
    context = expert if isinstance(expert, ExpertContext) else open_expert(expert, model, check=False)
    tokenizer = context.tokenizer()
    job = data_job(context.loaded, tokenizer, phase)
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
