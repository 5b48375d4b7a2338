"""The dashboard over a real SQLite queue: pages (content, 404 pages, no tracebacks), the JSON API that
backs them, and its guards (Host, key by header or sign-in cookie, no cross-site or non-JSON POSTs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from expertkit.dashboard.app import DashboardConfig, build_dashboard
from expertkit.jobs.model import Attempt
from expertkit.jobs.outcomes import job_log
from expertkit.jobs.store import JobQueue, WorkerInfo

KEY = "s3cret-key-for-tests"


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(f"sqlite:///{tmp_path / 'queue.db'}")


def client(queue: JobQueue, key: str | None = None, host: str = "127.0.0.1") -> TestClient:
    app = build_dashboard(DashboardConfig(queue_url=queue.url, api_key=key))
    return TestClient(app, base_url=f"http://{host}", follow_redirects=False)


def test_pages_show_the_queue_jobs_and_workers(queue: JobQueue, tmp_path: Path) -> None:
    (tmp_path / "sql").mkdir()
    waiting = queue.submit("train", tmp_path / "sql", ["--max-steps", "8"], "high")
    running = queue.claim("box-a")
    assert running is not None
    attempt = Attempt(number=1, worker="box-a", started_at=time.time() - 5)
    queue.save(running.model_copy(update={"state": "running", "attempts": [attempt]}))
    job_log(running).parent.mkdir(parents=True, exist_ok=True)
    job_log(running).write_text("== job 1 attempt 1 on box-a\n" + "".join(f"line {i}\n" for i in range(500)))
    queue.submit("eval", tmp_path / "sql", [], "low")
    now = time.time()
    queue.beat(WorkerInfo(name="box-a", host="h1", pid=1, version="0", started_at=now, heartbeat=now, jobs=[1]))
    web = client(queue)
    assert web.get("/").headers["location"] == "/jobs"
    board = web.get("/jobs")
    assert board.status_code == 200 and "<h2>running <span" in board.text and "box-a" in board.text
    assert board.text.index("running") < board.text.index("queued")
    page = web.get(f"/jobs/{waiting.id}")
    assert page.status_code == 200 and "attempt" in page.text.lower() and "--max-steps 8" in page.text
    assert "line 499" in page.text and "line 250" not in page.text  # the log's tail only
    workers = web.get("/workers")
    assert "box-a" in workers.text and "state-alive" in workers.text
    missing = web.get("/jobs/999")
    assert missing.status_code == 404 and "no job 999" in missing.text and "Traceback" not in missing.text
    assert web.get("/api/jobs").json()[0]["state"] == "running"
    assert web.get("/api/workers").json()[0]["state"] == "alive"


def test_the_api_submits_and_controls_jobs(queue: JobQueue, tmp_path: Path) -> None:
    web = client(queue)
    made = web.post("/api/jobs", json={"kind": "train", "expert": str(tmp_path), "options": ["--max-steps", "2"]})
    assert made.status_code == 201 and made.json()["state"] == "queued"
    other = web.post("/api/jobs", json={"kind": "eval", "expert": str(tmp_path), "then": ["package"]}).json()
    assert [j["kind"] for j in web.get("/api/jobs").json()] == ["train", "eval", "package"]
    assert web.post(f"/api/jobs/{other['id']}/move", json={"before": made.json()["id"]}).json()["order"] < 1
    assert web.post(f"/api/jobs/{made.json()['id']}/priority", json={"level": "high"}).json()["level"] == "high"
    assert web.post(f"/api/jobs/{made.json()['id']}/cancel").status_code == 403  # not JSON: a form could send it
    assert web.post(f"/api/jobs/{made.json()['id']}/cancel", json={}).json()["state"] == "cancelled"
    assert web.post(f"/api/jobs/{made.json()['id']}/retry", json={}).json()["state"] == "queued"
    bad = web.post("/api/jobs", json={"kind": "deploy", "expert": str(tmp_path)})
    assert bad.status_code == 400 and bad.json()["error"]["message"] == "unknown job kind 'deploy'"
    relative = web.post("/api/jobs", json={"kind": "train", "expert": "sql"})
    assert relative.status_code == 400 and "absolute path" in relative.json()["error"]["message"]
    assert web.post("/api/jobs/1/priority", json={"level": "urgent"}).status_code == 400
    assert web.get("/api/jobs/999").status_code == 404


def test_guards_host_key_and_cross_site_requests(queue: JobQueue, tmp_path: Path) -> None:
    assert client(queue, host="rebound.evil.example").get("/jobs").status_code == 400  # DNS rebinding
    web = client(queue, key=KEY)
    assert web.get("/jobs").headers["location"] == "/login"
    assert web.get("/api/jobs").status_code == 401
    assert web.get("/api/jobs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert web.post("/login", data={"key": "wrong"}).status_code == 401
    signed = web.post("/login", data={"key": KEY})
    assert signed.status_code == 303 and "httponly" in signed.headers["set-cookie"].lower()
    assert "samesite=strict" in signed.headers["set-cookie"].lower()
    page = web.get("/jobs")
    assert page.status_code == 200 and KEY not in page.text  # the cookie works; the key is never shown
    job = {"kind": "train", "expert": str(tmp_path)}
    form = web.post("/api/jobs", data=job)  # a cross-site form can only send this
    assert form.status_code == 403
    foreign = web.post("/api/jobs", json=job, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert web.post("/api/jobs", json=job, headers={"Origin": "http://127.0.0.1"}).status_code == 201
    assert web.post("/login", data={"key": KEY}, headers={"Origin": "http://evil.example"}).status_code == 403


def test_the_board_streams_each_change_as_a_server_sent_event(queue: JobQueue, tmp_path: Path) -> None:
    import threading

    web = client(queue)
    page = web.get("/jobs")
    assert '<script src="/static/board.js">' in page.text and 'id="board"' in page.text
    assert 'new EventSource("/api/stream/board")' in web.get("/static/board.js").text
    threading.Timer(0.5, lambda: queue.submit("train", tmp_path, [], "high")).start()
    body = web.get("/api/stream/board", params={"max_events": 2}).text
    first, second = [e for e in body.split("\n\n") if e.strip()]
    assert first.startswith("event: board\ndata: ") and all(
        line.startswith(("event: ", "data: ")) for line in first.splitlines()
    )
    assert 'queued <span class="muted">(0)</span>' in first
    assert 'queued <span class="muted">(1)</span>' in second and 'href="/jobs/1"' in second
    assert client(queue, key=KEY).get("/api/stream/board").status_code == 401  # the stream needs the key too


def test_unknown_pages_are_404_pages_and_queue_passwords_are_masked(queue: JobQueue) -> None:
    from expertkit.jobs.store import display_url

    web = client(queue)
    page = web.get("/nowhere")
    assert page.status_code == 404 and "<h1>404</h1>" in page.text and "Traceback" not in page.text
    assert web.get("/api/nowhere").json() == {"error": {"message": "Not Found", "hint": ""}}
    assert display_url("redis://:hunter2@db.example:6379/0") == "redis://:***@db.example:6379/0"
    assert display_url("redis://user:hunter2@db.example/1") == "redis://user:***@db.example/1"
    assert display_url("sqlite:////tmp/q.db") == "sqlite:////tmp/q.db"


def test_the_experts_page_shows_installed_experts_their_evaluations_and_verifies(
    built: Any, queue: JobQueue, tmp_path: Path
) -> None:
    import json

    from expertkit.package.store import install_package

    record, _ = install_package(built.path)
    web = client(queue)
    assert "no evaluation shipped" in web.get("/experts").text
    lock = web.get("/api/experts").json()[0]["lock"]
    assert lock["state"] == "matches" and lock["files"] >= 2 and lock["base_model"]
    shipped = Path(record.path) / "evaluation"  # as a package ships `expert-cli eval` results
    shipped.mkdir()
    result = {"metric": "exact_match", "n": 3, "expert": 0.6667, "baseline": 0.3333, "delta": 0.3333,
              "ci95": [0.0, 0.6667], "gate": {"passed": False, "failures": ["x"]},
              "buckets": {"hard": {"expert": 0.5, "baseline": 0.0, "n": 2}, "easy": {"expert": 1.0, "baseline": 1.0, "n": 1}}}  # fmt: skip
    (shipped / "digits.json").write_text(json.dumps(result))
    page = web.get("/experts")
    assert page.status_code == 200 and "expert-tiny" in page.text and "unsigned" in page.text
    assert "0.3333 (0.0 … 0.6667)" in page.text and "failed" in page.text
    alone = {
        "expert_summary": {"metric": "exact_match", "n": 4, "score": 0.5, "buckets": {"b": {"n": 4, "score": 0.5}}}
    }
    (shipped / "words.json").write_text(json.dumps(alone))  # an evaluation made without a baseline
    row, words = web.get("/api/experts").json()[0]["evaluations"]
    assert (words["metric"], words["n"], words["expert"], words["buckets"][0]["expert"]) == ("exact_match", 4, 0.5, 0.5)
    (shipped / "words.json").unlink()
    drift = {"summary": {"n": 62, "kl": 0.029, "kl_ci95": [0.024, 0.035], "match": 0.258, "match_ci95": [0.16, 0.37],
                         "buckets": {"facts": {"n": 14, "kl": 0.034, "match": 0.07}}}, "gate": {"passed": True}}  # fmt: skip
    (shipped / "forgetting.json").write_text(json.dumps(drift))  # eval --forgetting, shipped beside the sets
    expert = web.get("/api/experts").json()[0]
    assert [r["set"] for r in expert["evaluations"]] == ["digits"]  # not a task set row
    assert expert["forgetting"]["kl"] == 0.029 and expert["forgetting"]["buckets"]["facts"]["n"] == 14
    assert "forgetting against the base model (62 general prompts): mean KL 0.0290" in web.get("/experts").text
    (shipped / "forgetting.json").unlink()
    assert (row["set"], row["expert"], row["gate"]) == ("digits", 0.6667, False)
    assert [(b["bucket"], b["expert"], b["baseline"], b["n"]) for b in row["buckets"]] == [
        ("easy", 1.0, 1.0, 1), ("hard", 0.5, 0.0, 2)]  # fmt: skip
    assert "digits · hard" in page.text and "+0.5000" in page.text
    adapter = next(p for p in Path(record.path).rglob("*.safetensors"))
    adapter.write_bytes(adapter.read_bytes() + b"x")  # tampered after install
    lock = web.get("/api/experts").json()[0]["lock"]
    assert lock["state"] == "changed" and any(name.endswith(".safetensors") for name in lock["changed"])
    assert "changed since install" in web.get("/experts").text
    checked = web.post("/api/experts/verify", json={}).json()  # the evaluation/ file was added after install
    assert checked[0]["ok"] is False and "evaluation/digits.json was added" in checked[0]["problem"]
