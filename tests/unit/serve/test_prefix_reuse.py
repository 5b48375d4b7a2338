"""The server reuses prompts' prefilled starts (a shared system prompt), says so in /metrics, and
``--prefix-cache-mb 0`` turns it off; answers are the same either way."""

from __future__ import annotations

import re

import httpx

SYSTEM = "You write one SQL query for the singers database. Use standard SQL and no comments at all."


def ask(url: str, question: str) -> str:
    body = {
        "model": "expert-tiny",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": 5,
        "temperature": 0,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    return response.json()["choices"][0]["message"]["content"]


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


def test_a_shared_system_prompt_is_prefilled_once(serve_app) -> None:
    live = serve_app()
    questions = ["How many singers?", "List the concerts.", "Oldest singer?"]
    answers = [ask(live.url, q) for q in questions]
    assert metric(live.url, "expertkit_prefix_cache_hits_total") == 2
    assert metric(live.url, "expertkit_prefix_cache_misses_total") == 1
    assert metric(live.url, "expertkit_prefix_cache_reused_tokens_total") >= 2 * 16
    assert metric(live.url, "expertkit_prefix_cache_bytes") > 0
    off = serve_app(prefix_cache_mb=0)
    assert [ask(off.url, q) for q in questions] == answers
    assert metric(off.url, "expertkit_prefix_cache_hits_total") == 0
    assert metric(off.url, "expertkit_prefix_cache_bytes") == 0
