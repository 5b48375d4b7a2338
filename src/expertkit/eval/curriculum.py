"""``train_with_gates``: what ``expert-cli train`` runs. A manifest with ``training.phases`` trains
them in order and evaluates the gate (``evaluation.thresholds`` on ``evaluation.sets``) after every
phase with ``gate: true``, stopping on the first failure; a manifest without phases is one run.

It lives in the evaluation stage because the gate is an evaluation; training knows only that a
callback may stop the curriculum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from expertkit.errors import UsageError
from expertkit.eval.job import EvalRequest, run_eval
from expertkit.manifest.load import load_manifest
from expertkit.manifest.sections import Evaluation
from expertkit.train.phases import PhaseOutcome, run_phases
from expertkit.train.run import TrainRequest, TrainResult, train_expert


@dataclass(frozen=True)
class CurriculumResult:
    final: TrainResult | None
    phases: list[PhaseOutcome] = field(default_factory=list)
    evaluations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def needs_baseline(evaluation: Evaluation) -> bool:
    """Whether any threshold compares against the base model (``max_regression``)."""
    rules = list(evaluation.thresholds.values())
    while rules:
        rule = rules.pop()
        if rule.max_regression is not None:
            return True
        rules.extend((rule.buckets or {}).values())
    return False


def phase_gate(
    request: TrainRequest, evaluations: dict[str, list[dict[str, Any]]]
) -> Callable[[PhaseOutcome], list[str]]:
    """The after-phase callback: evaluate the just-published weights; return the gate failures."""

    def gate(outcome: PhaseOutcome) -> list[str]:
        evaluation = load_manifest(request.target).manifest.evaluation or Evaluation()
        baseline = "base" if needs_baseline(evaluation) else None
        results = run_eval(EvalRequest(expert=str(request.target), baseline=baseline))
        evaluations[outcome.phase.name] = [{k: v for k, v in r.items() if k != "items"} for r in results]
        return [f"{r['set']}: {failure}" for r in results for failure in r["gate"]["failures"]]

    return gate


def train_with_gates(request: TrainRequest, on_start: Callable[[Any, Any], None] | None = None) -> CurriculumResult:
    """Train the expert at ``request.target``: its phases with their gates, or one plain run.

    Raises:
        GateFailedError: a phase missed its gate (its weights are kept; later phases are not trained).
        ManifestError, UsageError, DataError, TrainingInterruptedError: as :func:`train_expert`.
    """
    loaded = load_manifest(request.target)
    training = loaded.manifest.training
    phases = training.phases if training else None
    if not phases:
        return CurriculumResult(train_expert(request, on_start=on_start))
    gated = [p.name for p in phases if p.gate]
    evaluation = loaded.manifest.evaluation
    if gated and (evaluation is None or not evaluation.sets or not evaluation.thresholds):
        raise UsageError(
            f"{loaded.path}: phases {gated} run the gate, but evaluation.sets or evaluation.thresholds is empty",
            'add them, or set "gate": false on those phases',
        )
    evaluations: dict[str, list[dict[str, Any]]] = {}
    outcomes = run_phases(request, list(phases), phase_gate(request, evaluations), on_start)
    last = outcomes[-1] if outcomes else None
    final = TrainResult(last.weights_dir, last.meta, None) if last else None
    return CurriculumResult(final, outcomes, evaluations)
