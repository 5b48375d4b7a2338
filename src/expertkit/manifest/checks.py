"""Semantic checks: rules that relate several fields, or the manifest to the files beside it.

Each check is a function ``(manifest, context) -> list[Problem]`` registered in ``CHECKS``; the
structural rules (types, ranges, enums, unknown keys) were already enforced by the schema.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import regex

from expertkit.manifest.model import ManifestV2
from expertkit.manifest.phase_checks import check_phases, share_problems, sparring_outputs
from expertkit.manifest.report import Problem
from expertkit.manifest.sections import Adapter
from expertkit.naming import normalise_model_name
from expertkit.safepath import UnsafePathError, contained_file, path_problem

# Modules adapters must not target unless allow_unsafe_targets is set: adapting norms and
# embeddings destabilises training (seed 004: "Do NOT Adapt (Causes Instability)").
UNSAFE_TARGET_PATTERNS = ("*norm*", "embed_tokens", "*embed*", "lm_head", "wte", "wpe")
RANKED_ADAPTERS = ("lora", "dora", "lokr")


@dataclass(frozen=True)
class CheckContext:
    """Where the manifest lives and how to spell paths in the user's own (v1.0 or v2.0) file."""

    root: Path
    source_version: str = "2.0"
    packaged: bool = False  # a manifest inside a package: only the files a package ships must exist

    def base_model(self, m: int) -> str:
        return "$.base_model" if self.source_version == "1.0" else f"$.base_models[{m}]"

    def adapter(self, m: int, a: int) -> str:
        return f"$.adapters[{a}]" if self.source_version == "1.0" else f"$.base_models[{m}].adapters[{a}]"


Check = Callable[[ManifestV2, CheckContext], list[Problem]]


def is_unsafe_target(module: str) -> bool:
    """True for norms, embeddings and the LM head."""
    return any(fnmatch.fnmatch(module.lower(), pattern) for pattern in UNSAFE_TARGET_PATTERNS)


def _ia3_problems(adapter: Adapter, path: str) -> list[Problem]:
    problems = [
        Problem(f"{path}.{key}", "IA³ adapters take no rank or alpha; remove it", "no value", f"{key}")
        for key in ("r", "rank", "alpha")
        if getattr(adapter, key) is not None
    ]
    if not adapter.feedforward_modules:
        problems.append(
            Problem(
                f"{path}.feedforward_modules",
                "IA³ needs feedforward_modules",
                "a subset of target_modules",
                "nothing",
            )
        )
    else:
        extra = sorted(set(adapter.feedforward_modules) - set(adapter.target_modules))
        if extra:
            problems.append(
                Problem(
                    f"{path}.feedforward_modules",
                    "feedforward_modules must be a subset of target_modules",
                    f"modules among {sorted(set(adapter.target_modules))}",
                    f"{extra}",
                )
            )
    return problems


def _ranked_problems(adapter: Adapter, path: str) -> list[Problem]:
    kind = {"lora": "LoRA", "dora": "DoRA", "lokr": "LoKr"}[adapter.type]
    problems = []
    if adapter.r is None and adapter.rank is None:
        problems.append(Problem(f"{path}.r", f"{kind} needs a rank", "an integer r ≥ 1", "nothing"))
    if adapter.r is not None and adapter.rank is not None and adapter.r != adapter.rank:
        problems.append(
            Problem(f"{path}.rank", "r and rank disagree; give one of them", f"{adapter.r}", f"{adapter.rank}")
        )
    if adapter.alpha is None:
        problems.append(Problem(f"{path}.alpha", f"{kind} needs alpha", "a number > 0", "nothing"))
    if adapter.feedforward_modules is not None:
        problems.append(
            Problem(
                f"{path}.feedforward_modules",
                "feedforward_modules is for IA³ only; remove it",
                "no value",
                "a list",
            )
        )
    rank = adapter.r or adapter.rank
    if adapter.type == "dora" and rank and adapter.alpha and adapter.alpha != 2 * rank:
        problems.append(
            Problem(
                f"{path}.alpha",
                "DoRA usually uses alpha = 2·r",
                f"{2 * rank}",
                f"{adapter.alpha:g}",
                "warning",
            )
        )
    return problems


def check_adapters(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    problems: list[Problem] = []
    for m, entry in enumerate(manifest.base_models):
        for a, adapter in enumerate(entry.adapters):
            path = ctx.adapter(m, a)
            rules = _ia3_problems if adapter.type == "ia3" else _ranked_problems
            problems += rules(adapter, path)
            for t, module in enumerate(adapter.target_modules):
                if is_unsafe_target(module) and not adapter.allow_unsafe_targets:
                    problems.append(
                        Problem(
                            f"{path}.target_modules[{t}]",
                            f"'{module}' is a norm, embedding or head; adapting it destabilises training"
                            " (set allow_unsafe_targets: true to force it)",
                            "a linear projection such as q_proj or down_proj",
                            f"'{module}'",
                        )
                    )
            if len(set(adapter.target_modules)) != len(adapter.target_modules):
                problems.append(Problem(f"{path}.target_modules", "duplicate module names", "", "", "warning"))
    return problems


def check_base_models(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    seen: dict[str, int] = {}
    problems = []
    for m, entry in enumerate(manifest.base_models):
        key = normalise_model_name(entry.name)
        if key in seen:
            problems.append(
                Problem(
                    f"{ctx.base_model(m)}.name",
                    f"base model '{entry.name}' normalises to '{key}' like base_models[{seen[key]}];"
                    " their weights would overwrite each other",
                    "distinct model names",
                    f"'{entry.name}'",
                )
            )
        seen.setdefault(key, m)
    return problems


def check_soft_prompts(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    problems = []
    names: set[str] = set()
    for i, prompt in enumerate(manifest.soft_prompts):
        path = f"$.soft_prompts[{i}]"
        if prompt.init == "TEXT" and not prompt.init_text:
            problems.append(Problem(f"{path}.init_text", "init TEXT needs init_text", "a non-empty string", "nothing"))
        if prompt.init == "RANDOM" and prompt.init_text:
            problems.append(Problem(f"{path}.init_text", "init_text is ignored with init RANDOM", "", "", "warning"))
        if prompt.name in names:
            problems.append(Problem(f"{path}.name", "duplicate soft prompt name", "a unique name", f"'{prompt.name}'"))
        names.add(prompt.name)
    return problems


def check_training(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    training = manifest.training
    if training is None:
        return []
    problems = []
    config, dataset, decoding = training.config, training.dataset, training.decoding
    if config and config.warmup_steps is not None and config.warmup_ratio is not None:
        problems.append(
            Problem(
                "$.training.config.warmup_ratio",
                "give warmup_steps or warmup_ratio, not both",
                "one of them",
                "both",
            )
        )
    if config and config.save_steps and config.eval_steps and config.save_steps != config.eval_steps:
        problems.append(
            Problem(
                "$.training.config.save_steps",
                "checkpoints are chosen by eval loss, so one is written at every evaluation: save_steps "
                f"{config.save_steps} cannot differ from eval_steps {config.eval_steps}",
                "the same value as eval_steps, or only one of them",
                str(config.save_steps),
            )
        )
    if dataset and (dataset.path is None) == (dataset.datasets is None):
        found = "both" if dataset.path else "neither"
        problems.append(Problem("$.training.dataset", "give either path or datasets[]", "exactly one of them", found))
    problems += share_problems(manifest)
    if decoding and decoding.use_grammar and not (decoding.grammar_file or decoding.grammar_type):
        problems.append(
            Problem(
                "$.training.decoding.use_grammar",
                "use_grammar needs grammar_file or grammar_type",
                "one of them",
                "neither",
            )
        )
    if decoding and decoding.grammar_type == "json_schema" and decoding.json_schema is None:
        problems.append(
            Problem(
                "$.training.decoding.json_schema",
                "grammar_type json_schema needs json_schema",
                "an object",
                "nothing",
            )
        )
    return problems


def check_routing(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    problems = []
    for i, pattern in enumerate(manifest.routing.patterns if manifest.routing else []):
        try:
            regex.compile(pattern)  # the engine routing uses (matched with a timeout)
        except regex.error as exc:
            problems.append(
                Problem(
                    f"$.routing.patterns[{i}]",
                    f"invalid regular expression: {exc}",
                    "a Python regex",
                    repr(pattern),
                )
            )
    return problems


def referenced_files(manifest: ManifestV2) -> list[tuple[str, str]]:
    """(JSON path, relative file) for every file the manifest points at."""
    refs: list[tuple[str, str | None]] = [
        ("$.readme", manifest.readme),
        ("$.license_file", manifest.license_file),
    ]
    training = manifest.training
    if training and training.dataset:
        dataset = training.dataset
        refs.append(("$.training.dataset.path", dataset.path))
        refs += [(f"$.training.dataset.datasets[{i}].path", d.path) for i, d in enumerate(dataset.datasets or [])]
        if dataset.preprocessing:
            refs.append(("$.training.dataset.preprocessing.hook", dataset.preprocessing.hook))
    if training and training.decoding:
        refs.append(("$.training.decoding.grammar_file", training.decoding.grammar_file))
    for i, eval_set in enumerate(manifest.evaluation.sets if manifest.evaluation else []):
        refs += [
            (f"$.evaluation.sets[{i}].path", eval_set.path),
            (f"$.evaluation.sets[{i}].answers", eval_set.answers),
        ]
    return [(path, value) for path, value in refs if value]


# The files a package carries (README.md, LICENSE, grammar.gbnf); data and eval sets stay behind.
SHIPPED_FILE_PATHS = ("$.readme", "$.license_file", "$.training.decoding.grammar_file")


def untrusted_path_problems(manifest: ManifestV2) -> list[Problem]:
    """A packaged or installed manifest is untrusted: every file it ships (README, LICENSE, grammar)
    must be named by a relative path without ``..``, and its base model is never a path relative to
    the package (a package cannot bring its own model: a model directory's config can ask
    transformers to run code). Data, hooks and evaluation sets stay behind when packaging; they are
    never read from a package, and an evaluation set a packaged manifest names is read only from
    inside it (checked where it is read)."""
    problems = [
        Problem(path, f"a packaged manifest may only name files inside the package; this path {why}", found=repr(rel))
        for path, rel in referenced_files(manifest)
        if path in SHIPPED_FILE_PATHS and (why := path_problem(rel))
    ]
    for m, entry in enumerate(manifest.base_models):
        parts = entry.name.replace("\\", "/").split("/")
        if parts[0] == "." or ".." in parts:
            problems.append(
                Problem(
                    f"$.base_models[{m}].name",
                    "a packaged manifest cannot name a base model relative to itself (a package never brings a model)",
                    "an embedded model name, a hub id or an absolute path",
                    repr(entry.name),
                )
            )
    return problems


def check_files(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    if ctx.packaged:
        problems = untrusted_path_problems(manifest)
        if problems:
            return problems
    problems = []
    written_later = sparring_outputs(manifest)  # a phase's sparring writes them when that phase starts
    for path, relative in referenced_files(manifest):
        if ctx.packaged and path not in SHIPPED_FILE_PATHS:
            continue
        if relative in written_later and path.startswith("$.training.dataset.datasets["):
            continue
        resolved = (ctx.root / relative).resolve()
        if not resolved.exists():
            problems.append(Problem(path, "referenced file does not exist", f"a file at {resolved}", f"'{relative}'"))
            continue
        if ctx.packaged:
            try:
                contained_file(ctx.root, relative, path)
            except UnsafePathError as exc:
                problems.append(Problem(path, exc.message, found=f"'{relative}'"))
    return problems


def check_perf(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    """``perf`` is measured at package time; one written by hand never ships, so say so."""
    if ctx.packaged or manifest.perf is None:
        return []
    message = "perf is measured by expert-cli package on the packaging machine; values written here are replaced"
    return [Problem("$.perf", message, "no perf in a source manifest", "hand-written figures", "warning")]


def check_runtime(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    """``runtime`` is metadata for other runtimes but ``quantize`` and ``decoder`` (expertkit reads them): say,
    once per other field set, that nothing checks it."""
    if ctx.packaged or manifest.runtime is None:
        return []
    given = sorted(set(manifest.runtime.model_dump(exclude_none=True)) - {"quantize", "decoder"})  # read
    message = "informational for other runtimes: expertkit ships it as written but neither reads nor checks it"
    return [Problem(f"$.runtime.{name}", message, "", "", "warning") for name in given]


def check_tools(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    """The tools contract's templates must place what a request brings: the question and a tool's output."""
    decoding = manifest.training.decoding if manifest.training else None
    contract = decoding.tools if decoding else None
    if contract is None:
        return []
    path, problems = "$.training.decoding.tools", []
    if "{question}" not in contract.setting("user_template"):
        found = repr(contract.setting("user_template"))
        problems.append(Problem(f"{path}.user_template", "has no {question}", "a template with {question}", found))
    if "{content}" not in contract.setting("result_template"):
        found = repr(contract.setting("result_template"))
        message = "has no {content}: a tool's output would not reach the model"
        problems.append(Problem(f"{path}.result_template", message, "a template with {content}", found, "warning"))
    return problems


CHECKS: dict[str, Check] = {
    "adapters": check_adapters,
    "base_models": check_base_models,
    "soft_prompts": check_soft_prompts,
    "training": check_training,
    "phases": check_phases,
    "routing": check_routing,
    "files": check_files,
    "perf": check_perf,
    "runtime": check_runtime,
    "tools": check_tools,
}


def semantic_problems(manifest: ManifestV2, ctx: CheckContext) -> list[Problem]:
    """Run every registered check."""
    problems: list[Problem] = []
    for check in CHECKS.values():
        problems += check(manifest, ctx)
    return problems
