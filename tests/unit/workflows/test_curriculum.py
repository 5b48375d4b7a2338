"""Curriculum training (``training.phases``): data per phase with replay, phases in order from the
previous adapter, the gate after each phase stopping the run, resume skipping finished phases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from expertkit.data.replay import Replay, replay_count, replay_mix
from expertkit.errors import DataError
from expertkit.manifest.validate import validate_manifest
from expertkit.train.job import TrainRequest
from expertkit.train.phases import GateFailedError, read_ledger
from expertkit.workflows.curriculum import train_with_gates
from unit.train.helpers import qa_records, write_tiny_expert


def test_replay_share_and_draws() -> None:
    assert replay_count(0.2, 80) == 20 and replay_count(0.0, 80) == 0
    groups = {"a": list(range(10)), "b": list(range(10, 14)), "c": list(range(100, 180))}
    replay = Replay(0.2, {"p1": ["a"], "p2": ["b"]})
    mixed, counts = replay_mix(replay, groups, groups["c"], seed=0)
    assert counts == {"replay:p1": 10, "replay:p2": 10}  # 20 replayed, split evenly
    replayed = [i for i in mixed if i < 100]
    assert len(mixed) == 100 and sorted(i for i in replayed if i < 10) == list(range(10))
    assert sorted(set(i for i in replayed if i >= 10)) == [10, 11, 12, 13]  # b repeats whole: 4 < 10
    assert replay_mix(replay, groups, groups["c"], seed=0) == (mixed, counts)  # deterministic


def phased_expert(directory: Path, model: Path, gate_min: float, replay: float = 0.25) -> Path:
    write_tiny_expert(directory, [model])
    for name, numbers in (("first.jsonl", range(0, 24)), ("second.jsonl", range(24, 48))):
        rows = [r for r in qa_records(48) if int(r["messages"][1]["content"].split()[1]) in numbers]
        (directory / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (directory / "eval.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "Say 1"}, {"role": "assistant", "content": "1"}]}) + "\n"
    )
    manifest = json.loads((directory / "manifest.json").read_text())
    dataset = manifest["training"]["dataset"]
    del dataset["path"]
    dataset["datasets"] = [
        {"name": "first", "path": "first.jsonl", "format": "jsonl"},
        {"name": "second", "path": "second.jsonl", "format": "jsonl"},
    ]
    dataset["split"] = {"eval_size": 4}
    manifest["training"]["phases"] = [
        {"name": "basics", "datasets": ["first"], "learning_rate": 0.005, "max_steps": 3},
        {
            "name": "advanced",
            "datasets": ["second"],
            "learning_rate": 0.002,
            "max_steps": 2,
            "replay": replay,
            "warmup_steps": 0,
        },
    ]
    manifest["evaluation"] = {
        "sets": [{"name": "say", "path": "eval.jsonl", "format": "jsonl"}],
        "thresholds": {"exact_match": {"min": gate_min}},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_phase_data_holds_its_sources_and_replay(tmp_path: Path, tiny_llama_dir: Path, monkeypatch: Any) -> None:
    from expertkit.data.expert_data import prepare_expert_data

    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    expert = phased_expert(tmp_path / "expert", tiny_llama_dir, 0.0)
    first, _ = prepare_expert_data(expert, phase="basics")
    second, _ = prepare_expert_data(expert, phase="advanced")
    assert first.meta["steps"]["mix"]["counts"] == {"first": first.meta["steps"]["split"]["train"]}
    counts = second.meta["steps"]["mix"]["counts"]
    own = counts["second"]
    assert set(counts) == {"second", "replay:basics"} and counts["replay:basics"] == round(0.25 / 0.75 * own)
    with pytest.raises(DataError, match="no training phase named 'nope'"):
        prepare_expert_data(expert, phase="nope")


def test_phases_train_in_order_from_the_previous_adapter(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    expert = phased_expert(tmp_path / "expert", tiny_llama_dir, 0.0)
    result = train_with_gates(TrainRequest(expert, progress=False))
    assert [p.phase.name for p in result.phases] == ["basics", "advanced"]
    weights = result.phases[0].weights_dir
    ledger = read_ledger(weights)
    assert [(r.name, r.steps, r.gate.passed) for r in ledger] == [
        ("basics", 3, True),
        ("advanced", 2, True),
    ]
    assert set(result.evaluations) == {"basics", "advanced"}
    first = load_file(str(weights / "phases/01-basics/adapter/adapter_model.safetensors"))
    final = load_file(str(weights / "adapter/adapter_model.safetensors"))
    assert final.keys() == first.keys() and any(not (final[k] == first[k]).all() for k in final)
    assert not (weights / "checkpoints").exists()  # finished phases live in their snapshots
    meta = json.loads((weights / "training_meta.json").read_text())
    assert meta["phase"] == {"name": "advanced", "init_from": str(weights / "phases/01-basics")}
    assert meta["plan"]["learning_rate"] == 0.002 and meta["plan"]["max_steps"] == 2
    assert meta["plan"]["warmup_steps"] == 0  # the second phase goes on at its full rate, no warm-up again
    # resume: both phases finished on the same manifest, nothing is trained again
    again = train_with_gates(TrainRequest(expert, progress=False, resume=True))
    assert again.phases == [] and again.final is None
    # only the first finished: resume trains the second, from the first's snapshot
    from expertkit.train.phases import write_ledger

    write_ledger(weights, ledger[:1])
    resumed = train_with_gates(TrainRequest(expert, progress=False, resume=True))
    assert [p.phase.name for p in resumed.phases] == ["advanced"]
    phase = resumed.phases[0].meta.phase
    assert phase is not None and phase.init_from == str(weights / "phases/01-basics")


def test_a_failed_gate_stops_the_curriculum(tmp_path: Path, tiny_llama_dir: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    expert = phased_expert(tmp_path / "expert", tiny_llama_dir, 1.01)  # no score reaches 101 %
    with pytest.raises(GateFailedError, match=r"phase 1 \(basics\) missed the evaluation gate") as caught:
        train_with_gates(TrainRequest(expert, progress=False))
    assert "say: exact_match: 0.0000 is below the minimum 1.0100" in str(caught.value)
    weights = next((expert / "weights").iterdir())
    assert [r.name for r in read_ledger(weights)] == ["basics"]
    assert not (weights / "phases/02-advanced").exists()


def test_phase_manifest_problems_are_named(tmp_path: Path, tiny_llama_dir: Path) -> None:
    expert = phased_expert(tmp_path / "expert", tiny_llama_dir, 0.0)
    manifest = json.loads((expert / "manifest.json").read_text())
    manifest["training"]["phases"][0].update(replay=0.1, datasets=["first", "thrid"])
    manifest["training"]["phases"][1]["name"] = "basics"
    del manifest["evaluation"]
    (expert / "manifest.json").write_text(json.dumps(manifest))
    report, _ = validate_manifest(expert)
    found = {(p.path, p.message) for p in report.problems}
    assert ("$.training.phases[0].datasets[1]", "no dataset source has this name") in found
    assert ("$.training.phases[0].replay", "the first phase has no earlier phase to replay") in found
    assert ("$.training.phases[1].name", "phase names repeat") in found
    assert ("$.training.phases[0].gate", "the gate needs evaluation.sets and evaluation.thresholds") in found


def test_train_cli_runs_the_curriculum(tmp_path: Path, tiny_llama_dir: Path, monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from expertkit.cli.app import _register, app

    _register()
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    passing = phased_expert(tmp_path / "passing", tiny_llama_dir, 0.0)
    result = CliRunner().invoke(app, ["train", "--manifest", str(passing), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [p["name"] for p in body["phases"]] == ["basics", "advanced"] and body["final"]["phase"][
        "name"
    ] == "advanced"
    assert set(body["evaluations"]) == {"basics", "advanced"}
    failing = phased_expert(tmp_path / "failing", tiny_llama_dir, 1.01)
    result = CliRunner().invoke(app, ["train", "--manifest", str(failing)], catch_exceptions=False)
    assert result.exit_code == 1 and "phase 1 (basics) missed the evaluation gate" in result.stderr
    assert "Traceback" not in result.output


def sparring_expert(directory: Path, model: Path) -> Path:
    """Two phases; before the second, the first's adapter spars on the set's training items and the
    second phase trains on its mistakes (with replay of the first)."""
    phased_expert(directory, model, 0.0)
    items = [{"messages": [{"role": "user", "content": f"What is {n} plus {n}? Say it as SQL please."},
                           {"role": "assistant", "content": f"SELECT {n} + {n} AS never_{n};"}], "split": "train"}
             for n in range(8)]  # fmt: skip
    (directory / "train-items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["training"]["config"]["max_seq_length"] = 512
    manifest["training"]["dataset"]["datasets"].append({"name": "sparring", "path": "sparring/round1.jsonl"})
    manifest["evaluation"]["sets"].append({"name": "sums", "path": "train-items.jsonl", "format": "jsonl"})
    second = manifest["training"]["phases"][1]
    second.update(datasets=["sparring"], spar={"into": "sparring", "set": "sums", "kinds": ["identify", "correct"]})
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_a_phase_spars_with_the_previous_adapter_and_trains_on_its_mistakes(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    expert = sparring_expert(tmp_path / "expert", tiny_llama_dir)
    report, _ = validate_manifest(expert)  # the sparring file does not exist yet: that is not a problem
    assert report.ok, [p.message for p in report.problems]
    result = train_with_gates(TrainRequest(expert, progress=False))
    assert [p.phase.name for p in result.phases] == ["basics", "advanced"]
    lineage = json.loads((expert / "sparring" / "round1.lineage.json").read_text())
    basics = result.phases[0].weights_dir / "phases/01-basics/adapter/adapter_model.safetensors"
    from expertkit.models.fingerprint import sha256_file

    assert lineage["adapter_sha256"] == sha256_file(basics)  # the mistakes of the phase before
    assert lineage["counts"]["tried"] == 8 and lineage["counts"]["wrong"] == 8  # nobody writes "AS never_n"
    rows = [json.loads(line) for line in (expert / "sparring" / "round1.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(r["messages"][1]["train"] is False for r in rows)
    meta = json.loads((result.phases[1].weights_dir / "training_meta.json").read_text())
    assert meta["phase"]["name"] == "advanced"
    data = json.loads(
        next((tmp_path / "home/cache/data").glob(f"{meta['data']['lineage_hash']}*/dataset.meta.json")).read_text()
    )
    assert set(data["steps"]["mix"]["counts"]) == {"sparring", "replay:basics"}


def test_sparring_phase_problems_are_named(tmp_path: Path, tiny_llama_dir: Path) -> None:
    expert = sparring_expert(tmp_path / "expert", tiny_llama_dir)
    manifest = json.loads((expert / "manifest.json").read_text())
    manifest["training"]["phases"][0]["spar"] = {"into": "first", "set": "nope"}
    manifest["training"]["phases"][1]["spar"]["into"] = "second"
    (expert / "manifest.json").write_text(json.dumps(manifest))
    report, _ = validate_manifest(expert)
    found = {(p.path, p.message) for p in report.problems}
    assert ("$.training.phases[0].spar", "the first phase has no trained adapter to spar with") in found
    assert ("$.training.phases[0].spar.set", "no evaluation set has this name") in found
    assert ("$.training.phases[1].spar.into", "the phase does not train on its sparring data") in found
    assert ("$.training.dataset.datasets[2].path", "referenced file does not exist") in found  # no phase writes it now
