"""Expert gain on GeoQuery: the plain recipe against the same number of steps with a sparring round.

Arms, each trained from scratch on a copy of ``examples/experts/expert-sql`` (placed beside it, so its
relative data paths hold) with the same seed and the same total number of optimizer steps:

- ``plain``: the manifest's recipe (Spider + GeoQuery train), ``--steps`` steps;
- ``spar``: the same recipe for half the steps, then ``expert-cli spar`` on a sample of GeoQuery's
  **train** items with that adapter, then the other half on the sparring data plus ``--replay`` of the
  first phase's data (a curriculum: ``training.phases`` with ``spar`` on the second phase);
- ``general`` (``--arms spar,general``): the recipe with general text replayed at ``--general-share``
  of the mix: the base model's own answers to the shipped general prompts (``data generate``, generator
  ``base_replay``; disjoint from the forgetting prompts).

Each arm (and the base model, under the expert's contract) is scored on GeoQuery's test split (all of
it, execution accuracy with bootstrap 95 % intervals); the best recipe is the arm with the higher
score on GeoQuery's **dev** split (chosen there, reported on test once); and, unless ``--no-forgetting``, its forgetting
(mean KL against the base on the shipped general prompts). Nothing is tuned on the test split: the
recipe's settings are fixed before the run. The last line is one JSON object.

``--task json`` runs the same two arms on ``examples/experts/expert-json``: sparring on BFCL simple's
training items, both arms scored on BFCL's held-out simple and multiple items (the pooled score is the
share right over both; BFCL has no dev split, so no recipe is chosen).

    .venv/bin/python benchmarks/expert_gain.py [--task sql|json] [--steps 40] [--spar-sample 150]
        [--replay 0.5] [--spar-at STEPS] [--kinds identify,correct,confirm] [--plain-from DIR] [--spar-lr LR]
        [--arms spar,general] [--general-share 0.05]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GEOQUERY = "../../../../shared/data/sql/geoquery/geography.json"
BFCL = "../../../../shared/data/json/bfcl/"
CLI = [sys.executable, "-m", "expertkit"]


@dataclass(frozen=True)
class Task:
    expert: str  # examples/experts/<expert>
    scored: dict[str, dict[str, str]]  # name -> an evaluation set (path, format, answers?, split)
    spar_set: dict[str, str]  # the evaluation set whose train items the sparring round answers
    dev: bool  # the set has a dev split to choose the recipe on


def bfcl(name: str, split: str | None = None) -> dict[str, str]:
    return {"path": f"{BFCL}{name}", "format": "bfcl", "answers": f"{BFCL}possible_answer/{name}"} | (
        {"split": split} if split else {}
    )


TASKS = {
    "sql": Task("expert-sql", {"geography": {"path": GEOQUERY, "format": "geoquery", "split": "test"}},
                {"name": "geoquery-train", "path": GEOQUERY, "format": "geoquery"}, dev=True),
    "json": Task("expert-json", {"bfcl-simple": bfcl("BFCL_v4_simple_python.json", "heldout"),
                                 "bfcl-multiple": bfcl("BFCL_v4_multiple.json", "heldout")},
                 {"name": "bfcl-simple-train"} | bfcl("BFCL_v4_simple_python.json"), dev=False),
}  # fmt: skip
TASK = TASKS["sql"]
SOURCE = REPO / "examples" / "experts" / TASK.expert


def run(*args: str) -> str:
    started = time.time()
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"  {' '.join(args[:3])} … {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    return done.stdout


def arm_copy(name: str) -> Path:
    target = SOURCE.with_name(f"{TASK.expert}-gain-{name}")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(SOURCE, target, ignore=shutil.ignore_patterns("weights", "sparring"))
    return target


def manifest_edit(expert: Path, change: Any) -> None:
    path = expert / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=1))


def score(expert: Path, base_only: bool = False, split: str | None = None) -> dict[str, Any]:
    """The task's scored sets (``split`` instead of each set's own, e.g. GeoQuery's dev); with several
    sets, the pooled share right and each set's figures under ``sets``."""
    sets = {}
    for name, spec in TASK.scored.items():
        args = ["eval", "--expert", str(expert), "--set", str(SOURCE / spec["path"]), "--format", spec["format"]]
        args += ["--answers", str(SOURCE / spec["answers"])] if "answers" in spec else []
        args += ["--split", split or spec["split"]]
        args += ["--json", "--base-only"] if base_only else ["--json", "--baseline", "none"]
        body = json.loads(run(*args).strip().splitlines()[-1])
        summary = body.get("baseline_summary") if base_only else body.get("expert_summary")
        sets[name] = {"score": summary["score"], "ci95": summary["ci95"], "n": summary["n"]}
    if len(sets) == 1:
        return next(iter(sets.values()))
    n = sum(s["n"] for s in sets.values())
    pooled = sum(s["score"] * s["n"] for s in sets.values()) / n
    return {"score": round(pooled, 4), "ci95": None, "n": n, "sets": sets}


def cached_base() -> dict[str, Any] | None:
    """The base model's result on GeoQuery test from an earlier run (``eval --base-only`` writes it)."""
    from expertkit.home import expertkit_home

    path = expertkit_home() / "evals" / "expert-sql" / "base" / "geography.json"
    body = json.loads(path.read_text()) if path.is_file() else None
    if TASK.expert != "expert-sql" or not body or body.get("n") != 182:
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
    warmup_steps: int | None = None,
) -> Path:
    expert = arm_copy("spar")
    first = spar_at if spar_at is not None else steps // 2
    second = steps - first

    def phases(manifest: dict[str, Any]) -> None:
        dataset = manifest["training"]["dataset"]
        sources = [s["name"] for s in dataset["datasets"]]
        dataset["datasets"].append({"name": "sparring", "path": "sparring/round1.jsonl", "format": "jsonl"})
        manifest["evaluation"]["sets"].append(dict(TASK.spar_set))
        manifest["training"]["phases"] = [
            {"name": "recipe", "datasets": sources, "max_steps": first, "gate": False},
            {"name": "spar", "datasets": ["sparring"], "max_steps": second, "replay": replay, "gate": False,
             **({"learning_rate": learning_rate} if learning_rate else {}),
             **({"warmup_steps": warmup_steps} if warmup_steps is not None else {}),
             "spar": {"into": "sparring", "set": TASK.spar_set["name"], "sample": sample,
                      "kinds": kinds or ["identify", "correct", "confirm"]}},
        ]  # fmt: skip

    manifest_edit(expert, phases)
    run("train", "--expert", str(expert))
    return expert


def general_arm(steps: int, share: float) -> Path:
    """The recipe with the base model's own answers to the shipped general prompts (``data generate``,
    generator ``base_replay``) mixed in at ``share``: general text replayed against forgetting."""
    expert = arm_copy("general")
    config = expert / "generators" / "general_replay.json"
    config.parent.mkdir(exist_ok=True)
    config.write_text(json.dumps({"generator": "base_replay", "expert": "..", "max_tokens": 160}))
    run(
        "data", "generate", "--config", str(config), "--out", str(expert / "general" / "replay.jsonl"), "--count", "130"
    )
    source = {"name": "general", "path": "general/replay.jsonl", "format": "jsonl", "share": share}
    manifest_edit(expert, lambda manifest: manifest["training"]["dataset"]["datasets"].append(source))
    run("train", "--expert", str(expert), "--max-steps", str(steps))
    return expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--task", choices=sorted(TASKS), default="sql", help="expert-sql (GeoQuery) or expert-json (BFCL)"
    )
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per arm")
    parser.add_argument("--spar-sample", type=int, default=150, help="GeoQuery train items the spar round tries")
    parser.add_argument("--replay", type=float, default=0.5, help="share of the first phase's data in the second")
    parser.add_argument("--spar-at", type=int, help="recipe steps before the sparring round (default: half)")
    parser.add_argument("--kinds", default="identify,correct,confirm", help="sparring example kinds")
    parser.add_argument("--spar-lr", type=float, help="the sparring phase's learning rate (default: the recipe's)")
    parser.add_argument("--spar-warmup", type=int, help="the sparring phase's warm-up steps (default: the recipe's)")
    parser.add_argument("--plain-from", help="a plain arm trained earlier with the same recipe and steps: re-scored")
    parser.add_argument("--arms", default="spar", help="arms beside plain: spar, general (comma-separated)")
    parser.add_argument("--general-share", type=float, default=0.05, help="the general arm's share of replayed text")
    parser.add_argument("--no-forgetting", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the arms' expert directories")
    parser.add_argument(
        "--reuse-base", action="store_true", help="reuse the base model's result on the same set if the home has it"
    )
    args = parser.parse_args()
    global TASK, SOURCE
    TASK, SOURCE = TASKS[args.task], REPO / "examples" / "experts" / TASKS[args.task].expert
    started = time.time()
    plain = arm_copy("plain")
    results: dict[str, Any] = {"base": cached_base() if args.reuse_base else None}
    results["base"] = results["base"] or score(plain, base_only=True)
    if args.plain_from:  # its weights, re-scored by this code
        shutil.copytree(Path(args.plain_from) / "weights", plain / "weights")
    else:
        run("train", "--expert", str(plain), "--max-steps", str(args.steps))
    arms = {"plain": plain}
    chosen = {arm.strip() for arm in args.arms.split(",") if arm.strip()}
    if "spar" in chosen:
        kinds = args.kinds.split(",")
        arms["spar"] = spar_arm(
            args.steps, args.spar_sample, args.replay, args.spar_at, kinds, args.spar_lr, args.spar_warmup
        )
    if "general" in chosen:
        arms["general"] = general_arm(args.steps, args.general_share)
    results.update({name: score(path) for name, path in arms.items()})
    spar_lineage = arms["spar"] / "sparring" / "round1.lineage.json" if "spar" in arms else None
    lineage = json.loads(spar_lineage.read_text()) if spar_lineage else {"counts": None}
    # the recipe is chosen on dev, never test (a task without a dev split chooses none)
    dev = {name: score(path, split="dev") for name, path in arms.items()} if TASK.dev else {}
    best = max(arms, key=lambda name: dev[name]["score"]) if TASK.dev else None
    kl = {name: None if args.no_forgetting else forgetting(path) for name, path in arms.items()}
    if args.keep:
        print(f"  arms kept: {', '.join(str(path) for path in arms.values())}", file=sys.stderr)
    else:
        for path in arms.values():
            shutil.rmtree(path, ignore_errors=True)
    print(json.dumps({name: figures for name, figures in results.items()}, indent=1), file=sys.stderr)
    if best is None:
        print(json.dumps({
            "task": args.task, **{name: figures["score"] for name, figures in results.items()},
            "sets": {k: v.get("sets") for k, v in results.items()}, "steps_per_arm": args.steps,
            **{f"forgetting_{name}": value for name, value in kl.items()},
            "spar_round": lineage["counts"], "spar_sample": args.spar_sample, "replay": args.replay,
            "spar_at": args.spar_at if args.spar_at is not None else args.steps // 2, "kinds": args.kinds,
            "spar_lr": args.spar_lr, "spar_warmup": args.spar_warmup, "wall_s": round(time.time() - started),
        }))  # fmt: skip
        return
    print(json.dumps({
        **{name: figures["score"] for name, figures in results.items()},
        "best": results[best]["score"], "best_recipe": best, "chosen_on": "dev",
        "dev": {name: figures["score"] for name, figures in dev.items()}, "steps_per_arm": args.steps,
        "forgetting_plain": kl["plain"], "forgetting_best": kl[best], "forgetting": kl,
        "general_share": args.general_share if "general" in arms else None,
        "ci95": {k: v["ci95"] for k, v in results.items()}, "test_items": results["base"]["n"],
        "spar_round": lineage["counts"], "spar_sample": args.spar_sample, "replay": args.replay,
        "spar_at": args.spar_at if args.spar_at is not None else args.steps // 2, "kinds": args.kinds,
        "plain_reused": bool(args.plain_from), "spar_lr": args.spar_lr, "spar_warmup": args.spar_warmup,
        "wall_s": round(time.time() - started),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
