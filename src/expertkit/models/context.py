"""An expert opened once and passed along: the loaded manifest, the base model chosen for this run,
that model resolved (and prepared, when it is the embedded one), and its tokenizer on first use.

Data preparation, training, its phases and the workflows above them take an :class:`ExpertContext`
instead of a path, so one ``expert-cli train`` reads ``manifest.json`` once and resolves the base
model once (``package_expert`` had this shape first: load, then a straight pipeline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertkit.errors import ManifestError, ModelNotFoundError, UsageError
from expertkit.manifest.load import LoadedManifest, load_manifest
from expertkit.manifest.model import BaseModelEntry, ManifestV2
from expertkit.manifest.report import Problem, ValidationReport
from expertkit.manifest.validate import check_context, check_loaded
from expertkit.models.load import load_tokenizer
from expertkit.models.pull import ensure_ready
from expertkit.models.resolve import ResolvedModel, resolve_model
from expertkit.models.targets import entry_problems


@dataclass
class ExpertContext:
    """One expert directory, one base model: everything a stage needs that is read from disk."""

    loaded: LoadedManifest
    entry: BaseModelEntry
    resolved: ResolvedModel
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def manifest(self) -> ManifestV2:
        return self.loaded.manifest

    @property
    def root(self) -> Path:
        return self.loaded.root

    @property
    def path(self) -> Path:
        return self.loaded.path

    def tokenizer(self) -> Any:
        """The base model's tokenizer, loaded on first use and kept."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.resolved)
        return self._tokenizer


def open_expert(target: Path, model: str | None = None, *, check: bool = True) -> ExpertContext:
    """Load the manifest at ``target`` and resolve (and prepare) the base model ``model`` names (the
    only one, when the manifest has one).

    ``check``: refuse the manifest when ``expert-cli validate`` would, target modules included
    (checked against the model just resolved, not by resolving it again).

    Raises:
        ManifestError: the manifest is missing, malformed or invalid (every problem listed).
        ModelNotFoundError: the base model cannot be found locally.
    """
    loaded = load_manifest(target)
    entry = loaded.manifest.base_model(model)
    report = check_loaded(loaded) if check else ValidationReport(source=str(loaded.path))
    try:
        found = resolve_model(entry.name, loaded.root)
    except ModelNotFoundError:
        _refuse_invalid(report, target)  # the manifest's own problems first
        raise
    if check:  # before preparing any model: a manifest validate refuses costs nothing here
        if found.ready:
            report.add(_entry_problems(loaded, entry, found))
        _refuse_invalid(report, target)
    resolved = ensure_ready(found)
    if not resolved.ready:
        raise UsageError(f"base model {entry.name} is not prepared", f"run: expert-cli models pull {entry.name}")
    if check and not found.ready:  # prepared just now: its modules can be checked only now
        report = ValidationReport(source=str(loaded.path))
        report.add(_entry_problems(loaded, entry, resolved))
        _refuse_invalid(report, target)
    return ExpertContext(loaded, entry, resolved)


def _entry_problems(loaded: LoadedManifest, entry: BaseModelEntry, resolved: ResolvedModel) -> list[Problem]:
    index = next(i for i, e in enumerate(loaded.manifest.base_models) if e is entry)
    return entry_problems(index, entry, resolved, check_context(loaded))


def _refuse_invalid(report: ValidationReport, target: Path) -> None:
    if not report.ok:
        listing = "\n".join("  " + p.render() for p in report.errors)
        raise ManifestError(f"{report.source} is not valid:\n{listing}", f"run: expert-cli validate {target}")
