"""Best-checkpoint selection (MyPT's "GOLD" system), judged on trends.

The published checkpoint is the one with the lowest eval loss. The guards are about *overfitting*,
eval loss rising while train loss falls, so they look at trends, never at the level of one ratio:

- **patience**: ``patience`` consecutive eval-loss rises stop training;
- **gap**: the gap between the eval loss and the *smoothed* train loss (the mean of the train losses
  logged since the previous evaluation, not one noisy logging step) grew over ``gap_patience``
  consecutive evaluations while the eval loss did not improve: the adapter is memorising; stop.

The eval/train loss ratio is recorded with every evaluation as a signal. It is a guard only when
``max_eval_train_ratio`` is set: train and eval losses are measured on different mixes (the training
mix is weighted and packed differently from the eval split), so a fixed ratio refused real improvements
(a ``make demo`` run published step 23 at eval loss 1.065 over step 45 at 1.048). Every observation
records its decision and why, so ``training_meta.json``, the checkpoint ledger and the dashboard say
which checkpoint won and why.
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
    train_loss: float | None  # smoothed: the mean of the train losses logged since the previous evaluation
    ratio: float | None
    rises: int
    eligible: bool
    best: bool
    reason: str
    gap: float | None = None  # eval loss − smoothed train loss
    gap_rises: int = 0  # consecutive evaluations the gap grew without an eval-loss improvement


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
        last = self.history[-1] if self.history else None
        return last is not None and (last.rises >= self.guards.patience or last.gap_rises >= self.guards.gap_patience)

    def observe(self, step: int, eval_loss: float, train_loss: float | None) -> Observation:
        previous = self.history[-1] if self.history else None
        best = self.best
        improved = math.isfinite(eval_loss) and (best is None or eval_loss < best.eval_loss)
        rises = previous.rises + 1 if previous and eval_loss > previous.eval_loss else 0
        ratio = eval_loss / train_loss if train_loss and train_loss > 0 else None
        gap = eval_loss - train_loss if train_loss is not None and math.isfinite(eval_loss) else None
        widened = previous is not None and previous.gap is not None and gap is not None and gap > previous.gap
        gap_rises = previous.gap_rises + 1 if previous and widened and not improved else 0
        shown = f"{ratio:.2f}" if ratio is not None else "n/a"
        limit = self.guards.max_eval_train_ratio
        if not math.isfinite(eval_loss):
            eligible, reason = False, "eval loss is not finite"
        elif limit is not None and ratio is not None and ratio > limit:
            eligible, reason = False, f"ratio guard: eval/train loss ratio {ratio:.2f} > {limit}"
        elif not improved and best is not None:
            eligible, reason = (
                False,
                f"eval loss {eval_loss:.4f} did not improve on {best.eval_loss:.4f} (step {best.step})",
            )
        else:
            eligible, reason = (
                True,
                f"improved: eval loss {eval_loss:.4f} is the lowest so far (eval/train ratio {shown})",
            )
        if rises >= self.guards.patience:
            reason += f"; patience: {rises} consecutive eval-loss rises, stopping"
        if gap_rises >= self.guards.gap_patience:
            reason += (
                f"; overfitting guard: the eval–train gap grew {gap_rises} evaluations in a row without an "
                "eval-loss improvement, stopping"
            )
        observation = Observation(step, eval_loss, train_loss, ratio, rises, eligible, eligible, reason, gap, gap_rises)
        self.history.append(observation)
        return observation

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(o) for o in self.history]

    @classmethod
    def from_json(cls, guards: Selection, history: list[dict[str, Any]]) -> BestCheckpointSelector:
        known = set(Observation.__dataclass_fields__)
        return cls(guards, [Observation(**{k: v for k, v in o.items() if k in known}) for o in history])
