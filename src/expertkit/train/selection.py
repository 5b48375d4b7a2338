"""Best-checkpoint selection with three guards (MyPT's "GOLD" system).

A checkpoint is *eligible* when its eval loss improved on every earlier eligible one and its
eval/train loss ratio is under ``max_eval_train_ratio`` (a large ratio means the adapter is
memorising the training split). Independently, ``patience`` consecutive eval-loss rises stop
training: the best checkpoint so far is kept. Every observation records the decision and why,
so ``training_meta.json`` and the checkpoint ledger can say which checkpoint won and why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from expertkit.manifest.sections import Selection


@dataclass
class Observation:
    step: int
    eval_loss: float
    train_loss: float | None
    ratio: float | None
    rises: int
    eligible: bool
    best: bool
    reason: str


@dataclass
class BestCheckpointSelector:
    guards: Selection
    history: list[Observation] = field(default_factory=list)

    @property
    def best(self) -> Observation | None:
        chosen = [o for o in self.history if o.best]
        return chosen[-1] if chosen else None

    @property
    def should_stop(self) -> bool:
        return bool(self.history) and self.history[-1].rises >= self.guards.patience

    def observe(self, step: int, eval_loss: float, train_loss: float | None) -> Observation:
        previous = self.history[-1] if self.history else None
        rises = previous.rises + 1 if previous and eval_loss > previous.eval_loss else 0
        ratio = eval_loss / train_loss if train_loss and train_loss > 0 else None
        best = self.best
        if not math.isfinite(eval_loss):
            eligible, reason = False, "eval loss is not finite"
        elif ratio is not None and ratio > self.guards.max_eval_train_ratio:
            eligible = False
            reason = f"overfitting guard: eval/train loss ratio {ratio:.2f} > {self.guards.max_eval_train_ratio}"
        elif best is not None and eval_loss >= best.eval_loss:
            eligible, reason = False, f"eval loss {eval_loss:.4f} did not improve on {best.eval_loss:.4f}"
        else:
            eligible = True
            shown = f"{ratio:.2f}" if ratio is not None else "n/a"
            reason = f"eval loss {eval_loss:.4f} is the lowest so far; eval/train ratio {shown} within guard"
        if rises >= self.guards.patience:
            reason += f"; {rises} consecutive eval-loss rises: stopping (patience {self.guards.patience})"
        observation = Observation(step, eval_loss, train_loss, ratio, rises, eligible, eligible, reason)
        self.history.append(observation)
        return observation

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(o) for o in self.history]

    @classmethod
    def from_json(cls, guards: Selection, history: list[dict[str, Any]]) -> BestCheckpointSelector:
        return cls(guards, [Observation(**o) for o in history])
