"""Checks of ``training.phases`` (a curriculum): what the schema alone cannot say."""

from __future__ import annotations

from typing import Any

from expertkit.manifest.model import ManifestV2
from expertkit.manifest.report import Problem


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
