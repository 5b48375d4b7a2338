"""Expert gain on GeoQuery: the plain recipe against the same number of steps with a sparring round.

Arms, each trained from scratch on a copy of ``examples/experts/expert-sql`` (placed beside it, so its
relative data paths hold) with the same seed and the same total number of optimizer steps:

- ``plain``: the manifest's recipe (Spider + GeoQuery train), ``--steps`` steps;
- ``spar``: the same recipe for half the steps, then ``expert-cli spar`` on a sample of GeoQuery's
  **train** items with that adapter, then the other half on the sparring data plus ``--replay`` of the
  first phase's data (a curriculum: ``training.phases`` with ``spar`` on the second phase).

Each arm (and the base model, under the expert's contract) is scored on GeoQuery's test split (all of
it, execution accuracy with bootstrap 95 % intervals); the best recipe is the arm with the higher
score on GeoQuery's **dev** split (chosen there, reported on test once); and, unless ``--no-forgetting``, its forgetting
(mean KL against the base on the shipped general prompts). Nothing is tuned on the test split: the
recipe's settings are fixed before the run. The last line is one JSON object.

    .venv/bin/python benchmarks/expert_gain.py [--steps 40] [--spar-sample 150] [--replay 0.5]
        [--spar-at STEPS] [--kinds identify,correct,confirm] [--plain-from DIR] [--spar-lr LR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "examples" / "experts" / "expert-sql"
GEOQUERY = "../../../../shared/data/sql/geoquery/geography.json"
CLI = [sys.executable, "-m", "expertkit"]


def run(*args: str) -> str:
    started = time.time()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"  {' '.join(args[:3])} … {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    return done.stdout


def arm_copy(name: str) -> Path:
    target = SOURCE.with_name(f"expert-sql-gain-{name}")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(SOURCE, target, ignore=shutil.ignore_patterns("weights", "sparring"))
    return target


def manifest_edit(expert: Path, change: Any) -> None:
    path = expert / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=1))


def score(expert: Path, base_only: bool = False, split: str = "test") -> dict[str, Any]:
    args = ["eval", "--expert", str(expert), "--set", str(SOURCE / GEOQUERY), "--format", "geoquery", "--split", split]
    args += ["--json", "--base-only"] if base_only else ["--json", "--baseline", "none"]
    body = json.loads(run(*args).strip().splitlines()[-1])
    summary = body.get("baseline_summary") if base_only else body.get("expert_summary")
    return {"score": summary["score"], "ci95": summary["ci95"], "n": summary["n"]}


def cached_base() -> dict[str, Any] | None:
    """The base model's result on GeoQuery test from an earlier run (``eval --base-only`` writes it)."""
    from expertkit.home import expertkit_home

    path = expertkit_home() / "evals" / "expert-sql" / "base" / "geography.json"
    body = json.loads(path.read_text()) if path.is_file() else None
    if not body or body.get("n") != 182:
        return None
    print(f"  base: reused {path}", file=sys.stderr)
    return {"score": body["base"], "ci95": body["ci95"], "n": body["n"]}


def forgetting(expert: Path) -> float:
    body = json.loads(run("eval", "--expert", str(expert), "--forgetting-only", "--json").strip().splitlines()[-1])
    return float(body["summary"]["kl"])


def spar_arm(
    steps: int,
    sample: int,
    replay: float,
    spar_at: int | None = None,
    kinds: list[str] | None = None,
    learning_rate: float | None = None,
) -> Path:
    expert = arm_copy("spar")
    first = spar_at if spar_at is not None else steps // 2
    second = steps - first

    def phases(manifest: dict[str, Any]) -> None:
        dataset = manifest["training"]["dataset"]
        sources = [s["name"] for s in dataset["datasets"]]
        dataset["datasets"].append({"name": "sparring", "path": "sparring/round1.jsonl", "format": "jsonl"})
        manifest["evaluation"]["sets"].append({"name": "geoquery-train", "path": GEOQUERY, "format": "geoquery"})
        manifest["training"]["phases"] = [
            {"name": "recipe", "datasets": sources, "max_steps": first, "gate": False},
            {"name": "spar", "datasets": ["sparring"], "max_steps": second, "replay": replay, "gate": False,
             **({"learning_rate": learning_rate} if learning_rate else {}),
             "spar": {"into": "sparring", "set": "geoquery-train", "sample": sample,
                      "kinds": kinds or ["identify", "correct", "confirm"]}},
        ]  # fmt: skip

    manifest_edit(expert, phases)
    run("train", "--expert", str(expert))
    return expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per arm")
    parser.add_argument("--spar-sample", type=int, default=150, help="GeoQuery train items the spar round tries")
    parser.add_argument("--replay", type=float, default=0.5, help="share of the first phase's data in the second")
    parser.add_argument("--spar-at", type=int, help="recipe steps before the sparring round (default: half)")
    parser.add_argument("--kinds", default="identify,correct,confirm", help="sparring example kinds")
    parser.add_argument("--spar-lr", type=float, help="the sparring phase's learning rate (default: the recipe's)")
    parser.add_argument("--plain-from", help="a plain arm trained earlier with the same recipe and steps: re-scored")
    parser.add_argument("--no-forgetting", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the arms' expert directories")
    parser.add_argument(
        "--reuse-base", action="store_true", help="reuse the base model's result on the same set if the home has it"
    )
    args = parser.parse_args()
    started = time.time()
    plain = arm_copy("plain")
    results: dict[str, Any] = {"base": cached_base() if args.reuse_base else None}
    results["base"] = results["base"] or score(plain, base_only=True)
    if args.plain_from:  # its weights, re-scored by this code
        shutil.copytree(Path(args.plain_from) / "weights", plain / "weights")
    else:
        run("train", "--expert", str(plain), "--max-steps", str(args.steps))
    results["plain"] = score(plain)
    spar = spar_arm(args.steps, args.spar_sample, args.replay, args.spar_at, args.kinds.split(","), args.spar_lr)
    results["spar"] = score(spar)
    lineage = json.loads((spar / "sparring" / "round1.lineage.json").read_text())
    arms = {"plain": plain, "spar": spar}
    dev = {name: score(path, split="dev") for name, path in arms.items()}  # the recipe is chosen on dev, never test
    best = max(arms, key=lambda name: dev[name]["score"])
    kl = {name: None if args.no_forgetting else forgetting(path) for name, path in arms.items()}
    if not args.keep:
        for path in arms.values():
            shutil.rmtree(path, ignore_errors=True)
    print(json.dumps({name: figures for name, figures in results.items()}, indent=1), file=sys.stderr)
    print(json.dumps({
        "base": results["base"]["score"], "plain": results["plain"]["score"], "spar": results["spar"]["score"],
        "best": results[best]["score"], "best_recipe": best, "chosen_on": "dev",
        "dev": {name: figures["score"] for name, figures in dev.items()}, "steps_per_arm": args.steps,
        "forgetting_plain": kl["plain"], "forgetting_best": kl[best],
        "ci95": {k: v["ci95"] for k, v in results.items()}, "test_items": results["base"]["n"],
        "spar_round": lineage["counts"], "spar_sample": args.spar_sample, "replay": args.replay,
        "spar_at": args.spar_at if args.spar_at is not None else args.steps // 2, "kinds": args.kinds,
        "plain_reused": bool(args.plain_from), "spar_lr": args.spar_lr,
        "wall_s": round(time.time() - started),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
