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


def test_best_is_the_lowest_eval_loss_that_passes_the_overfitting_guard() -> None:
    selector = BestCheckpointSelector(Selection(max_eval_train_ratio=1.5, patience=3))
    selector.observe(10, 2.0, 2.1)
    selector.observe(20, 1.5, 1.4)
    overfit = selector.observe(30, 1.4, 0.5)  # improved, but eval/train = 2.8
    assert not overfit.eligible and "overfitting guard" in overfit.reason
    assert selector.best is not None and selector.best.step == 20


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
