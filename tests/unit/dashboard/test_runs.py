"""The runs pages over files shaped as training writes them: a recorded run and a weights directory
without a record, the run page's sections, a diff between two runs, downsampled curves, the live
stream, and keys that do not name a run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from expertkit.dashboard.app import DashboardConfig, build_dashboard
from expertkit.dashboard.curves import downsample, series
from expertkit.events import EVENTS_FILE, eta_seconds
from expertkit.runs import archive_run, list_records, new_run_id, register_run


def events(run_id: str | None, steps: int, lr: float, t0: float, end: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"event": "start", "time": t0, "total_steps": steps, "from_step": 0, "run_id": run_id}]
    for step in range(1, steps + 1):
        loss = 2.0 / step + (5.0 if step == steps // 2 else 0.0)  # one spike half way
        out.append({"event": "step", "time": t0 + step, "step": step, "loss": loss, "learning_rate": lr,
                    "tokens_per_s": 100.0, "peak_rss_mib": 500.0 + step})  # fmt: skip
        if step % 10 == 0:
            decision = {"step": step, "train_loss": loss, "ratio": 1.1, "best": True, "eligible": True,
                        "reason": f"eval loss {1 / step:.4f} is the lowest so far"}  # fmt: skip
            out.append({"event": "eval", "time": t0 + step, "step": step, "eval_loss": 1 / step, "selection": decision})
            sample = {"prompt": "<script>alert(1)</script> question", "output": "SELECT 1", "gold": "SELECT 2"}
            out.append({"event": "samples", "time": t0 + step, "step": step, "samples": [sample]})
    if end:
        out.append({"event": "end", "time": t0 + steps + 1, "step": steps, "status": "finished"})
    return out


def write_run(weights: Path, run_id: str | None, steps: int, lr: float, source_sha: str, end: bool = True) -> None:
    weights.mkdir(parents=True, exist_ok=True)
    lines = events(run_id, steps, lr, time.time() - steps - 5, end)
    (weights / EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in lines))
    meta = {
        "expert": {"name": "sql", "version": "0.1.0"},
        "manifest": {"name": "sql", "training": {"config": {"learning_rate": lr}}},
        "plan": {"learning_rate": lr, "batch_size": 2},
        "base_model": {"name": "tiny", "weights_sha256": "ab" * 32},
        "selection": {
            "best_step": steps,
            "reason": "eval loss is the lowest so far",
            "checkpoint": f"checkpoint-{steps}",
        },
        "metrics": {"final_eval_loss": 1 / steps},
        "data": {"lineage_hash": "0" * 24},
    }
    (weights / "training_meta.json").write_text(json.dumps(meta))


def lineage(source_sha: str) -> dict[str, Any]:
    return {
        "key": "0" * 24,
        "sources": [{"name": "spider", "path": "s.json", "sha256": source_sha, "records": 10, "kept": 9, "weight": 1}],
        "steps": {
            "records_read": 10,
            "bad_records": {"count": 1, "policy": "skip", "locations": ["s.json:3: no query"]},
            "dedup_removed": 1,
            "near_dedup_removed": 0,
        },
        "tokens": {"train": {"supervised_ratio": 0.25}},
        "histogram": [{"low": 10, "high": 20, "count": 3}, {"low": 20, "high": 30, "count": 6}],
        "packing": {"train": {"efficiency": 0.91}},
        "validators": [{"name": "label_sanity", "passed": True, "overridden": False, "detail": "ok", "failures": []}],
    }


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: Any) -> tuple[TestClient, str, str]:
    """A recorded, archived run (run id key) and an older weights directory without a record (w- key)."""
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    expert = tmp_path / "sql"
    old = expert / "weights" / "other-model"
    write_run(old, None, 20, 1e-4, "aa" * 32)
    run_id = new_run_id()
    write_run(expert / "weights" / "tiny", run_id, 40, 3e-4, "bb" * 32)
    record = register_run(run_id, "sql", expert, expert / "weights" / "tiny", "tiny")
    archive_run(record, lineage("bb" * 32))
    app = build_dashboard(DashboardConfig(queue_url=f"sqlite:///{tmp_path / 'q.db'}", expert_dirs=(expert,)))
    web = TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)
    other = next(r["key"] for r in web.get("/api/runs").json() if r["key"].startswith("w-"))
    return web, run_id, other


def test_the_runs_page_lists_recorded_and_unrecorded_runs(runs: tuple[TestClient, str, str]) -> None:
    web, run_id, other = runs
    listed = web.get("/api/runs").json()
    assert [r["key"] for r in listed] == [run_id, other]  # newest first
    assert listed[0] | {"started": None} == {
        "key": run_id, "expert": "sql", "model": "tiny", "started": None, "status": "finished", "step": 40,
        "total_steps": 40, "loss": 0.05, "best_eval_loss": 0.025, "recorded": True,
    }  # fmt: skip
    page = web.get("/runs")
    assert page.status_code == 200 and f'href="/runs/{run_id}"' in page.text and f'href="/runs/{other}"' in page.text


def test_the_run_page_shows_curves_ledger_samples_lineage_and_manifest(runs: tuple[TestClient, str, str]) -> None:
    web, run_id, _ = runs
    page = web.get(f"/runs/{run_id}")
    assert page.status_code == 200
    text = page.text
    assert "published: <strong>step 40</strong>" in text and "checkpoint-40" in text
    assert text.count("is the lowest so far") >= 4  # one ledger row per evaluation
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert(1)" not in text  # samples are escaped
    assert "s.json:3: no query" in text and "25.0%" in text and "91.0%" in text and "label_sanity" in text
    assert '"learning_rate": 0.0003' in text  # the resolved manifest
    assert '<script src="/static/vendor/uplot/uPlot.iife.min.js">' in text
    data = json.loads(text.split('id="run-data">', 1)[1].split("</script>", 1)[0])
    assert data["curves"]["loss"]["x"][:3] == [1.0, 2.0, 3.0] and data["curves"]["eval_loss"]["x"] == [10, 20, 30, 40]
    assert data["live"] is False
    body = web.get(f"/api/runs/{run_id}").json()
    assert body["ledger"]["chosen"]["best_step"] == 40 and len(body["ledger"]["evaluations"]) == 4
    assert body["samples"][0]["step"] == 40 and body["lineage"]["bad_records"]["count"] == 1


def test_two_runs_of_an_expert_are_diffed_on_config_data_and_results(runs: tuple[TestClient, str, str]) -> None:
    web, run_id, other = runs
    rows = {r["path"]: (r["this"], r["other"]) for r in web.get(f"/api/runs/{run_id}/diff?against={other}").json()}
    assert rows["config.plan.learning_rate"] == (0.0003, 0.0001)
    assert rows["data.sources[0].sha256"] == ("bb" * 32, None)  # the other run's data lineage is not cached
    assert rows["results.final_eval_loss"] == (0.025, 0.05)
    assert "config.plan.batch_size" not in rows  # same in both
    page = web.get(f"/runs/{run_id}?against={other}")
    assert "config.plan.learning_rate" in page.text and f'<option value="{other}" selected>' in page.text


def test_keys_that_name_no_run_are_404_pages(runs: tuple[TestClient, str, str]) -> None:
    web, run_id, _ = runs
    for key in ("nope", "w-000000000000", "..%2F..%2Fetc", "20260101-000000-abcdef"):
        page = web.get(f"/runs/{key}")
        assert page.status_code == 404 and "Traceback" not in page.text
    assert web.get("/api/runs/nope").json()["error"]["message"] == "no run 'nope'"
    assert web.get(f"/runs/{run_id}?against=nope").status_code == 404


def test_a_running_run_streams_its_curves_and_shows_an_eta(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    run_id = new_run_id()
    weights = tmp_path / "sql" / "weights" / "tiny"
    write_run(weights, run_id, 30, 1e-4, "cc" * 32, end=False)
    register_run(run_id, "sql", tmp_path / "sql", weights, "tiny")  # started, not archived: read live
    assert not list_records()[0].archived
    app = build_dashboard(DashboardConfig(queue_url=f"sqlite:///{tmp_path / 'q.db'}"))
    web = TestClient(app, base_url="http://127.0.0.1")
    summary = web.get(f"/api/runs/{run_id}").json()["summary"]
    assert summary["status"] == "running" and summary["eta_s"] == 0  # all 30 of 30 steps logged, no end yet
    with web.stream("GET", f"/api/stream/runs/{run_id}?max_events=1") as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[0] == "event: run"
    body = json.loads(lines[1].removeprefix("data: "))
    assert body["summary"]["step"] == 30 and len(body["curves"]["loss"]["x"]) == 30


def test_a_record_never_takes_an_earlier_runs_meta(tmp_path: Path, monkeypatch: Any) -> None:
    import os

    monkeypatch.setenv("EXPERTKIT_HOME", str(tmp_path / "home"))
    weights = tmp_path / "sql" / "weights" / "tiny"
    write_run(weights, "x", 10, 1e-4, "aa" * 32)
    old = time.time() - 3600
    os.utime(weights / "training_meta.json", (old, old))  # the previous run's meta
    record = register_run(new_run_id(), "sql", tmp_path / "sql", weights, "tiny")
    (weights / EVENTS_FILE).write_text('{"event": "start"}\n')  # this run: interrupted before its meta
    archive_run(record, None)
    assert (record.directory / EVENTS_FILE).is_file() and not (record.directory / "training_meta.json").exists()


def test_downsampling_keeps_spikes_ends_and_a_bounded_size() -> None:
    xs = [float(i) for i in range(10_000)]
    ys = [1.0] * 10_000
    ys[4321], ys[777] = 9.0, -3.0
    dx, dy = downsample(xs, ys, 600)
    assert len(dx) <= 600 and dx[0] == 0.0 and dx[-1] == 9999.0 and dx == sorted(dx)
    assert 4321.0 in dx and 777.0 in dx and max(dy) == 9.0 and min(dy) == -3.0
    assert downsample(xs[:10], ys[:10]) == (xs[:10], ys[:10])
    long = series(events("20260101-000000-abcdef", 10_000, 1e-4, 0.0))
    assert all(len(s["x"]) <= 600 for s in long.values()) and long["loss"]["x"][-1] == 10_000


def test_eta_follows_the_pace_since_the_last_start() -> None:
    run = events(None, 100, 1e-4, 1000.0, end=False)[:51]  # start + steps 1..~45 with evals and samples
    steps = [e for e in run if e["event"] == "step"]
    left = 100 - steps[-1]["step"]
    assert eta_seconds(run, now=steps[-1]["time"]) == pytest.approx(left * 1.0)
    assert eta_seconds(run[:1], now=1001.0) is None
