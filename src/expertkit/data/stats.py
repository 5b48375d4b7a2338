"""Token statistics and the length histogram reported by ``data inspect`` and the sidecar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HISTOGRAM_BINS = 12


def token_stats(lengths: Sequence[int], trained: Sequence[int]) -> dict[str, Any]:
    if not lengths:
        return {"examples": 0, "tokens": 0, "trained_tokens": 0, "supervised_ratio": 0.0}
    values = np.asarray(lengths)
    total = int(values.sum())
    return {
        "examples": len(values),
        "tokens": total,
        "trained_tokens": int(sum(trained)),
        "supervised_ratio": round(float(sum(trained)) / total, 6),
        "mean": round(float(values.mean()), 1),
        "p50": int(np.percentile(values, 50)),
        "p95": int(np.percentile(values, 95)),
        "max": int(values.max()),
        "min": int(values.min()),
    }


def length_histogram(lengths: Sequence[int], bins: int = HISTOGRAM_BINS) -> list[dict[str, int]]:
    """Equal-width bins over [min, max]: ``[{"low", "high", "count"}, ...]``."""
    if not lengths:
        return []
    counts, edges = np.histogram(np.asarray(lengths), bins=bins)
    return [
        {"low": int(np.ceil(edges[i])), "high": int(np.floor(edges[i + 1])), "count": int(counts[i])}
        for i in range(len(counts))
    ]
