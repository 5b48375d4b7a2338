"""Checks of ``training.phases`` (a curriculum): what the schema alone cannot say."""

from __future__ import annotations

from typing import Any

from expertkit.manifest.model import ManifestV2
from expertkit.manifest.report import Problem
from expertkit.manifest.sections import PhaseSparring


def check_phases(manifest: ManifestV2, ctx: Any) -> list[Problem]:
    """Phase names unique, sources named in ``training.dataset.datasets``, no replay in the first
    phase, and a gate only where ``evaluation`` has sets and thresholds."""
    training = manifest.training
    if training is None or not training.phases:
        return []
    dataset = training.dataset
    sources = [s.name for s in (dataset.datasets or [])] if dataset else []
    evaluation = manifest.evaluation
    can_gate = evaluation is not None and bool(evaluation.sets) and bool(evaluation.thresholds)
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, phase in enumerate(training.phases):
        path = f"$.training.phases[{i}]"
        if phase.name in seen:
            problems.append(Problem(f"{path}.name", "phase names repeat", "a unique name", f"'{phase.name}'"))
        seen.add(phase.name)
        for j, name in enumerate(phase.datasets):
            if name not in sources:
                expected = f"one of {sources}" if sources else "named sources in training.dataset.datasets"
                problems.append(
                    Problem(f"{path}.datasets[{j}]", "no dataset source has this name", expected, f"'{name}'")
                )
        if i == 0 and phase.replay > 0:
            problems.append(
                Problem(f"{path}.replay", "the first phase has no earlier phase to replay", "0", str(phase.replay))
            )
        if phase.spar is not None:
            problems += sparring_problems(manifest, i, phase.spar, phase.datasets)
        if phase.gate and not can_gate:
            problems.append(
                Problem(
                    f"{path}.gate",
                    "the gate needs evaluation.sets and evaluation.thresholds",
                    "false, or add them",
                    "true",
                )
            )
    return problems


def sparring_problems(manifest: ManifestV2, index: int, spar: PhaseSparring, datasets: list[str]) -> list[Problem]:
    """``phases[i].spar``: after a trained phase, into a JSONL source this phase trains on, from a named set."""
    path = f"$.training.phases[{index}].spar"
    dataset = manifest.training.dataset if manifest.training else None
    sources = {s.name: s for s in (dataset.datasets or []) if s.name} if dataset else {}
    sets = [s.name for s in (manifest.evaluation.sets if manifest.evaluation else [])]
    problems = []
    if index == 0:
        problems.append(Problem(path, "the first phase has no trained adapter to spar with", "spar on a later phase"))
    source = sources.get(spar.into)
    if source is None:
        problems.append(
            Problem(f"{path}.into", "no dataset source has this name", f"one of {sorted(sources)}", repr(spar.into))
        )
    elif not source.path.endswith(".jsonl") or (source.format not in (None, "jsonl")):
        problems.append(
            Problem(f"{path}.into", "sparring writes JSONL", "a source with a .jsonl path", repr(source.path))
        )
    if spar.into not in datasets:
        problems.append(
            Problem(f"{path}.into", "the phase does not train on its sparring data", f"'{spar.into}' in datasets")
        )
    if spar.set not in sets:
        problems.append(Problem(f"{path}.set", "no evaluation set has this name", f"one of {sets}", repr(spar.set)))
    return problems


def share_problems(manifest: ManifestV2) -> list[Problem]:
    """Sources with a ``share`` (a fixed fraction of the mix): no weight beside it, and every mix (the
    whole dataset, or each phase's sources) keeps weighted sources for the shares to be fractions of."""
    training = manifest.training
    dataset = training.dataset if training else None
    if training is None or dataset is None or not dataset.datasets:
        return []
    problems, shares = [], {}
    for i, source in enumerate(dataset.datasets):
        if source.share is None:
            continue
        shares[source.name or source.path] = source.share
        if source.weight != 1.0:
            where = f"$.training.dataset.datasets[{i}].weight"
            problems.append(Problem(where, "a source with a share has no weight", "one of them", str(source.weight)))
    if not shares:
        return problems
    mixes = {f"$.training.phases[{i}].datasets": p.datasets for i, p in enumerate(training.phases or [])}
    if not mixes:
        mixes = {"$.training.dataset.datasets": [s.name or s.path for s in dataset.datasets]}
    for where, names in mixes.items():
        total = sum(shares.get(name, 0.0) for name in names)
        if total and all(name in shares for name in names):
            problems.append(Problem(where, "every source of this mix has a share", "a weighted source too", str(names)))
        elif total > 0.5:
            problems.append(Problem(where, "the shares of this mix add up to more than half", "<= 0.5", f"{total:g}"))
    return problems


def sparring_outputs(manifest: ManifestV2) -> set[str]:
    """Paths of the dataset sources a phase's sparring writes (they exist only once that phase starts)."""
    training = manifest.training
    if training is None or not training.phases or training.dataset is None:
        return set()
    into = {p.spar.into for p in training.phases if p.spar is not None}
    return {s.path for s in (training.dataset.datasets or []) if s.name in into}
