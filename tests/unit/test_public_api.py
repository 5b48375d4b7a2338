"""The public API: ``import expertkit`` stays cheap, every name in ``__all__`` resolves, and the
README's library example runs as written (on the tiny model)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import expertkit
from expertkit.cli.app import _register, app

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- library:start.*?-->\s*```python\n(.*?)```\s*<!-- library:end -->", re.S)
_register()


def test_every_public_name_resolves_and_import_is_cheap() -> None:
    assert all(getattr(expertkit, name) is not None for name in expertkit.__all__)
    probe = "import sys, expertkit; print('torch' in sys.modules or 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_the_readme_library_example_runs_as_written(tmp_path: Path, tiny_llama_dir: Path) -> None:
    block = BLOCK.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert block is not None, "the README lost its library example markers"
    rows = [f"Ticket {n}: my invoice shows a charge I do not recognise,billing" for n in range(10)]
    rows += [f"Ticket {n}: the parcel never arrived at my door,shipping" for n in range(10)]
    (tmp_path / "tickets.csv").write_text("prompt,completion\n" + "\n".join(rows) + "\n", encoding="utf-8")
    conversation = {"messages": [{"role": "user", "content": "Ticket 99: billed twice"}]}
    conversation["messages"].append({"role": "assistant", "content": "billing"})
    (tmp_path / "held-out.jsonl").write_text(json.dumps(conversation) + "\n", encoding="utf-8")
    made = CliRunner().invoke(
        app,
        [
            "init",
            str(tmp_path / "my-expert"),
            "--data",
            str(tmp_path / "tickets.csv"),
            "--base-model",
            str(tiny_llama_dir),
        ],
    )
    assert made.exit_code == 0, made.output
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", block.group(1)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "dist").glob("my-expert-*.expert"))
    expert_score, base_score = (float(x) for x in done.stdout.splitlines()[0].split())  # then the answer
    assert 0 <= expert_score <= 1 and 0 <= base_score <= 1
