"""``expert-cli spar`` on the tiny trained expert: its wrong answers on training items become
identify / correct / confirm conversations with the wrong answer shown and never trained, a lineage
sidecar names the adapter, evaluation splits are refused, and the file is a data source like any other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.data.mapping import to_conversation
from expertkit.data.render import ConversationRenderer, supervised_spans
from expertkit.eval.evaluate import evaluate
from expertkit.eval.sets import load_set
from expertkit.models.fingerprint import sha256_file
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions

_register()


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def task_set(expert: Path, tmp_path: Path) -> Path:
    """Six training items: the first three with the expert's own (greedy) answer as gold, so it gets
    them right; the last three with a gold it cannot produce."""
    prompts = [f"What is {n} plus {n}? Say it as SQL please." for n in range(6)]
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "x"}], "split": "train",
             "bucket": "sums"} for p in prompts]  # fmt: skip
    draft = tmp_path / "draft.jsonl"
    draft.write_text("".join(json.dumps(r) + "\n" for r in rows))
    engine = Engine.for_experts([str(expert)], LoadOptions(dtype="float32"))
    answers = evaluate(engine, "expert-tiny", load_set(draft, "jsonl", None), batch=1)
    for row, answer, n in zip(rows, answers.items, range(6), strict=True):
        row["messages"][1]["content"] = answer.text if n < 3 else f"SELECT {n} + {n} AS unreachable_{n};"
    path = tmp_path / "train-items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_spar_writes_the_three_kinds_with_lineage(expert_dir: Path, tmp_path: Path) -> None:
    items = task_set(expert_dir, tmp_path)
    out = tmp_path / "spar.jsonl"
    args = ["spar", "--expert", str(expert_dir), "--set", str(items), "--format", "jsonl", "--out", str(out)]
    result = invoke(*args, "--dtype", "float32", "--batch", "1", "--with-reason", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["tried"], summary["wrong"]) == (6, 3)
    assert summary["written"] == {"identify": 3, "correct": 3, "confirm": 3}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["identify", "correct", "confirm"] * 3
    identify, correct, confirm = records[:3]
    wrong = identify["messages"][1]
    assert wrong["role"] == "assistant" and wrong["train"] is False and "unreachable" not in wrong["content"]
    assert identify["messages"][2:] == [
        {"role": "user", "content": "Is this correct?"},
        {"role": "assistant", "content": identify["messages"][3]["content"]},
    ] and identify["messages"][3]["content"].startswith("It is incorrect: ")  # --with-reason
    assert correct["messages"][1] == wrong and correct["messages"][2]["content"] == "Find the correct solution."
    assert correct["messages"][3] == {"role": "assistant", "content": "SELECT 3 + 3 AS unreachable_3;"}
    assert confirm["messages"][1]["train"] is False and confirm["messages"][3]["content"] == "It is correct."
    assert confirm["item"] in {"jsonl-0", "jsonl-1", "jsonl-2"}
    lineage = json.loads((tmp_path / "spar.lineage.json").read_text())
    adapter = next((expert_dir / "weights").iterdir()) / "adapter" / "adapter_model.safetensors"
    assert lineage["generator"] == "sparring" and lineage["version"] == 1 and lineage["split"] == "train"
    assert lineage["adapter_sha256"] == sha256_file(adapter) and lineage["checkpoint"]["step"] is not None
    assert lineage["counts"] == {"tried": 6, "wrong": 3, "written": {"identify": 3, "correct": 3, "confirm": 3}}
    assert sum(lineage["failure_reasons"].values()) == 3 and lineage["parameters"]["with_reason"] is True


def test_sparring_data_trains_the_verdicts_never_the_wrong_answers(expert_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    items = task_set(expert_dir, tmp_path)
    out = tmp_path / "spar.jsonl"
    args = ["spar", "--expert", str(expert_dir), "--set", str(items), "--format", "jsonl", "--out", str(out)]
    assert invoke(*args, "--dtype", "float32", "--kinds", "identify,correct").exit_code == 0
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(manifest["base_models"][0]["name"])
    renderer = ConversationRenderer(tokenizer)
    for line in out.read_text().splitlines():
        record = json.loads(line)
        example = renderer.render(to_conversation(record, None))
        spans = [tokenizer.decode(example.input_ids[a:b]) for a, b in supervised_spans(example.labels)]
        assert len(spans) == 1 and record["messages"][1]["content"] not in spans[0]
        assert spans[0].startswith(record["messages"][3]["content"])
    manifest["training"]["dataset"] = {
        "path": str(out),
        "split": {"eval_size": 1},
        "checks": {"min_supervised_ratio": 0.01},
    }
    manifest["training"]["config"]["max_seq_length"] = 512  # the task, the wrong answer and the verdict
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    prepared = invoke("data", "prepare", "--expert", str(expert_dir))  # the five validators pass on it
    assert prepared.exit_code == 0, prepared.output


def test_evaluation_splits_and_unknown_kinds_are_refused(expert_dir: Path, tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "split": "test"}
    items.write_text(json.dumps(row) + "\n")
    base = ["spar", "--expert", str(expert_dir), "--set", str(items), "--format", "jsonl"]
    test = invoke(*base, "--split", "test")
    assert test.exit_code == 2 and "sparring runs on training-side items only" in test.stderr
    none = invoke(*base)  # the set has only test items: nothing of split train
    assert none.exit_code == 2 and "no evaluation items in split 'train'" in " ".join(none.stderr.split())
    kinds = invoke(*base, "--kinds", "identify,praise")
    assert kinds.exit_code == 2 and "unknown sparring kinds: praise" in kinds.stderr
    assert not (expert_dir / "sparring").exists()


def test_a_spar_job_runs_at_high_priority_by_default(expert_dir: Path, tmp_path: Path) -> None:
    queue = f"sqlite:///{tmp_path / 'q.db'}"
    made = invoke("jobs", "submit", "spar", "--expert", str(expert_dir), "--queue", queue, "--json", "--limit", "4")
    assert made.exit_code == 0, made.output
    job = json.loads(made.stdout)
    assert job["kind"] == "spar" and job["level"] == "high" and job["options"] == ["--limit", "4"]
    other = json.loads(invoke("jobs", "submit", "eval", "--expert", str(expert_dir), "--queue", queue, "--json").stdout)
    assert other["level"] == "normal"


def test_each_correct_answer_confirms_once_and_reasons_are_grouped() -> None:
    from expertkit.eval.evaluate import ItemResult
    from expertkit.eval.sets import EvalItem
    from expertkit.workflows.spar import SparringSettings, _reason, sparring_examples

    def pair(n: int, correct: bool, reason: str) -> tuple[EvalItem, ItemResult]:
        item = EvalItem(f"i{n}", [{"role": "user", "content": f"q{n}"}], f"gold{n}", "b", "sql", split="train")
        return item, ItemResult(f"i{n}", "b", correct, True, True, 0.1, 3, f"answer{n}", reason)

    pairs = [pair(0, False, "different result (1 rows, gold 2)"), pair(1, True, "same result"),
             pair(2, False, "prediction fails: no such column: x"), pair(3, False, "different result (0 rows, gold 1)")]  # fmt: skip
    records = sparring_examples(pairs, SparringSettings(), "geo")
    assert [r["kind"] for r in records] == [
        "identify",
        "correct",
        "confirm",
        "identify",
        "correct",
        "identify",
        "correct",
    ]
    assert [r["item"] for r in records if r["kind"] == "confirm"] == ["i1"]  # one correct item: one confirm
    assert sorted(_reason(r) for _, r in pairs if not r.correct) == [
        "different result",
        "different result",
        "prediction fails",
    ]
    only = sparring_examples(pairs, SparringSettings(kinds=("correct",)), "geo")
    assert [r["messages"][-1]["content"] for r in only] == ["gold0", "gold2", "gold3"]
