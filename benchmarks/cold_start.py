"""Cold start: wall time of ``expert-cli --help`` and of a first answer from
``expert-cli chat --experts NAME --prompt …`` on a cached model and an installed expert, with the fast
start (the model and a plain LoRA read from their files: no transformers model object, no PEFT)
and without it (``EXPERTKIT_FAST_START=0``: transformers + PEFT, the previous path), in one run.

The expert is a LoRA r=8 on every projection with random weights unless ``--expert`` names a real
one; it is packaged and installed into a private ``EXPERTKIT_HOME`` that links this home's models and
fingerprints (the model stays cached, nothing is installed here; ONNX graphs are built there, once
per run, before their timing). ``--directory`` times the expert's directory instead. The answer is 16
tokens, greedy. Each command runs ``--repeats`` times (median reported; the
first run warms the page cache). ``python -X importtime`` of one fast chat run tells whether
transformers or PEFT were imported and which top-level imports cost most.

Each decoder (``--decoders lean,onnx:int8,native``) is timed on its own; an ONNX graph is built, and
the native decoder compiled and its base packed (once, cached), by an untimed run before its timing
starts. ``chat_s`` is the fastest decoder's.

Last line: {"help_s", "chat_s", "decoder", "chat_s_by_decoder", "chat_s_without_fast_start", "speedup",
"imports_transformers", "imports_peft", "imports_torch", "imports_torch_by_decoder", "top_imports_ms", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CLI = [sys.executable, "-m", "expertkit"]
PROMPT = "List the names of all singers older than 30, ordered by age."


def timed(command: list[str], env: dict[str, str], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # one warm-up
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return statistics.median(times[1:])


def import_profile(command: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], env=env, capture_output=True, text=True)
    top: dict[str, float] = {}
    names = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if not cumulative.isdigit():
            continue
        names.add(name.split(".")[0])
        if not name.startswith(" ") and "." not in name.strip():
            top[name.strip()] = max(top.get(name.strip(), 0.0), int(cumulative) / 1000)
    ranked = dict(sorted(top.items(), key=lambda item: -item[1])[:8])
    return {
        "transformers": "transformers" in names,
        "peft": "peft" in names,
        "torch": "torch" in names,
        "top_ms": ranked,
    }


def run_ok(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")


def install(expert: Path, work: Path, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``expert`` packaged and installed into a private home sharing this home's models: its name,
    and the environment that points there."""
    from expertkit.home import expertkit_home

    home = work / "home"
    home.mkdir()
    for shared in ("models", "fingerprints", "downloads"):
        if (expertkit_home() / shared).is_dir():
            (home / shared).symlink_to((expertkit_home() / shared).resolve())
    env = env | {"EXPERTKIT_HOME": str(home)}
    out = work / "package"
    run_ok([*CLI, "package", "--expert", str(expert), "--output", str(out), "--no-measure"], env)
    run_ok([*CLI, "install", str(next(out.glob("*.expert")))], env)
    name = json.loads((expert / "manifest.json").read_text())["name"]
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expert", help="an expert directory (default: a random LoRA expert)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--decoders",
        default="lean,onnx:int8,native,native:int8",
        help="decoders to time the fast start with, each DECODER[:QUANTIZE] (onnx, native: built first)",
    )
    parser.add_argument("--directory", action="store_true", help="answer from the expert's directory, not installed")
    args = parser.parse_args()
    from decode_speed import make_expert

    from expertkit.models import pull_model

    base = pull_model("SmolLM2-135M-Instruct")
    with tempfile.TemporaryDirectory() as tmp:
        expert = Path(args.expert) if args.expert else make_expert(base.path, Path(tmp))
        env = dict(os.environ)
        if not args.directory:
            expert, env = install(expert, Path(tmp), env)
        chat = [*CLI, "chat", "--experts", str(expert), "--prompt", PROMPT, "--max-tokens", "16", "--temperature", "0"]
        fast_env = env | {"EXPERTKIT_FAST_START": "1"}
        slow_env = env | {"EXPERTKIT_FAST_START": "0"}
        help_s = timed([*CLI, "--help"], fast_env, args.repeats * 2)
        by_decoder = {}
        for decoder in args.decoders.split(","):
            kind, _, quantize = decoder.partition(":")
            command = [*chat, "--decoder", kind, *(["--quantize", quantize] if quantize else [])]
            subprocess.run(command, env=fast_env, capture_output=True)  # a graph or library is built once, here
            seconds = timed(command, fast_env, args.repeats)
            by_decoder[decoder] = {"chat_s": seconds, **import_profile(command, fast_env)}
        slow_s = timed(chat, slow_env, args.repeats)
        best = min(by_decoder, key=lambda name: by_decoder[name]["chat_s"])
        chat_s, imports = by_decoder[best]["chat_s"], by_decoder[best]
    print(
        f"expert-cli --help: {help_s:.2f} s; chat first answer: {chat_s:.2f} s fast start, {slow_s:.2f} s without",
        file=sys.stderr,
    )
    print(
        f"fast chat ({best}) imports transformers: {imports['transformers']}, peft: {imports['peft']}, "
        f"torch: {imports['torch']}",
        file=sys.stderr,
    )
    result = {
        "help_s": round(help_s, 3),
        "chat_s": round(chat_s, 3),
        "decoder": best,
        "chat_s_by_decoder": {name: round(run["chat_s"], 3) for name, run in by_decoder.items()},
        "chat_s_without_fast_start": round(slow_s, 3),
        "speedup": round(slow_s / chat_s, 2),
        "imports_transformers": imports["transformers"],
        "imports_peft": imports["peft"],
        "imports_torch": imports["torch"],
        "imports_torch_by_decoder": {name: run["torch"] for name, run in by_decoder.items()},
        "top_imports_ms": imports["top_ms"],
        "repeats": args.repeats,
        "expert": "directory" if args.directory else "installed",
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
