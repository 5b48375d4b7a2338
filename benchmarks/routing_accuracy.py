"""Routing accuracy on a mixed set built from the shared data, with the example experts' routing rules.

Classes: SQL (Spider dev questions), JSON function calls (BFCL simple-python and parallel-multiple,
which the JSON expert does not train on), Cypher (text2cypher, the Claude Opus file) and general
chat (hand-written below: the shared data has none). Each prompt is scored twice:

* as prompted: the way each expert is used and trained (schema + question for SQL and Cypher,
  ``Functions: [...]`` + question for JSON; general chat unchanged);
* question only: the bare question, where rules rarely fire and similarity decides.

Routing examples come from the manifests (hand-written, not copied from the data). Last line:
{"accuracy": …, "accuracy_question_only": …, "examples": …, "per_class": {…}, "embedder": …}
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EXPERTS = {"expert-sql": "sql", "expert-json": "json", "expert-neo4j": "cypher"}
GENERAL = [
    "Tell me a joke about cats.",
    "What's a good recipe for banana bread?",
    "Write a haiku about autumn leaves.",
    "How do I improve my sleep schedule?",
    "Explain the theory of relativity in simple terms.",
    "What should I pack for a weekend trip to the mountains?",
    "Can you recommend a few classic science fiction novels?",
    "How do vaccines train the immune system?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "What are some tips for a job interview?",
    "Why is the sky blue?",
    "Translate 'thank you very much' into Japanese.",
    "Help me write a birthday message for my grandmother.",
    "What is the capital of Australia?",
    "Give me three ideas for a rainy afternoon with kids.",
    "How does photosynthesis work?",
    "What's the difference between a violin and a viola?",
    "Write a short motivational quote for Monday morning.",
    "How many minutes should I boil an egg for a soft yolk?",
    "Who painted the Mona Lisa?",
    "Explain what a black hole is to a ten-year-old.",
    "What are the health benefits of walking every day?",
    "Suggest a name for my new golden retriever puppy.",
    "How do I politely decline a wedding invitation?",
    "What causes the seasons on Earth?",
    "Write a limerick about a forgetful wizard.",
    "Is it better to rent or buy a house?",
    "How can I learn to play the guitar as an adult?",
    "What is the meaning of the word 'serendipity'?",
    "Describe the taste of a ripe mango.",
    "What happened during the French Revolution?",
    "Give me a packing list for a beach holiday.",
    "How do I stop procrastinating?",
    "What's the best way to learn a new language?",
    "Write a thank-you note to a teacher.",
    "Why do cats purr?",
    "How far is the Moon from the Earth?",
    "Recommend a board game for four players.",
    "What is mindfulness meditation?",
    "Tell me an interesting fact about octopuses.",
]


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sql_prompts(count: int, rng: random.Random) -> list[tuple[str, str]]:
    hook = load_module(REPO / "examples/experts/expert-sql/preprocess.py", "sql_hook")
    schemas = hook._schemas((DATA / "sql/spider/tables.json").resolve())
    rows = rng.sample(json.loads((DATA / "sql/spider/dev.json").read_text()), count)
    return [(f"{schemas[r['db_id']]}\n\nQuestion: {r['question']}", r["question"]) for r in rows]


def json_prompts(count: int, rng: random.Random) -> list[tuple[str, str]]:
    records = []
    for name in ("BFCL_v4_simple_python.json", "BFCL_v4_parallel_multiple.json"):
        lines = (DATA / "json/bfcl" / name).read_text().splitlines()
        records += [json.loads(line) for line in lines if line.strip()]
    prompts = []
    for record in rng.sample(records, count):
        question = [t for group in record["question"] for t in group if t.get("role") == "user"][-1]["content"]
        functions = json.dumps(record["function"], separators=(",", ":"))
        prompts.append((f"Functions: {functions}\n\n{question}", question))
    return prompts


def cypher_prompts(count: int, rng: random.Random) -> list[tuple[str, str]]:
    csv.field_size_limit(1 << 30)
    folder = DATA / "cypher/text2cypher"
    with (folder / "text2cypher_schemas.csv").open(encoding="utf-8") as handle:
        schemas = {row["database"]: row["schema"] for row in csv.DictReader(handle)}
    with (folder / "text2cypher_claudeopus.csv").open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["database"] in schemas]
    return [(f"{schemas[r['database']]}\n\nQuestion: {r['question']}", r["question"]) for r in rng.sample(rows, count)]


def build_router(embedder_name: str):
    from expertkit.manifest.load import load_manifest
    from expertkit.runtime.routing import Router

    routing = {
        label: load_manifest(REPO / "examples/experts" / name).manifest.routing for name, label in EXPERTS.items()
    }
    if embedder_name == "minilm":
        from expertkit.models.embedder import minilm_embedder

        embed = minilm_embedder()
    else:
        embed = None
    return Router(routing, embed)


def score(router, items: list[tuple[str, str | None]]) -> tuple[float, Counter, Counter]:
    confusion: Counter = Counter()
    correct: Counter = Counter()
    for prompt, truth in items:
        chosen = router.route(prompt).expert
        confusion[(truth or "base", chosen or "base")] += 1
        correct[truth or "base"] += chosen == truth
    return sum(correct.values()) / len(items), correct, confusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--embedder", choices=["minilm", "none"], default="minilm")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    rng = random.Random(0)
    sets = {"sql": sql_prompts(args.per_class, rng), "json": json_prompts(args.per_class, rng)}
    sets["cypher"] = cypher_prompts(args.per_class, rng)
    router = build_router(args.embedder)
    as_prompted = [(p, label) for label, items in sets.items() for p, _ in items] + [(g, None) for g in GENERAL]
    bare = [(q, label) for label, items in sets.items() for _, q in items] + [(g, None) for g in GENERAL]
    accuracy, correct, _ = score(router, as_prompted)
    bare_accuracy, bare_correct, bare_confusion = score(router, bare)
    sizes = {**{label: len(items) for label, items in sets.items()}, "base": len(GENERAL)}
    table = Table("class", "n", "as prompted", "question only", title=f"routing accuracy ({args.embedder})")
    for label, n in sizes.items():
        table.add_row(label, str(n), f"{correct[label] / n:.1%}", f"{bare_correct[label] / n:.1%}")
    table.add_row("all", str(len(as_prompted)), f"{accuracy:.1%}", f"{bare_accuracy:.1%}")
    console.print(table)
    wrong = {f"{t}->{c}": n for (t, c), n in sorted(bare_confusion.items()) if t != c}
    console.print(f"question-only confusions: {wrong}")
    per_class = {label: round(correct[label] / n, 4) for label, n in sizes.items()}
    result = {
        "accuracy": round(accuracy, 4),
        "accuracy_question_only": round(bare_accuracy, 4),
        "examples": len(as_prompted),
        "per_class": per_class,
        "embedder": args.embedder,
    }
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
