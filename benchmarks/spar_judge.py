"""The expert as its own judge: how well a sparring-trained expert answers "Is this correct?" about
its own answers on held-out items, measured before any run-time use of that verdict (a retry when
the expert says its answer is wrong, like the validators trigger).

The expert answers each item greedily under its contract (as ``eval`` runs it); the answer is scored
by the set's own metric; then the expert is asked, with its sparring wording and without its grammar
(the verdict is prose), whether that answer is correct. "It is incorrect" counts as flagging a wrong
answer: precision is the share of flags that were wrong answers, recall the share of wrong answers
flagged. A retry rule is worth having only if precision is high (each flag costs a second decode and
may replace a right answer) and recall is not negligible.

    python benchmarks/spar_judge.py --expert DIR [--set PATH --format geoquery --split dev]

Last line: {"n", "answers_right", "flagged", "no_verdict", "precision_wrong", "recall_wrong",
"false_alarm_rate", "verdicts", "trained_wording" (verdicts in the sparring wording), "said", ...}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from expertkit.eval.evaluate import evaluate
from expertkit.eval.job import EvalRequest
from expertkit.eval.run import eval_sets
from expertkit.models.hardware import best_dtype
from expertkit.package.references import resolve_expert
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions
from expertkit.runtime.settings import resolve_settings
from expertkit.workflows.spar import SparringSettings


def verdict(text: str, wording: SparringSettings) -> str:
    """The verdict in the trained wording, else in other words ("No, this is incorrect.")."""
    said = text.strip()
    if said.startswith(wording.incorrect.rstrip(".")):
        return "incorrect"
    if said.startswith(wording.correct.rstrip(".")):
        return "correct"
    first = said.split(".")[0].lower()
    if any(word in first for word in ("incorrect", "not correct", "wrong", "not right")):
        return "incorrect"
    return "correct" if any(word in first for word in ("correct", "right")) else "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expert", required=True)
    parser.add_argument("--set", type=Path, help="an evaluation set (default: the manifest's)")
    parser.add_argument("--format")
    parser.add_argument("--answers", type=Path)
    parser.add_argument("--split", help="default: each set's own evaluation split")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--only", action="append", help="judge only this manifest set (repeatable)")
    args = parser.parse_args()
    started = time.time()
    files = resolve_expert(args.expert)
    request = EvalRequest(args.expert, args.set, args.format, args.answers, args.split, None, args.limit, "auto")
    engine = Engine.for_experts([args.expert], LoadOptions(dtype=best_dtype()))  # type: ignore[arg-type]
    name = files.loaded.manifest.name
    wording = SparringSettings()
    ask = resolve_settings({"temperature": 0.0, "max_tokens": 8}, None)  # no grammar: the verdict is prose
    rows = []
    said_examples: list[str] = []
    exact = 0  # verdicts in the trained wording
    for selection in eval_sets(request, files):
        if args.only and selection.name not in args.only:
            continue  # e.g. the sparring set (training items): judge on held-out items only
        report = evaluate(engine, name, selection.items)
        for item, result in zip(selection.items, report.items, strict=True):
            turns = [{"role": "assistant", "content": result.text}, {"role": "user", "content": wording.check_prompt}]
            said = engine.run(name, engine.prompt_ids([*item.messages, *turns]), ask).text
            rows.append((result.correct, verdict(said, wording)))
            exact += said.strip().startswith((wording.incorrect.rstrip("."), wording.correct.rstrip(".")))
            said_examples += [said][: 5 - len(said_examples)]
        print(f"  {selection.name}: {len(selection.items)} items judged", file=sys.stderr, flush=True)
    counts = Counter((right, said) for right, said in rows)
    flagged = sum(n for (_, said), n in counts.items() if said == "incorrect")
    flagged_wrong = counts[(False, "incorrect")]
    wrong = sum(not right for right, _ in rows)
    right = len(rows) - wrong
    print(
        json.dumps({
            "expert": str(args.expert), "split": args.split, "n": len(rows), "answers_right": right,
            "flagged": flagged, "no_verdict": sum(n for (_, said), n in counts.items() if said == "none"),
            "precision_wrong": round(flagged_wrong / flagged, 4) if flagged else None,
            "recall_wrong": round(flagged_wrong / wrong, 4) if wrong else None,
            "false_alarm_rate": round(counts[(True, "incorrect")] / right, 4) if right else None,
            "verdicts": {f"{'right' if r else 'wrong'}->{s}": n for (r, s), n in sorted(counts.items())},
            "trained_wording": exact, "said": said_examples, "wall_s": round(time.time() - started),
        })
    )  # fmt: skip


if __name__ == "__main__":
    main()
