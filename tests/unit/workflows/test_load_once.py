"""``expert-cli train`` loads the manifest once and resolves the base model once: the loaded expert
is passed along (data, plan, model, finish), never re-read from its path."""

from __future__ import annotations

import importlib
import sys
import traceback
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from unit.train.helpers import write_tiny_expert

_register()

PATH_MODULES = (
    "expertkit.workflows.curriculum",
    "expertkit.train.run",
    "expertkit.train.finish",
    "expertkit.data.expert_data",
    "expertkit.models.targets",
    "expertkit.cli.train_cmd",
)


def count_calls(monkeypatch: pytest.MonkeyPatch, module: str, name: str, counts: Counter, callers: dict) -> None:
    """Wrap ``module.name`` and every module-level alias of it (``from module import name``)."""
    original = getattr(importlib.import_module(module), name)

    def counted(*args, **kwargs):
        counts[name] += 1
        callers.setdefault(name, []).append(
            " <- ".join(f"{f.name}:{f.lineno}" for f in traceback.extract_stack()[-6:-1])
        )
        return original(*args, **kwargs)

    for loaded in list(sys.modules.values()):
        if getattr(loaded, "__name__", "").startswith("expertkit") and getattr(loaded, name, None) is original:
            monkeypatch.setattr(loaded, name, counted)


def test_train_loads_the_manifest_once_and_resolves_the_model_once(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in PATH_MODULES:
        importlib.import_module(module)
    counts: Counter = Counter()
    callers: dict = {}
    count_calls(monkeypatch, "expertkit.manifest.load", "load_manifest", counts, callers)
    count_calls(monkeypatch, "expertkit.models.resolve", "resolve_model", counts, callers)
    expert = write_tiny_expert(tmp_path / "expert", [tiny_llama_dir], config={"max_steps": 2, "eval_steps": 2})
    result = CliRunner().invoke(app, ["train", "--expert", str(expert)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert counts == {"load_manifest": 1, "resolve_model": 1}, callers
