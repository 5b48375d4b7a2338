"""Cross-phase replay for a curriculum (MyPT's anti-forgetting schedule): a phase trains on its own
sources plus a fixed share of earlier phases' examples.

``share`` is the fraction of the phase's training mix that comes from earlier phases ("Phase 2: 5 %
P1"): with ``n`` examples of its own, the phase gets ``round(share / (1 - share) × n)`` replayed
examples, split evenly across the earlier phases and drawn without replacement (repeated whole only
when an earlier phase is smaller than its part). Eval rows are never replayed into training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from expertkit.data.collect import SourcePlan
from expertkit.errors import DataError
from expertkit.manifest.sections import TrainingPhase


@dataclass(frozen=True)
class Replay:
    share: float
    phases: dict[str, list[str]]  # earlier phase name → its source names

    def sources(self) -> list[str]:
        return [name for names in self.phases.values() for name in names]

    def to_json(self) -> dict[str, object]:
        return {"share": self.share, "phases": self.phases}


def replay_count(share: float, own: int) -> int:
    return round(share / (1 - share) * own) if share > 0 else 0


def replay_mix(
    replay: Replay, groups: dict[str, list[int]], own: list[int], seed: int
) -> tuple[list[int], dict[str, int]]:
    """The phase's own mixed indices with the replayed ones added, shuffled; and how many were
    replayed from each earlier phase."""
    rng = random.Random(seed + 1)
    wanted = replay_count(replay.share, len(own))
    phases = list(replay.phases.items())
    picked: list[int] = []
    counts: dict[str, int] = {}
    for position, (phase, names) in enumerate(phases):
        part = wanted // len(phases) + (1 if position < wanted % len(phases) else 0)
        pool = [index for name in names for index in groups.get(name, [])]
        if part == 0 or not pool:
            continue
        whole, rest = divmod(part, len(pool))
        chosen = pool * whole + rng.sample(pool, rest)
        counts[f"replay:{phase}"] = len(chosen)
        picked.extend(chosen)
    mixed = own + picked
    rng.shuffle(mixed)
    return mixed, counts


def phase_plans(
    plans: list[SourcePlan], phases: list[TrainingPhase], name: str, manifest: Path
) -> tuple[list[SourcePlan], Replay | None]:
    """The sources of phase ``name`` (then, when it replays, every earlier phase's) and its replay."""
    names = [p.name for p in phases]
    if name not in names:
        raise DataError(f"{manifest}: no training phase named {name!r}", f"phases: {', '.join(names) or 'none'}")
    position = names.index(name)
    phase = phases[position]
    by_name = {p.name: p for p in plans}
    earlier = {p.name: list(p.datasets) for p in phases[:position]} if phase.replay > 0 else {}
    wanted = list(dict.fromkeys([*phase.datasets, *(s for group in earlier.values() for s in group)]))
    missing = [s for s in wanted if s not in by_name]
    if missing:
        raise DataError(
            f"{manifest}: phase {name!r} names sources not in training.dataset.datasets: {missing}",
            f"use one of: {', '.join(by_name)}",
        )
    replayed = {group: [s for s in sources if s not in phase.datasets] for group, sources in earlier.items()}
    replay = Replay(phase.replay, {g: s for g, s in replayed.items() if s}) if earlier else None
    return [by_name[s] for s in wanted], replay if replay and replay.phases else None
