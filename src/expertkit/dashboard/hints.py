"""Action hints (the training-operations seed's): what an operator should look at now, from the same
queue, worker registry, run events and installed evaluations the pages show.

- **overfitting**: a recent run whose eval/train loss ratio rose over its last three evaluations
  while its eval loss is above its best (the published checkpoint stays at the best step);
- **queue with nothing running**: jobs wait and no worker is alive;
- **idle device while jobs wait**: an alive worker has free slots while a ready job has waited longer
  than a worker's poll could explain;
- **failed gate**: an installed expert whose shipped evaluation failed its gate.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from typing import Any

from expertkit.dashboard.runs import RunSource
from expertkit.events import read_events
from expertkit.jobs.model import Job
from expertkit.jobs.store import WorkerInfo
from expertkit.jobs.view import worker_state

WAITED_S = 10.0  # a ready job waiting longer than this while a worker has a free slot is worth a hint
RECENT_RUNS = 10  # the newest runs looked at for overfitting
TREND = 3  # evaluations in a row


@dataclass(frozen=True)
class Hint:
    kind: str  # overfitting, queue_idle, idle_device, failed_gate
    message: str
    link: str | None = None
    severity: str = "warning"  # or "bad"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def overfitting(run: RunSource) -> Hint | None:
    """The eval/train ratio rising over the last :data:`TREND` evaluations, eval loss above its best."""
    evals = [e for e in read_events(run.events) if e.get("event") == "eval"] if run.events else []
    decisions: list[tuple[float, float, Any]] = []
    for event in evals:
        loss, ratio = event.get("eval_loss"), (event.get("selection") or {}).get("ratio")
        if isinstance(loss, float) and isinstance(ratio, float):
            decisions.append((loss, ratio, event.get("step")))
    if len(decisions) < TREND:
        return None
    last = decisions[-TREND:]
    ratios = [d[1] for d in last]
    best = min(decisions, key=lambda d: d[0])
    if not all(a < b for a, b in itertools.pairwise(ratios)) or last[-1][0] <= best[0]:
        return None
    rise = " → ".join(f"{r:.2f}" for r in ratios)
    above = 100 * (last[-1][0] / best[0] - 1)
    return Hint(
        "overfitting",
        f"{run.expert} run {run.key}: eval/train loss ratio rose {rise} over the last {TREND} evaluations and eval "
        f"loss is {above:.1f}% above its best (step {best[2]}): overfitting; the best step stays published, "
        "so stop the run, or train fewer epochs or at a lower learning rate",
        f"/runs/{run.key}",
    )


def queue_hints(jobs: list[Job], workers: list[WorkerInfo], lease_s: float, now: float) -> list[Hint]:
    ready = [j for j in jobs if j.state == "queued" and (j.retry_at is None or j.retry_at <= now)]
    if not ready:
        return []
    waited = now - min(max(j.submitted_at, j.retry_at or 0.0) for j in ready)
    alive = [w for w in workers if worker_state(w, lease_s, now) == "alive"]
    if not alive and not any(j.state == "running" for j in jobs):
        return [
            Hint(
                "queue_idle",
                f"{len(ready)} job(s) wait and no worker is alive: start one with `expert-cli worker` "
                "(the same --queue on every host)",
                "/workers",
                "bad",
            )
        ]
    idle = [w for w in alive if len(w.jobs) < w.concurrency]
    if not idle or waited < WAITED_S:
        return []
    names = ", ".join(f"{w.name} ({'/'.join(w.devices) or 'cpu'}: {w.concurrency - len(w.jobs)} free)" for w in idle)
    return [
        Hint(
            "idle_device",
            f"{len(ready)} job(s) have waited {waited:.0f} s while worker(s) {names} sit idle: "
            "check that they read this queue and are not stopping",
            "/workers",
        )
    ]


def gate_hints(experts: list[dict[str, Any]]) -> list[Hint]:
    found = []
    for expert in experts:
        failed = [r["set"] for r in expert.get("evaluations", []) if r.get("gate") is False]
        if failed:
            found.append(
                Hint(
                    "failed_gate",
                    f"{expert['name']} {expert['version']}: its last evaluation failed the gate on "
                    f"{', '.join(failed)}; re-train, or do not route traffic to it",
                    "/experts",
                    "bad",
                )
            )
    return found


def all_hints(
    jobs: list[Job], workers: list[WorkerInfo], runs: list[RunSource], experts: list[dict[str, Any]], lease_s: float
) -> list[Hint]:
    now = time.time()
    found = queue_hints(jobs, workers, lease_s, now)
    found += [h for r in runs[:RECENT_RUNS] if (h := overfitting(r)) is not None]
    return found + gate_hints(experts)
