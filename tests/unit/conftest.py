"""Unit-test fixtures: a tiny expert trained once per session, and fresh copies of it (package, CLI)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from unit.train.helpers import train_tiny, write_tiny_expert


@pytest.fixture(scope="session")
def trained_source(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    """A trained tiny LoRA expert (with README, LICENSE and a grammar), trained once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EXPERTKIT_HOME", str(tmp_path_factory.mktemp("train-home")))
    try:
        expert = write_tiny_expert(tmp_path_factory.mktemp("source") / "expert-tiny", [tiny_llama_dir])
        (expert / "README.md").write_text("# expert-tiny\n", encoding="utf-8")
        (expert / "LICENSE").write_text("Apache-2.0\n", encoding="utf-8")
        (expert / "grammar.gbnf").write_text('root ::= "SELECT " [0-9]+ ";"\n', encoding="utf-8")
        train_tiny(expert)
        shutil.rmtree(next((expert / "weights").iterdir()) / "checkpoints")
    finally:
        mp.undo()
    return expert


@pytest.fixture
def expert_dir(trained_source: Path, tmp_path: Path) -> Path:
    """A private copy of the trained expert."""
    return Path(shutil.copytree(trained_source, tmp_path / "expert-tiny"))


@pytest.fixture
def built(expert_dir: Path, tmp_path: Path):
    """The copy, packaged into tmp_path/dist."""
    from expertkit.package.build import PackageRequest, package_expert

    return package_expert(PackageRequest(expert_dir, output=tmp_path / "dist"))
