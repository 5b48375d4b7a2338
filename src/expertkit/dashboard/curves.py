"""Curves for the run page, from a run's ``events.jsonl``: training loss, eval loss, learning rate,
tokens/s and peak memory over steps, downsampled on the server.

A 10,000-step run logs thousands of points per series; a chart 1,000 pixels wide shows at most a
few hundred. :func:`downsample` keeps, per bucket of consecutive points, the lowest and the highest
(a min-max decimation: spikes and the envelope survive, unlike a mean or every-n-th point), plus the
first and the last point, so the page gets at most ``2 × buckets + 2`` points per series. Written by
hand: it is a dozen lines, and no charting library runs on the server.
"""

from __future__ import annotations

from typing import Any

MAX_POINTS = 600
SERIES = {  # series name → (event kind, field)
    "loss": ("step", "loss"),
    "eval_loss": ("eval", "eval_loss"),
    "learning_rate": ("step", "learning_rate"),
    "tokens_per_s": ("step", "tokens_per_s"),
    "peak_rss_mib": ("step", "peak_rss_mib"),
}


def downsample(xs: list[float], ys: list[float], max_points: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most ``max_points`` of ``(xs, ys)`` (x-sorted): each bucket's minimum and maximum, in x order."""
    if len(xs) <= max_points:
        return xs, ys
    buckets = max((max_points - 2) // 2, 1)
    size = (len(xs) - 2) / buckets
    keep = {0, len(xs) - 1}
    for b in range(buckets):
        lo, hi = 1 + int(b * size), 1 + int((b + 1) * size)
        if hi > lo:
            window = range(lo, hi)
            keep.add(min(window, key=ys.__getitem__))
            keep.add(max(window, key=ys.__getitem__))
    order = sorted(keep)
    return [xs[i] for i in order], [ys[i] for i in order]


def series(events: list[dict[str, Any]], max_points: int = MAX_POINTS) -> dict[str, dict[str, list[float]]]:
    """Each series as ``{"x": steps, "y": values}``; a resumed run's replayed steps keep the last value."""
    found: dict[str, dict[int, float]] = {name: {} for name in SERIES}
    for event in events:
        step = event.get("step")
        if not isinstance(step, int):
            continue
        for name, (kind, key) in SERIES.items():
            value = event.get(key)
            if event.get("event") == kind and isinstance(value, int | float) and value == value:  # not NaN
                found[name][step] = float(value)
    out = {}
    for name, points in found.items():
        steps = sorted(points)
        xs, ys = downsample([float(s) for s in steps], [points[s] for s in steps], max_points)
        out[name] = {"x": xs, "y": ys}
    return out
