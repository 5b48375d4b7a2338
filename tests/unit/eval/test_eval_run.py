"""``expert-cli eval`` end to end on the tiny expert: a JSONL set, a SQL set on a real SQLite
database, the baseline under the expert's contract, the result file, the JSON line."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

from typer.testing import CliRunner

from expertkit.cli.app import _register, app
from expertkit.eval.evaluate import compare, evaluate
from expertkit.eval.sets import EvalItem
from expertkit.events import read_events
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions

_register()


def sql_items(tmp_path: Path) -> list[EvalItem]:
    database = tmp_path / "t.sqlite"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (a INTEGER)")
        db.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    messages = [{"role": "user", "content": "How many rows are in t?"}]
    return [
        EvalItem(f"q{i}", messages, "SELECT count(*) FROM t", "easy" if i % 2 else "hard", "sql", database)
        for i in range(4)
    ]


def test_evaluate_scores_buckets_and_compares(trained_source: Path, tmp_path: Path) -> None:
    engine = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32"))
    items = sql_items(tmp_path)
    report = evaluate(engine, "expert-tiny", items)
    summary = report.summary()
    assert summary.metric == "execution_accuracy" and summary.n == 4
    assert set(summary.buckets) == {"easy", "hard"} and 0 <= summary.score <= 1
    assert all(r.reason.startswith(("same result", "different result", "prediction fails")) for r in report.items)
    again = evaluate(engine, "expert-tiny", items)
    assert [r.text for r in again.items] == [r.text for r in report.items]  # greedy + seeded: reproducible
    baseline = evaluate(engine, None, items, contract=engine.experts["expert-tiny"].files)
    result = compare(report, baseline)
    assert result.delta == round(result.expert.score - result.baseline.score, 4)
    assert result.ci95[0] <= result.delta <= result.ci95[1]
    written = result.to_json()
    assert written["delta"] == result.delta and written["expert_summary"]["ci95"] == list(summary.ci95)
    assert set(written["buckets"]) == {"easy", "hard"} and written["baseline_summary"]["n"] == 4


def test_batched_evaluation_answers_as_one_at_a_time_in_item_order(trained_source: Path, tmp_path: Path) -> None:
    """``--batch`` decodes items together; in fp32 each answer is the one decoded alone, in item order."""
    engine = Engine.for_experts([str(trained_source)], LoadOptions(dtype="float32"))
    questions = ["How many rows are in t?", "Count t", "What is in t?", "a", "Sum of a in t, please", "rows?"]
    items = [
        replace(item, id=f"q{i}", messages=[{"role": "user", "content": q}])
        for i, (item, q) in enumerate(zip(sql_items(tmp_path) * 2, questions, strict=False))
    ]
    one = evaluate(engine, "expert-tiny", items, batch=1)
    seen: list[str] = []
    together = evaluate(engine, "expert-tiny", items, batch=4, on_item=lambda r: seen.append(r.id))
    assert [r.id for r in together.items] == [f"q{i}" for i in range(6)]
    assert [(r.text, r.correct, r.stopped, r.tokens) for r in together.items] == [
        (r.text, r.correct, r.stopped, r.tokens) for r in one.items
    ]
    assert sorted(seen) == sorted(r.id for r in items)  # progress as each item finishes
    assert (together.summary().throughput_tokens_per_s or 0) > 0
    base = evaluate(engine, None, items, contract=engine.experts["expert-tiny"].files, batch=3)
    alone = evaluate(engine, None, items, contract=engine.experts["expert-tiny"].files, batch=1)
    assert [r.text for r in base.items] == [r.text for r in alone.items]


def test_eval_cli_jsonl_set_writes_the_result(expert_dir: Path, tmp_path: Path) -> None:
    rows = [
        {
            "messages": [{"role": "user", "content": f"Say {n}"}, {"role": "assistant", "content": str(n)}],
            "bucket": "digits",
        }
        for n in range(3)
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = [
        "eval",
        "--expert",
        str(expert_dir),
        "--set",
        str(path),
        "--format",
        "jsonl",
        "--json",
        "--dtype",
        "float32",
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"metric", "expert", "baseline", "delta", "ci95", "n", "buckets"} <= set(body)
    assert body["n"] == 3 and set(body["buckets"]) == {"digits"}
    written = Path(body["written"])
    assert written == next((expert_dir / "weights").iterdir()) / "eval" / "set.json"
    assert len(json.loads(written.read_text())["items"]) == 3
    events = read_events(written.parent / "set.events.jsonl")  # each item as it was judged, both systems
    assert events[0] == {
        **events[0],
        "event": "start",
        "set": "set",
        "items": 3,
        "systems": ["expert-tiny", "baseline"],
    }
    items = [e for e in events if e["event"] == "item"]
    assert sorted((e["system"], e["id"]) for e in items) == sorted(
        (system, r["id"]) for system in ("expert-tiny", "baseline") for r in json.loads(written.read_text())["items"]
    )
    assert all({"correct", "text", "latency_s", "tokens", "reason"} <= set(e) for e in items)
    assert events[-1]["event"] == "end" and events[-1]["written"] == str(written)
    bad = CliRunner().invoke(app, ["eval", "--expert", str(expert_dir), "--set", str(path)], catch_exceptions=False)
    assert bad.exit_code == 2 and "--set needs --format" in bad.stderr
    assert json.loads(written.read_text())["decoder"] == {
        "dtype": "float32",
        "quantize": "none",
        "quantize_source": "default",
        "kind": "lean",
        "kind_source": "default",
    }
    quantized = CliRunner().invoke(app, [*args, "--quantize", "int8", "--baseline", "none"], catch_exceptions=False)
    assert quantized.exit_code == 0, quantized.output
    aside = Path(json.loads(quantized.stdout.strip().splitlines()[-1])["written"])
    assert aside == written.parent / "set.quantize-int8.json"  # never over the result the gate reads
    assert json.loads(aside.read_text())["decoder"]["quantize"] == "int8"
    assert json.loads(written.read_text())["decoder"]["quantize"] == "none"


def digit_rows(count: int, split: str = "test") -> str:
    rows = [
        {
            "messages": [{"role": "user", "content": f"Say {n}"}, {"role": "assistant", "content": str(n)}],
            "bucket": "digits",
            "split": split,
        }
        for n in range(count)
    ]
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def test_eval_runs_every_manifest_set_with_its_split_and_limit(expert_dir: Path, tmp_path: Path) -> None:
    (expert_dir / "a.jsonl").write_text(digit_rows(3) + digit_rows(2, "train"))
    (expert_dir / "b.jsonl").write_text(digit_rows(4))
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    manifest["evaluation"] = {
        "sets": [
            {"name": "first", "path": "a.jsonl", "format": "jsonl", "split": "train"},
            {"name": "second", "path": "b.jsonl", "format": "jsonl", "limit": 2},
        ]
    }
    (expert_dir / "manifest.json").write_text(json.dumps(manifest))
    args = ["eval", "--expert", str(expert_dir), "--json", "--dtype", "float32", "--baseline", "none"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [(r["set"], r["n"]) for r in lines] == [("first", 2), ("second", 2)]
    weights = next((expert_dir / "weights").iterdir())
    assert sorted(p.name for p in (weights / "eval").iterdir()) == [
        "first.events.jsonl",
        "first.json",
        "second.events.jsonl",
        "second.json",
    ]
    adapter = json.loads((weights / "eval" / "first.json").read_text())["adapter_sha256"]
    from expertkit.models.fingerprint import sha256_file

    assert adapter == sha256_file(weights / "adapter" / "adapter_model.safetensors")


def test_base_only_eval_needs_no_weights(tmp_path: Path, tiny_llama_dir: Path, monkeypatch) -> None:
    from unit.train.helpers import write_tiny_expert

    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    expert = write_tiny_expert(tmp_path / "untrained", [tiny_llama_dir])  # never trained: no weights/
    (expert / "set.jsonl").write_text(digit_rows(3))
    args = ["eval", "--expert", str(expert), "--set", str(expert / "set.jsonl"), "--format", "jsonl", "--base-only"]
    result = CliRunner().invoke(app, [*args, "--json", "--dtype", "float32"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["metric"] == "exact_match" and body["n"] == 3 and "expert" not in body and 0 <= body["base"] <= 1
    assert Path(body["written"]) == tmp_path / "home" / "evals" / "expert-tiny" / "base" / "set.json"
    ids = [row["id"] for row in json.loads(Path(body["written"]).read_text())["items"]]
    sampled = CliRunner().invoke(app, [*args, "--json", "--dtype", "float32", "--sample", "2"], catch_exceptions=False)
    again = [row["id"] for row in json.loads(Path(body["written"]).read_text())["items"]]
    assert sampled.exit_code == 0 and len(again) == 2 and set(again) < set(ids)
    assert not (expert / "weights").exists()
    table = CliRunner().invoke(app, [*args, "--dtype", "float32"], catch_exceptions=False)
    assert table.exit_code == 0 and "base model, expert's contract" in table.stdout


def test_one_bucket_is_not_shown_twice(tmp_path: Path) -> None:
    from expertkit.cli.app import out_console
    from expertkit.cli.eval_cmd import _print_result
    from expertkit.eval.job import EvalResult

    body = {
        "set": "held-out", "n": 30, "expert": 0.5, "baseline": 0.1, "delta": 0.4, "ci95": [0.2, 0.6],
        "buckets": {"all": {"n": 30, "expert": 0.5, "baseline": 0.1}},
        "expert_summary": {"metric": "exact_match", "score": 0.5},
    }  # fmt: skip
    with out_console.capture() as one:
        _print_result(EvalResult.from_body("compared", body, tmp_path / "r.json"))
    assert one.get().count("│ all") == 1 and "delta +40.0%" in one.get()
    body["buckets"] = {"easy": {"n": 10, "expert": 0.9, "baseline": 0.2}, "hard": {"n": 20, "expert": 0.3}}
    with out_console.capture() as two:
        _print_result(EvalResult.from_body("compared", body, tmp_path / "r.json"))
    assert "│ easy" in two.get() and "│ hard" in two.get() and two.get().count("│ all") == 1
