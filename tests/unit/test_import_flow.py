"""The shape of the source: imports flow one way between lifecycle stages, no module takes part in
an import circle (function-level imports count: they hide circles, they do not remove them), and
the cheap commands stay cheap (no torch behind ``--help`` or ``validate``)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    "eval": {"manifest", "models", "data", "package", "runtime", "grammars"},
    # orchestration across stages (the curriculum: train, evaluate, gate) lives above them
    # (and scoring through a served API: eval --via-tools runs serve's app in-process)
    "workflows": {"manifest", "models", "data", "train", "package", "runtime", "eval", "serve", "grammars"},
    # jobs run the stages as child processes (``python -m expertkit KIND``): they import none of them
    # (the manifest, to find the background tasks installed experts need)
    "jobs": {"manifest", "grammars"},
    # the dashboard reads the queue and files; it borrows serve's request guards and never loads a model
    # (the memory calculator runs train's estimate in a worker process: torch stays out of the dashboard)
    "dashboard": {"jobs", "serve", "package", "models", "manifest", "grammars", "train"},
    "cli": {
        "manifest",
        "models",
        "data",
        "train",
        "package",
        "runtime",
        "serve",
        "eval",
        "workflows",
        "grammars",
        "jobs",
        "dashboard",
    },
}
STAGES = set(ALLOWED)


def module_name(path: Path) -> str:
    return ".".join(("expertkit", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


MODULES = {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def _owner(name: str) -> str | None:
    """The module a dotted name lives in (``a.b.C`` → ``a.b``), if it is ours."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str) -> set[str]:
    """Every expertkit module ``name`` imports, anywhere in the file (``from pkg import sub`` → ``pkg.sub``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_owner(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else _owner(module))
    return {m for m in found if m is not None and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def stage_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES) else None


def test_no_module_takes_part_in_an_import_circle() -> None:
    assert circles(GRAPH) == []


def test_the_circle_finder_finds_a_circle_hidden_in_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    hidden = ast.parse("def f():\n    from expertkit.cli.app import app\n")
    assert any(isinstance(node, ast.ImportFrom) for node in ast.walk(hidden))


def test_imports_flow_one_way() -> None:
    backwards = []
    for name, imported in GRAPH.items():
        stage = stage_of(name)
        allowed = ALLOWED[stage] | {stage} if stage else set()
        if name == "expertkit.__main__":  # top-level shared modules import no stage, except __main__ → cli
            allowed = {"cli"}
        if name == "expertkit":  # the public API re-exports from the stages (lazily; typed for mypy)
            allowed = STAGES - {"cli", "serve"}
        bad = {stage_of(m) for m in imported if stage_of(m) is not None} - allowed
        if bad:
            backwards.append(f"{name} imports {sorted(b for b in bad if b)}")
    assert backwards == []


PROBE = """
import json, sys
from expertkit.cli.app import _register, app
_register()
try:
    app(sys.argv[1:], standalone_mode=False)
except BaseException:  # --help and failures exit; only the imports matter here
    pass
print(json.dumps(sorted(sys.modules)))
"""


def imported(*args: str) -> list[str]:
    return probe(*args)[1]


def probe(*args: str) -> tuple[list[str], list[str]]:
    """The command's printed lines, and every module it imported (a fresh interpreter)."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    *lines, modules = done.stdout.strip().splitlines()
    return lines, json.loads(modules)


def heavy_imports(*args: str) -> list[str]:
    return [m for m in imported(*args) if m.split(".")[0] in ("torch", "transformers", "peft")]


def test_help_and_validate_import_no_torch(tmp_path: Path) -> None:
    """A fresh interpreter: ``--help`` and ``validate`` on a manifest never pay for torch or transformers;
    ``--help`` not even for the manifest's pydantic models (it lists every command's options)."""
    modules = imported("--help")
    assert [m for m in modules if m.split(".")[0] in ("torch", "transformers", "peft", "pydantic")] == []
    assert "expertkit.manifest" not in modules
    manifest = SRC.parents[1] / "tests" / "fixtures" / "manifests" / "valid" / "v2_minimal.json"
    (tmp_path / "manifest.json").write_text(manifest.read_text(encoding="utf-8"), encoding="utf-8")
    assert heavy_imports("validate", "--expert", str(tmp_path)) == []


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    """Every module, imported one after another in a new process (not the test process, which has
    already loaded most of them): a module that only imports after some other one fails here."""
    names = sorted(name for name in MODULES if name != "expertkit.__main__")
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_one_shot_onnx_answer_from_a_built_graph_imports_no_torch(
    trained_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``chat --prompt`` through the ONNX decoder, once its graph is built (the first answer builds
    it, with torch), answers without importing torch, transformers or PEFT: the same answer."""
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    args = ["chat", "--experts", str(trained_source), "--prompt", "How many singers?", "--json"]
    args += ["--decoder", "onnx", "--quantize", "int8", "--max-tokens", "5", "--temperature", "0"]
    first, first_modules = probe(*args)
    again, modules = probe(*args)
    assert "torch" in first_modules  # the build merged the expert with torch
    assert [m for m in modules if m.split(".")[0] in ("torch", "transformers", "peft")] == []
    answer, before = json.loads(again[-1]), json.loads(first[-1])
    for key in ("text", "usage", "finish_reason", "expert"):
        assert answer[key] == before[key], key
    assert answer["decoding"]["decoder"] == {"value": "onnx", "source": "cli"} and answer["usage"]["completion_tokens"]
