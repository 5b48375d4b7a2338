"""Best-checkpoint guards and checkpoint bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

from expertkit.manifest.sections import Selection
from expertkit.train.checkpoints import (
    LEDGER_FILE,
    STAGING_DIR,
    CheckpointLedger,
    checkpoint_name,
    checkpoint_step,
    newest_checkpoint,
    publish_checkpoint,
    read_ledger,
    rotate_checkpoints,
)
from expertkit.train.selection import BestCheckpointSelector


def test_the_opt_in_ratio_guard_refuses_a_checkpoint_whose_ratio_is_too_high() -> None:
    selector = BestCheckpointSelector(Selection(max_eval_train_ratio=1.5, patience=3))
    selector.observe(10, 2.0, 2.1)
    selector.observe(20, 1.5, 1.4)
    overfit = selector.observe(30, 1.4, 0.5)  # improved, but eval/train = 2.8
    assert not overfit.eligible and "ratio guard" in overfit.reason
    assert selector.best is not None and selector.best.step == 20


# Recorded curves: (step, eval loss, mean train loss since the previous evaluation).
DEMO_RUN = [(23, 1.065, 0.74), (45, 1.048, 0.62)]  # the fresh-clone `make demo` run of issue 20
FALLING = [(50, 1.30, 1.20), (100, 1.18, 0.95), (150, 1.11, 0.78), (200, 1.07, 0.66), (234, 1.05, 0.58)]
OVERFIT = [(10, 1.50, 1.45), (20, 1.20, 1.05), (30, 1.10, 0.80), (40, 1.12, 0.60), (50, 1.11, 0.45), (60, 1.13, 0.30)]


def observe_all(curve: list[tuple[int, float, float]], guards: Selection | None = None) -> BestCheckpointSelector:
    selector = BestCheckpointSelector(guards or Selection())
    for step, eval_loss, train_loss in curve:
        selector.observe(step, eval_loss, train_loss)
        if selector.should_stop:
            break
    return selector


def test_a_run_whose_eval_loss_keeps_falling_publishes_its_best_eval_checkpoint() -> None:
    demo = observe_all(DEMO_RUN)
    assert demo.best is not None and demo.best.step == 45 and demo.best.ratio > 1.5  # the ratio is only reported
    assert demo.best.reason.startswith("improved: eval loss 1.0480")
    falling = observe_all(FALLING)  # train falls faster than eval (ratio 1.08 → 1.81): no overfitting
    assert falling.best is not None and falling.best.step == 234 and not falling.should_stop
    assert [o.best for o in falling.history] == [True] * 5
    strict = observe_all(DEMO_RUN, Selection(max_eval_train_ratio=1.5))  # the old behaviour, now opt-in
    assert strict.best is not None and strict.best.step == 23


def test_the_overfitting_guard_stops_when_the_gap_grows_without_improvement() -> None:
    run = observe_all(OVERFIT)
    assert run.best is not None and run.best.step == 30  # the lowest eval loss stays published
    assert run.should_stop and run.history[-1].step == 60 and run.history[-1].gap_rises == 3
    assert "overfitting guard: the eval–train gap grew 3 evaluations in a row" in run.history[-1].reason
    patient = observe_all(OVERFIT, Selection(gap_patience=5))
    assert not patient.should_stop and patient.best is not None and patient.best.step == 30


def test_an_older_history_without_gaps_reads_back() -> None:
    old = [{"step": 5, "eval_loss": 1.0, "train_loss": 1.1, "ratio": 0.9, "rises": 0, "eligible": True,
            "best": True, "reason": "eval loss 1.0 is the lowest so far"}]  # fmt: skip
    selector = BestCheckpointSelector.from_json(Selection(), old)
    assert selector.best is not None and selector.best.gap is None and selector.best.gap_rises == 0


def test_patience_stops_after_consecutive_rises() -> None:
    selector = BestCheckpointSelector(Selection(patience=2))
    for step, loss in [(1, 1.0), (2, 1.1), (3, 1.05)]:
        selector.observe(step, loss, 1.0)
    assert not selector.should_stop  # 1.1 → 1.05 broke the run of rises
    selector.observe(4, 1.2, 1.0)
    selector.observe(5, 1.3, 1.0)
    assert selector.should_stop and "consecutive eval-loss rises" in selector.history[-1].reason
    assert selector.best is not None and selector.best.step == 1


def test_selector_round_trips_through_json() -> None:
    selector = BestCheckpointSelector(Selection())
    selector.observe(5, 1.0, 1.1)
    again = BestCheckpointSelector.from_json(Selection(), json.loads(json.dumps(selector.to_json())))
    assert again.history == selector.history


def test_checkpoint_names_and_publication(tmp_path: Path) -> None:
    name = checkpoint_name(40)
    assert checkpoint_step(Path(name)) == 40 and name.count("-") == 3
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        staged = root / STAGING_DIR / f"checkpoint-{step}"
        staged.mkdir(parents=True)
        publish_checkpoint(staged, root, CheckpointLedger(step=step, data_hash="d"))
    half_written = root / checkpoint_name(99)
    half_written.mkdir()  # no ledger: never picked for resume
    newest = newest_checkpoint(root)
    assert newest is not None and checkpoint_step(newest) == 30 and (newest / LEDGER_FILE).is_file()
    assert read_ledger(newest) == CheckpointLedger(step=30, data_hash="d")  # typed, read back unchanged
    rotate_checkpoints(root, keep_last=1, keep_steps={10})
    kept = sorted(checkpoint_step(p) for p in root.iterdir() if checkpoint_step(p) is not None)
    assert kept == [10, 30, 99]
