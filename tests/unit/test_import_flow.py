"""Imports flow one way between lifecycle stages, and nothing in the library imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "expertkit"
# Each stage may import the stages listed (and shared top-level modules: errors, home, naming, ...).
ALLOWED: dict[str, set[str]] = {
    "manifest": {"grammars"},  # grammars is a leaf package of data files
    "grammars": set(),
    "models": {"manifest", "grammars"},
    "data": {"manifest", "models"},
    "train": {"manifest", "models", "data"},
    "package": {"manifest", "models"},
    "runtime": {"manifest", "models", "data", "package", "grammars"},
    "serve": {"manifest", "models", "data", "package", "runtime", "grammars"},
    "eval": {"manifest", "models", "data", "train", "package", "runtime", "grammars"},  # the curriculum's gates
    "cli": {"manifest", "models", "data", "train", "package", "runtime", "serve", "eval", "grammars"},
}
STAGES = set(ALLOWED)


def imported_stages(path: Path) -> set[str]:
    stages = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "expertkit" and len(parts) > 1 and parts[1] in STAGES:
                stages.add(parts[1])
    return stages


def test_imports_flow_one_way() -> None:
    backwards = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).parts
        stage = relative[0] if len(relative) > 1 else None
        allowed = ALLOWED.get(stage, set()) | ({stage} if stage else set())
        if stage is None:  # top-level shared modules may import no stage, except __main__ → cli
            allowed = {"cli"} if relative[0] == "__main__.py" else set()
        bad = imported_stages(path) - allowed
        if bad:
            backwards.append(f"{path.relative_to(SRC)} imports {sorted(bad)}")
    assert backwards == []


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    import importlib

    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(("expertkit", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        if module != "expertkit.__main__":
            importlib.import_module(module)
