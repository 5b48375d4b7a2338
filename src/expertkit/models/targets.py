"""The manifest check that needs the base model: do the adapters' target modules exist in it?"""

from __future__ import annotations

from pathlib import Path

from expertkit.errors import ExpertkitError, ManifestError
from expertkit.manifest.checks import CheckContext
from expertkit.manifest.load import LoadedManifest, load_manifest
from expertkit.manifest.model import BaseModelEntry
from expertkit.manifest.report import Problem
from expertkit.manifest.schema_errors import suggest
from expertkit.manifest.validate import validate_manifest
from expertkit.models.fingerprint import fingerprint, read_chat_template
from expertkit.models.resolve import ResolvedModel, resolve_model


def check_target_modules(loaded: LoadedManifest, ctx: CheckContext) -> tuple[list[Problem], list[str]]:
    """Problems for target modules missing from a locally available base model, and notes.

    A base model that is not available locally (or not pulled yet) is skipped with a note: validate
    never downloads or converts a model.
    """
    problems: list[Problem] = []
    notes: list[str] = []
    for m, entry in enumerate(loaded.manifest.base_models):
        try:
            resolved = resolve_model(entry.name, None if ctx.packaged else loaded.root)
        except ExpertkitError:
            notes.append(f"base model '{entry.name}' is not available locally; target modules not checked")
            continue
        if not resolved.ready:
            notes.append(
                f"base model '{entry.name}' is not prepared yet, so target modules were not checked; the first"
                f" command that loads it prepares it (about 20 s), or: expert-cli models pull {entry.name}"
            )
            continue
        problems += entry_problems(m, entry, resolved, ctx)
        notes.append(f"target modules checked against {entry.name} ({resolved.path})")
    return problems, notes


def entry_problems(m: int, entry: BaseModelEntry, resolved: ResolvedModel, ctx: CheckContext) -> list[Problem]:
    """What base model ``m`` (``entry``, already resolved and prepared) says about the manifest: its
    chat template's family against ``prompt_template``, and every adapter's target modules."""
    problems = template_family_problems(entry.prompt_template, read_chat_template(resolved.path), m, entry.name)
    names = fingerprint(resolved.path).module_names
    for a, adapter in enumerate(entry.adapters):
        for t, module in enumerate(adapter.target_modules):
            if module in names:
                continue
            guess = suggest(module, names)
            problems.append(
                Problem(
                    f"{ctx.adapter(m, a)}.target_modules[{t}]",
                    f"module '{module}' does not exist in {entry.name}"
                    + (f"; did you mean '{guess}'?" if guess else ""),
                    "one of: " + ", ".join(names),
                    f"'{module}'",
                )
            )
    return problems


# What each family's template text contains (its turn markers).
TEMPLATE_MARKERS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "qwen3": ("<|im_start|>", "<think>"),
    "llama3": ("<|start_header_id|>", "<|eot_id|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "mistral": ("[INST]", "[/INST]"),
    "phi3": ("<|user|>", "<|end|>"),
}


def template_family_problems(declared: str | None, template: str | None, m: int, model: str) -> list[Problem]:
    """A declared ``prompt_template`` that is not the family of the model's own chat template."""
    if declared is None or template is None:
        return []
    if all(marker in template for marker in TEMPLATE_MARKERS[declared]):
        return []
    actual = next((name for name, marks in TEMPLATE_MARKERS.items() if all(k in template for k in marks)), None)
    return [
        Problem(
            f"$.base_models[{m}].prompt_template",
            f"{model}'s own chat template is {actual or 'not one of the known families'}, not '{declared}'; "
            "expertkit always renders with the model's own template (the one pinned in the lock)",
            f"'{actual}' or no prompt_template" if actual else "no prompt_template",
            f"'{declared}'",
        )
    ]


def load_checked_manifest(target: Path) -> LoadedManifest:
    """The manifest, refused (with every problem listed) when ``expert-cli validate`` would fail."""
    report, _ = validate_manifest(target, (check_target_modules,))
    if not report.ok:
        listing = "\n".join("  " + p.render() for p in report.errors)
        raise ManifestError(f"{report.source} is not valid:\n{listing}", f"run: expert-cli validate {target}")
    return load_manifest(target)
