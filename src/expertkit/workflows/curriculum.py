"""``train_with_gates``: what ``expert-cli train`` runs. A manifest with ``training.phases`` trains
them in order and evaluates the gate (``evaluation.thresholds`` on ``evaluation.sets``) after every
phase with ``gate: true``, stopping on the first failure; a manifest without phases is one run.

A workflow: it calls training and evaluation, which never import each other. With ``resume``,
phases already finished on the same data are skipped and the interrupted one resumes from its
checkpoint.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from expertkit.errors import UsageError
from expertkit.eval.forgetting import run_forgetting
from expertkit.eval.job import EvalRequest
from expertkit.eval.run import run_eval
from expertkit.layout import CHECKPOINT_DIR
from expertkit.manifest.sections import Evaluation, TrainingPhase
from expertkit.models.context import ExpertContext, open_expert
from expertkit.train.checkpoints import newest_checkpoint
from expertkit.train.job import TrainRequest, TrainResult, weights_dir_for
from expertkit.train.phases import (
    AfterPhase,
    GateFailedError,
    PhaseOutcome,
    finished_phases,
    phase_dir,
    snapshot_phase,
    write_ledger,
)
from expertkit.train.run import train_expert
from expertkit.training_meta import TrainingMeta
from expertkit.workflows.spar import SparRequest, SparResult, SparringSettings, spar


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
    request: TrainRequest, context: ExpertContext, evaluations: dict[str, list[dict[str, Any]]]
) -> Callable[[PhaseOutcome], list[str]]:
    """The after-phase callback: evaluate the just-published weights; return the gate failures."""

    def gate(outcome: PhaseOutcome) -> list[str]:
        evaluation = context.manifest.evaluation or Evaluation()
        baseline = "base" if needs_baseline(evaluation) else None
        results = run_eval(EvalRequest(expert=str(request.target), baseline=baseline))
        evaluations[outcome.phase.name] = [r.to_json(items=False) for r in results]
        failures = [f"{r.set}: {failure}" for r in results for failure in r.gate_failures]
        forgetting = evaluation.forgetting
        if forgetting is not None and (forgetting.max_kl is not None or forgetting.min_match is not None):
            body = run_forgetting(str(request.target))  # a forgetting threshold joins the gate after every phase
            evaluations[outcome.phase.name].append({"set": "forgetting", **body["summary"], "gate": body["gate"]})
            failures += body["gate"]["failures"]
        return failures

    return gate


def train_with_gates(
    request: TrainRequest,
    on_start: Callable[[Any, Any], None] | None = None,
    context: ExpertContext | None = None,
) -> CurriculumResult:
    """Train the expert at ``request.target`` (opened once here, unless ``context`` is given): its
    phases with their gates, or one plain run.

    Raises:
        GateFailedError: a phase missed its gate (its weights are kept; later phases are not trained).
        ManifestError, UsageError, DataError, TrainingInterruptedError: as :func:`train_expert`.
    """
    context = context or open_expert(request.target, request.model)
    loaded = context.loaded
    training = loaded.manifest.training
    phases = training.phases if training else None
    if not phases:
        return CurriculumResult(train_expert(request, on_start=on_start, context=context))
    gated = [p.name for p in phases if p.gate]
    evaluation = loaded.manifest.evaluation
    if gated and (evaluation is None or not evaluation.sets or not evaluation.thresholds):
        raise UsageError(
            f"{loaded.path}: phases {gated} run the gate, but evaluation.sets or evaluation.thresholds is empty",
            'add them, or set "gate": false on those phases',
        )
    evaluations: dict[str, list[dict[str, Any]]] = {}
    outcomes = run_phases(request, context, list(phases), phase_gate(request, context, evaluations), on_start)
    last = outcomes[-1] if outcomes else None
    final = TrainResult(last.weights_dir, last.meta, None) if last else None
    return CurriculumResult(final, outcomes, evaluations)


def spar_before(request: TrainRequest, context: ExpertContext, phase: TrainingPhase) -> SparResult:
    """The phase's sparring: the adapter published so far answers the set's training items; its mistakes
    are written to the source the phase trains on (see :mod:`expertkit.workflows.spar`)."""
    assert phase.spar is not None
    manifest, root = context.loaded.manifest, context.loaded.root
    spec = next(
        (s for s in (manifest.evaluation.sets if manifest.evaluation else []) if s.name == phase.spar.set), None
    )
    dataset = manifest.training.dataset if manifest.training else None
    source = next((s for s in (dataset.datasets or [] if dataset else []) if s.name == phase.spar.into), None)
    if spec is None or source is None:  # validate names both; a manifest edited since is caught here too
        raise UsageError(f"phase {phase.name}: spar names a missing set or source", "run expert-cli validate")
    settings = SparringSettings(tuple(phase.spar.kinds), with_reason=phase.spar.with_reason,
                                confirm_per_wrong=phase.spar.confirm_per_wrong)  # fmt: skip
    answers = root / spec.answers if spec.answers else None
    spar_request = SparRequest(str(request.target), root / spec.path, spec.format, answers, sample=phase.spar.sample,
                               out=root / source.path, settings=settings)  # fmt: skip
    return spar(spar_request)


def run_phases(
    request: TrainRequest,
    context: ExpertContext,
    phases: list[TrainingPhase],
    after_phase: AfterPhase | None = None,
    on_start: Callable[[Any, Any], None] | None = None,
) -> list[PhaseOutcome]:
    """Train every phase in order (the phases this call trained are returned); stop with
    :class:`GateFailedError` when ``after_phase`` fails one.

    ``request`` is for the whole curriculum; each phase runs it with ``phase`` and ``init_from`` set.
    """
    weights_dir = weights_dir_for(context.loaded, context.entry)
    ledger = finished_phases(weights_dir, phases) if request.resume else []
    init_from = phase_dir(weights_dir, len(ledger) - 1, phases[len(ledger) - 1]) if ledger else None
    outcomes: list[PhaseOutcome] = []
    for index in range(len(ledger), len(phases)):
        phase = phases[index]
        resume = request.resume and newest_checkpoint(weights_dir / CHECKPOINT_DIR) is not None
        if phase.spar is not None and not resume:  # a resumed phase keeps the data it started with
            spar_before(request, context, phase)
        phase_request = replace(request, phase=phase.name, init_from=init_from, resume=resume)
        result = train_expert(phase_request, on_start=on_start, context=context)
        target = phase_dir(result.weights_dir, index, phase)
        snapshot_phase(result.weights_dir, target)
        # the phase is kept in its snapshot; its checkpoints would only confuse the next phase's --resume
        shutil.rmtree(result.weights_dir / CHECKPOINT_DIR, ignore_errors=True)
        outcome = PhaseOutcome(index, phase, result.weights_dir, result.meta or TrainingMeta())
        if phase.gate and after_phase is not None:
            outcome = replace(outcome, gate_failures=after_phase(outcome))
        outcomes.append(outcome)
        ledger.append(outcome.record())
        write_ledger(result.weights_dir, ledger)
        if outcome.gate_failures:
            raise GateFailedError(
                f"phase {index + 1} ({phase.name}) missed the evaluation gate:\n  "
                + "\n  ".join(outcome.gate_failures),
                f"its weights are in {target}; later phases were not trained",
            )
        init_from = target
    return outcomes
