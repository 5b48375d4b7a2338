"""Function calling through the served ``tools`` API against the direct evaluation, and the cost of
tool grammars.

1. Accuracy: for ``--expert`` (a trained expert-json directory or package), BFCL's held-out simple
   and multiple items scored directly (``expert-cli eval``: the expert's own prompt and JSON
   grammar) and through ``expert-cli serve``'s ``tools`` API with ``tool_choice`` ``required`` and
   ``auto`` (``eval --via-tools``: the same checker); the share of calls that parse and name a
   declared tool; and on BFCL's held-out irrelevance items, how often the expert does not call
   (``auto``).
2. Grammar cost: for every BFCL tool set (all simple, multiple, parallel items), the call grammar's
   compile time per request (a cold backend each time: no cache) with p50/p99, the cached lookup,
   and the time of one token mask.

    .venv/bin/python benchmarks/tools_api.py --expert examples/experts/expert-json [--limit N]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BFCL = REPO.parent / "shared" / "data" / "json" / "bfcl"
CLI = [sys.executable, "-m", "expertkit"]
SETS = {"simple": "BFCL_v4_simple_python.json", "multiple": "BFCL_v4_multiple.json"}


def cli_json(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run([*CLI, *args, "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def accuracy(expert: str, limit: int | None) -> dict[str, Any]:
    extra = ["--limit", str(limit)] if limit else []
    out: dict[str, Any] = {}
    for name, file in SETS.items():
        common = ["eval", "--expert", expert, "--set", str(BFCL / file), "--format", "bfcl", "--split", "heldout"]
        direct = cli_json(*common, *extra, "--baseline", "none")[-1]
        summary = direct.get("expert_summary") or direct
        out[name] = {"direct": summary["score"], "direct_ci95": summary["ci95"], "n": summary["n"]}
        for choice in ("required", "auto"):
            via = cli_json(*common, *extra, "--via-tools", choice)[-1]
            out[name][choice] = via["call_accuracy"]
            out[name][f"{choice}_parsed_and_declared"] = via["calls_parsed_and_declared"]
            out[name][f"{choice}_no_call"] = via["no_call"]
        print(f"  {name}: {json.dumps(out[name])}", file=sys.stderr, flush=True)
    common = ["eval", "--expert", expert, "--set", str(BFCL / "BFCL_v4_irrelevance.json"), "--format"]
    irrelevance = cli_json(*common, "bfcl-irrelevance", "--split", "heldout", *extra, "--via-tools", "auto")[-1]
    out["irrelevance"] = {"n": irrelevance["n"], "no_call_rate": irrelevance["call_accuracy"]}
    return out


def grammar_cost(limit: int | None) -> dict[str, Any]:
    import torch

    from expertkit.manifest.sections import ToolsContract
    from expertkit.models import load_tokenizer, resolve_model
    from expertkit.runtime.grammar import LLGuidanceBackend
    from expertkit.runtime.tools import Tool, ToolChoice, tool_grammar
    from expertkit.workflows.tools_eval import openai_tools

    tokenizer = load_tokenizer(resolve_model("SmolLM2-135M-Instruct"))
    vocab = len(tokenizer)
    contract = ToolsContract(schema_style="bfcl")
    cold, warm, masks, later = [], [], [], []
    rows = []
    for file in ("BFCL_v4_simple_python.json", "BFCL_v4_multiple.json", "BFCL_v4_parallel.json"):
        rows += [json.loads(line) for line in (BFCL / file).read_text().splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    shared = LLGuidanceBackend()
    shared.compile(tokenizer, vocab, tool_grammar(contract, [Tool("warm_up")], ToolChoice("required"), True)[0])
    for row in rows:
        tools = [Tool(t["function"]["name"], "", t["function"]["parameters"]) for t in openai_tools(row["function"])]
        spec, _ = tool_grammar(contract, tools, ToolChoice("auto"), True)
        backend = LLGuidanceBackend()
        backend._tokenizers = shared._tokenizers  # the tokenizer table is built once per server, not per request
        started = time.perf_counter()
        compiled = backend.compile(tokenizer, vocab, spec)
        matcher = compiled.matcher()
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        backend.compile(tokenizer, vocab, spec)
        warm.append(time.perf_counter() - started)
        logits = torch.zeros(vocab)
        started = time.perf_counter()
        matcher.mask(logits)
        masks.append(time.perf_counter() - started)
        prefix = json.dumps({"name": tools[0].name, "arguments": {}})[:-2]  # up to the arguments' "{"
        for token in tokenizer(prefix, add_special_tokens=False)["input_ids"]:
            matcher.accept(int(token))
            started = time.perf_counter()
            matcher.mask(logits)
            later.append(time.perf_counter() - started)

    def quantiles(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        return {"p50_ms": round(1000 * statistics.median(ordered), 3), "p99_ms": round(1000 * p99, 3)}

    return {
        "tool_sets": len(rows),
        "compile": quantiles(cold),
        "cached": quantiles(warm),
        "first_mask": quantiles(masks),
        "mask_per_token": quantiles(later),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expert", required=True, help="a trained function-calling expert (directory or package)")
    parser.add_argument("--limit", type=int, default=None, help="items per set (default: every held-out item)")
    parser.add_argument("--grammar-only", action="store_true", help="only the grammar cost (no model needed)")
    args = parser.parse_args()
    started = time.time()
    result: dict[str, Any] = {"grammar": grammar_cost(None)}
    print(f"  grammar: {json.dumps(result['grammar'])}", file=sys.stderr, flush=True)
    if not args.grammar_only:
        result["accuracy"] = accuracy(args.expert, args.limit)
        gaps = [abs(v["direct"] - v["required"]) for k, v in result["accuracy"].items() if k in SETS]
        result["max_gap_direct_vs_tools_required"] = max(gaps)
    result["wall_s"] = round(time.time() - started)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
