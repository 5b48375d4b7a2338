"""A bar chart of an evaluation per bucket: the expert beside its baseline (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expertkit.fsutil import save_figure_atomic


def plot_buckets(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = result.get("buckets") or {}
    names = list(buckets)
    expert = [buckets[b]["expert"] for b in names]
    baseline = [buckets[b].get("baseline") or 0.0 for b in names]
    figure, axes = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 4), dpi=110)
    positions = range(len(names))
    axes.bar(
        [p - 0.2 for p in positions],
        baseline,
        width=0.4,
        label=str(result.get("baseline_system", "baseline")),
        color="#999999",
    )
    axes.bar(
        [p + 0.2 for p in positions],
        expert,
        width=0.4,
        label=str(result.get("expert_system", "expert")),
        color="#1f77b4",
    )
    axes.set_xticks(list(positions), [f"{b}\n(n={buckets[b]['n']})" for b in names])
    axes.set_ylim(0, 1)
    axes.set_ylabel(str(result.get("metric", "score")))
    axes.set_title(f"{result.get('expert_system')} on {result.get('set')}: {result.get('metric')} per bucket")
    axes.legend()
    figure.tight_layout()
    return save_figure_atomic(figure, path)
