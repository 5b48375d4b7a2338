"""The README's quickstart, extracted from the README and run as written (so it cannot drift), on the
tiny test model: init from a CSV, validate, inspect, train, chat, package, install, serve, and one
call through the openai client."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BLOCK = re.compile(r"<!-- quickstart:start.*?-->\s*```bash\n(.*?)```\s*<!-- quickstart:end -->", re.S)


def quickstart_lines() -> list[str]:
    block = BLOCK.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert block is not None, "the README lost its quickstart markers"
    return [line for line in block.group(1).splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_readme_quickstart_runs_as_written(tmp_path: Path, tiny_llama_dir: Path) -> None:
    lines = quickstart_lines()
    assert lines[0].startswith("make venv"), "the first line sets up .venv (this test already runs in it)"
    port = str(free_port())
    script = "\n".join(lines[1:])
    # The only changes: the tiny model instead of the embedded one, and a free port.
    script = script.replace(
        "init my-expert --data tickets.csv", f"init my-expert --data tickets.csv --base-model {tiny_llama_dir}"
    )
    script = script.replace("8000", port)
    rows = [f"Ticket {n}: my invoice shows a charge I do not recognise,billing" for n in range(10)]
    rows += [f"Ticket {n}: the parcel never arrived at my door,shipping" for n in range(10)]
    (tmp_path / "tickets.csv").write_text("prompt,completion\n" + "\n".join(rows) + "\n", encoding="utf-8")
    held = [("Ticket 99: I was billed twice", "billing"), ("Ticket 98: where is my box", "shipping")]
    (tmp_path / "held-out.jsonl").write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in held
        ),
        encoding="utf-8",
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "120"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "created my-expert (generic) with your data (tickets.csv)" in done.stdout
    assert "installed my-expert@0.1.0" in done.stdout
    assert "exact_match on held-out" in done.stdout and "delta" in done.stdout
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "dist").glob("my-expert-*.expert"))
