"""The regression gate (MyPT's): the manifest's ``evaluation.thresholds`` checked against a result.

For the result's metric: the expert's score must reach ``min``, and may fall below the baseline by
at most ``max_regression``; ``buckets`` hold the same two rules per bucket. Every failure is named.
"""

from __future__ import annotations

from typing import Any

from expertkit.manifest.sections import Evaluation, Threshold


def _check(where: str, threshold: Threshold, expert: float | None, baseline: float | None) -> list[str]:
    failures = []
    if expert is None:
        return [f"{where}: no score"]
    if threshold.min is not None and expert < threshold.min:
        failures.append(f"{where}: {expert:.4f} is below the minimum {threshold.min:.4f}")
    if threshold.max_regression is not None and baseline is not None and baseline - expert > threshold.max_regression:
        failures.append(
            f"{where}: {expert:.4f} regresses {baseline - expert:.4f} from the baseline {baseline:.4f} "
            f"(at most {threshold.max_regression:.4f} allowed)"
        )
    return failures


def gate_failures(evaluation: Evaluation | None, result: dict[str, Any]) -> list[str]:
    """Failures of ``result`` (``run_eval``'s output) against the manifest's thresholds."""
    metric = result.get("metric") or result.get("expert_summary", {}).get("metric")
    threshold = (evaluation.thresholds if evaluation else {}).get(str(metric))
    if threshold is None:
        return []
    expert = result.get("expert", result.get("expert_summary", {}).get("score"))
    failures = _check(str(metric), threshold, expert, result.get("baseline"))
    for bucket, rule in (threshold.buckets or {}).items():
        row = result.get("buckets", {}).get(bucket)
        if row is None:
            failures.append(f"{metric}[{bucket}]: the evaluation has no such bucket")
            continue
        failures += _check(f"{metric}[{bucket}]", rule, row.get("expert"), row.get("baseline"))
    return failures
