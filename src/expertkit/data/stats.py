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
    """Equal-width integer bins over [min, max], at most ``bins`` of them, each ``low ≤ high``
    (lengths are whole tokens: float edges gave bins like 74–73): ``[{"low", "high", "count"}, ...]``."""
    if not lengths:
        return []
    values = np.asarray(lengths, dtype=np.int64)
    low, high = int(values.min()), int(values.max())
    width = max(1, -(-(high - low + 1) // bins))  # ceiling division
    index = (values - low) // width
    counts = np.bincount(index, minlength=int(index.max()) + 1)
    return [
        {"low": low + i * width, "high": min(low + (i + 1) * width - 1, high), "count": int(count)}
        for i, count in enumerate(counts)
    ]
