"""The whole pipeline on a tiny model: bad-record policy, split, mix, preprocessing, cache, lineage."""

from __future__ import annotations

import json

import pytest

from expertkit.data import prepare as prepare_module
from expertkit.data.expert_data import prepare_expert_data
from expertkit.data.lineage import META_FILE
from expertkit.errors import DataError

from .helpers import qa_record, write_expert, write_jsonl

BAD_LINES = {17: "{broken", 230: {"messages": "nope"}, 499: {"other": 1},
             731: {"messages": [{"role": "user", "content": "no answer"}]},
             998: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}}  # fmt: skip


def _thousand_with_five_bad(path):
    records = [BAD_LINES.get(n, qa_record(n)) for n in range(1, 1001)]
    return write_jsonl(path, records)


def _dataset(**extra):
    # tiny QA turns: the template's default system prompt outweighs the answers, hence the low floor
    return {
        "path": "data.jsonl",
        "split": {"eval_size": 0.1, "seed": 0},
        "checks": {"min_supervised_ratio": 0.05},
        **extra,
    }


def test_five_bad_lines_fail_names_all_and_prepares_nothing(tmp_path, tiny_llama_dir, expertkit_home):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, _dataset())
    _thousand_with_five_bad(expert / "data.jsonl")
    with pytest.raises(DataError) as info:
        prepare_expert_data(expert)
    message = info.value.message
    assert message.startswith("5 bad records; nothing was prepared")
    for line in BAD_LINES:
        assert f"data.jsonl:{line}:" in message
    assert "invalid JSON" in message and "no assistant turn" in message and "empty" in message
    cache = expertkit_home / "cache" / "data"
    assert not cache.exists() or not any(p for p in cache.iterdir() if not p.name.startswith("."))


def test_five_bad_lines_skip_keeps_995_and_counts(tmp_path, tiny_llama_dir):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, _dataset(on_error="skip"))
    _thousand_with_five_bad(expert / "data.jsonl")
    prepared, _ = prepare_expert_data(expert)
    steps = prepared.meta["steps"]
    assert steps["records_read"] == 1000
    assert steps["bad_records"]["count"] == 5
    assert [loc.split(":")[1] for loc in steps["bad_records"]["locations"]] == [str(n) for n in BAD_LINES]
    assert steps["split"]["train"] + steps["split"]["eval"] == 995
    assert len(prepared.load("examples")) == 995


def test_eval_never_in_train_even_with_duplicates(tmp_path, tiny_llama_dir):
    records = [qa_record(n % 40) for n in range(200)]  # every example five times
    expert = write_expert(tmp_path / "e", tiny_llama_dir, _dataset(split={"eval_size": 0.2, "seed": 3}))
    write_jsonl(expert / "data.jsonl", records)
    prepared, _ = prepare_expert_data(expert)
    examples = prepared.load("examples")
    train_ids = {i for row in prepared.load("train") for i in row["example_ids"]}
    eval_ids = {i for row in prepared.load("eval") for i in row["example_ids"]}
    assert len(eval_ids) >= 40 and not train_ids & eval_ids
    train_hashes = {examples[i]["hash"] for i in train_ids}
    assert not train_hashes & {examples[i]["hash"] for i in eval_ids}


def test_mix_is_deterministic_and_follows_weights(tmp_path, tiny_llama_dir):
    dataset = {
        "datasets": [
            {"name": "a", "path": "a.jsonl", "weight": 2.0},
            {"name": "b", "path": "b.jsonl", "weight": 0.5},
        ],
        "split": {"eval_size": 2, "seed": 0},
        "checks": {"min_supervised_ratio": 0.05},
    }
    expert = write_expert(tmp_path / "e", tiny_llama_dir, dataset)
    write_jsonl(expert / "a.jsonl", [qa_record(n) for n in range(20)])
    write_jsonl(expert / "b.jsonl", [qa_record(n) for n in range(100, 140)])
    first, _ = prepare_expert_data(expert)
    again, _ = prepare_expert_data(expert, force=True)
    mix = first.meta["steps"]["mix"]
    assert mix == again.meta["steps"]["mix"]
    split_train = first.meta["steps"]["split"]["train"]
    assert sum(mix["counts"].values()) == mix["counts"]["a"] + mix["counts"]["b"]
    assert mix["counts"]["a"] in (36, 38, 40) and mix["counts"]["b"] in (19, 20)
    assert split_train == 58
    assert [r["example_ids"] for r in first.load("train")] == [r["example_ids"] for r in again.load("train")]


def test_a_source_with_a_share_is_that_fraction_of_the_mix_whatever_its_size(tmp_path, tiny_llama_dir):
    """General text replayed at 10 %: a 5-record source is drawn (with repeats) to a tenth of the mix,
    the weighted sources are as without it, and a mix of shares only is refused."""
    dataset = {
        "datasets": [
            {"name": "task", "path": "task.jsonl", "weight": 2.0},
            {"name": "general", "path": "general.jsonl", "share": 0.1},
        ],
        "split": {"eval_size": 2, "seed": 0},
        "checks": {"min_supervised_ratio": 0.05},
    }
    expert = write_expert(tmp_path / "e", tiny_llama_dir, dataset)
    write_jsonl(expert / "task.jsonl", [qa_record(n) for n in range(40)])
    write_jsonl(expert / "general.jsonl", [qa_record(n) for n in range(500, 505)])
    prepared, _ = prepare_expert_data(expert)
    counts = prepared.meta["steps"]["mix"]["counts"]
    task = counts["task"]
    assert task in (74, 76, 78, 80) and counts["general"] == round(0.1 / 0.9 * task)
    assert {s["name"]: s.get("share") for s in prepared.meta["sources"]} == {"task": None, "general": 0.1}

    dataset["datasets"] = [{"name": "general", "path": "general.jsonl", "share": 0.1}]
    alone = write_expert(tmp_path / "alone", tiny_llama_dir, dataset)
    write_jsonl(alone / "general.jsonl", [qa_record(n) for n in range(500, 505)])
    with pytest.raises(DataError, match="every source of this mix has a share"):
        prepare_expert_data(alone)


def test_empty_source_is_an_error(tmp_path, tiny_llama_dir):
    dataset = {"datasets": [{"name": "a", "path": "a.jsonl"}, {"name": "b", "path": "b.jsonl"}], "on_error": "skip"}
    expert = write_expert(tmp_path / "e", tiny_llama_dir, dataset)
    write_jsonl(expert / "a.jsonl", [qa_record(n) for n in range(20)])
    (expert / "b.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"'b\.jsonl' has no usable examples"):
        prepare_expert_data(expert)


def test_preprocessing_steps_are_counted(tmp_path, tiny_llama_dir):
    records = [qa_record(n) for n in range(30)] + [qa_record(1), qa_record(2)]  # two exact duplicates
    near = qa_record(5)
    near["messages"][0]["content"] += "  "  # differs only in whitespace: equal after normalisation
    long_one = {"messages": [{"role": "user", "content": "SELECT " * 300}, {"role": "assistant", "content": "ok"}]}
    expert = write_expert(tmp_path / "e", tiny_llama_dir, _dataset(
        preprocessing={"normalize_whitespace": True, "dedup": True, "max_tokens": 400}))  # fmt: skip
    write_jsonl(expert / "data.jsonl", [*records, near, long_one])
    prepared, _ = prepare_expert_data(expert, enforce=False)
    steps = prepared.meta["steps"]
    assert steps["dedup_removed"] == 3
    assert steps["length"]["too_long"] == 1
    assert steps["split"]["train"] + steps["split"]["eval"] == 30


def test_overflow_truncates_the_prompt_or_drops(tmp_path, tiny_llama_dir):
    long_prompt = {
        "messages": [{"role": "user", "content": "age " * 200}, {"role": "assistant", "content": "SELECT 1;"}]
    }
    records = [qa_record(n) for n in range(10)] + [long_prompt]
    for overflow, key in (("drop", "overflow"), ("truncate_prompt", "truncated")):
        expert = write_expert(tmp_path / overflow, tiny_llama_dir, _dataset(overflow=overflow))
        write_jsonl(expert / "data.jsonl", records)
        prepared, _ = prepare_expert_data(expert, enforce=False)
        assert prepared.meta["steps"]["length"][key] == 1
        assert max(len(r["input_ids"]) for r in prepared.load("examples")) <= 128


def test_near_dedup_and_hook(tmp_path, tiny_llama_dir):
    hook = "def preprocess(records, manifest_dir):\n    for r in records:\n        if r['n'] != 3:\n            yield {'prompt': f\"What is {r['n']} squared please tell me now\", 'completion': 'SELECT 1;'}\n"
    expert = write_expert(tmp_path / "e", tiny_llama_dir, _dataset(
        preprocessing={"hook": "hook.py", "near_dedup": {"threshold": 0.5}}))  # fmt: skip
    (expert / "hook.py").write_text(hook, encoding="utf-8")
    write_jsonl(expert / "data.jsonl", [{"n": n} for n in range(10)])
    prepared, _ = prepare_expert_data(expert, enforce=False)
    steps = prepared.meta["steps"]
    assert steps["records_read"] == 10 and steps["after_hook"] == 9
    assert steps["near_dedup_removed"] > 0
    assert prepared.meta["hook"]["sha256"] and prepared.meta["hook"]["path"].endswith("hook.py")


def test_hook_failure_is_a_bad_record_with_location(tmp_path, tiny_llama_dir):
    hook = "def preprocess(records, manifest_dir):\n    for r in records:\n        yield {'prompt': 'p', 'completion': 'c', 'x': 1 / r['n']}\n"
    expert = write_expert(tmp_path / "e", tiny_llama_dir, _dataset(preprocessing={"hook": "hook.py"}))
    (expert / "hook.py").write_text(hook, encoding="utf-8")
    write_jsonl(expert / "data.jsonl", [{"n": n} for n in (1, 0, 2)])
    with pytest.raises(DataError, match=r"data\.jsonl:2: preprocessing hook hook\.py failed: division by zero"):
        prepare_expert_data(expert)


def test_second_prepare_hits_the_cache_without_tokenising(tmp_path, tiny_llama_dir, monkeypatch):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, _dataset(), {"max_seq_length": 512})
    write_jsonl(expert / "data.jsonl", [qa_record(n) for n in range(50)])
    first, _ = prepare_expert_data(expert)
    assert not first.cached
    monkeypatch.setattr(prepare_module, "_build", lambda *a, **k: pytest.fail("re-tokenised"))
    second, _ = prepare_expert_data(expert)
    assert second.cached and second.directory == first.directory
    meta = json.loads((first.directory / META_FILE).read_text(encoding="utf-8"))
    assert meta["sources"][0]["sha256"] and meta["tokenizer"]["chat_template_sha256"]
    packing = meta["packing"]["train"]
    assert packing["efficiency"] == round(packing["real_tokens"] / (packing["rows"] * 512), 6)
    assert packing["rows"] < packing["examples"]
    write_jsonl(expert / "data.jsonl", [qa_record(n) for n in range(51)])  # new content, new key
    with pytest.raises(pytest.fail.Exception, match="re-tokenised"):
        prepare_expert_data(expert)


def test_failed_validator_blocks_unless_skipped(tmp_path, tiny_llama_dir):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, _dataset(checks={"min_supervised_ratio": 0.9}))
    write_jsonl(expert / "data.jsonl", [qa_record(n) for n in range(20)])
    with pytest.raises(DataError, match=r"supervised_ratio: .* outside the band"):
        prepare_expert_data(expert)
    expert = write_expert(tmp_path / "e2", tiny_llama_dir,
                          _dataset(checks={"min_supervised_ratio": 0.9, "skip": ["supervised_ratio"]}))  # fmt: skip
    write_jsonl(expert / "data.jsonl", [qa_record(n) for n in range(20)])
    prepared, _ = prepare_expert_data(expert)
    assert [c["overridden"] for c in prepared.meta["validators"] if c["name"] == "supervised_ratio"] == [True]


def test_augmentation_is_refused_not_silently_ignored(tmp_path, tiny_llama_dir):
    expert = write_expert(tmp_path / "e", tiny_llama_dir, _dataset(augmentation={"table_aliases": True}))
    write_jsonl(expert / "data.jsonl", [qa_record(n) for n in range(5)])
    with pytest.raises(DataError, match="augmentation is accepted by the schema but not applied"):
        prepare_expert_data(expert)
