"""Confidence intervals by bootstrap: a metric's mean, and the paired difference of two systems."""

from __future__ import annotations

import random
from collections.abc import Sequence

RESAMPLES = 2000


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def bootstrap_ci(values: Sequence[float], seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(mean([values[rng.randrange(n)] for _ in range(n)]) for _ in range(RESAMPLES))
    low = means[int((1 - level) / 2 * RESAMPLES)]
    high = means[min(RESAMPLES - 1, int((1 + level) / 2 * RESAMPLES))]
    return (low, high)


def paired_delta_ci(expert: Sequence[float], baseline: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Interval of mean(expert - baseline) over the same items (resampled together)."""
    if len(expert) != len(baseline):
        raise ValueError("paired scores need the same items")
    return bootstrap_ci([e - b for e, b in zip(expert, baseline, strict=True)], seed)
