"""The lock and the training meta are typed on read: a wrong type in an untrusted file is an error
naming its key path, and what an older expertkit did not write reads as empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertkit.package.lock import LockMismatchError, lock_from_meta, parse_lock
from expertkit.training_meta import TrainingMetaError, read_training_meta

LOCK = {
    "lock_version": 1,
    "expert": {"name": "e", "version": "0.1.0"},
    "base_model": {"name": "m", "vocab_size": 10},
    "chat_template": {"sha256": None, "text": None},
    "probe": None,
    "special_tokens": {},
    "files": {},
}


def test_a_lock_with_a_wrong_type_names_the_key() -> None:
    bad = {**LOCK, "base_model": {"name": "m", "vocab_size": "many"}}
    with pytest.raises(LockMismatchError, match=r"expert.lock.json: base_model.vocab_size: Input should be"):
        parse_lock(json.dumps(bad).encode(), "pkg")
    lock = parse_lock(json.dumps({**LOCK, "future": [1]}).encode(), "pkg")
    assert lock.base_model.vocab_size == 10 and lock.to_json()["future"] == [1]  # unknown keys are kept


def test_training_meta_reads_leniently_but_checks_types(tmp_path: Path) -> None:
    assert read_training_meta(tmp_path) is None
    (tmp_path / "training_meta.json").write_text(json.dumps({"base_model": {"weights_sha256": "ab"}}))
    meta = read_training_meta(tmp_path)
    assert meta is not None and meta.metrics.steps is None and meta.selection.history == []
    trained = lock_from_meta(meta)
    assert trained.base_model.weights_sha256 == "ab" and trained.template is None  # no template recorded
    (tmp_path / "training_meta.json").write_text(json.dumps({"chat_template_sha256": None}))
    meta = read_training_meta(tmp_path)
    assert meta is not None and lock_from_meta(meta).template is not None  # recorded as "none": checked
    (tmp_path / "training_meta.json").write_text(json.dumps({"metrics": {"steps": "three"}}))
    with pytest.raises(TrainingMetaError, match=r"training_meta.json: metrics.steps: Input should be"):
        read_training_meta(tmp_path)
    (tmp_path / "training_meta.json").write_text("{not json")
    with pytest.raises(TrainingMetaError, match="not valid JSON"):
        read_training_meta(tmp_path)
