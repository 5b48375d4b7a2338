"""Function calling scored through the server's ``tools`` API, as an OpenAI client calls it.

The expert is served in-process (``expert-cli serve``'s app on a private loopback port); each BFCL
item's functions become OpenAI tools (BFCL's type names translated to JSON Schema), the question
the user turn, and the ``tool_calls`` that come back are scored by the same AST checker as
``expert-cli eval`` (:func:`expertkit.eval.bfcl.check_answer`). So the figure reported is the
figure a client sees, prompt rendering, grammar and call parsing included. Irrelevance items
(``--format bfcl-irrelevance``) are correct when the answer calls nothing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from expertkit.errors import UsageError
from expertkit.eval.bfcl import check_answer
from expertkit.eval.job import EvalRequest
from expertkit.eval.run import eval_sets
from expertkit.eval.sets.base import EvalItem
from expertkit.eval.stats import bootstrap_ci
from expertkit.package.references import resolve_expert
from expertkit.runtime.tools import BFCL_TO_JSON_SCHEMA, restyle
from expertkit.serve.server import ServeRequest, build_server_app

ToolChoiceName = Literal["auto", "required"]


@dataclass(frozen=True)
class ToolsEvalItem:
    id: str
    bucket: str
    correct: bool
    reason: str
    called: bool  # the answer carried tool_calls
    parsed: bool  # every call's arguments parse as JSON and name a declared tool
    seconds: float


@dataclass
class ToolsEvalResult:
    set: str
    tool_choice: str
    items: list[ToolsEvalItem] = field(default_factory=list)

    def to_json(self, with_items: bool = False) -> dict[str, Any]:
        scores = [float(i.correct) for i in self.items]
        calls = [i for i in self.items if i.called]
        low, high = bootstrap_ci(scores) if scores else (0.0, 0.0)
        body: dict[str, Any] = {
            "set": self.set,
            "via": "tools",
            "tool_choice": self.tool_choice,
            "n": len(self.items),
            "call_accuracy": sum(scores) / len(scores) if scores else 0.0,
            "ci95": [low, high],
            "called": len(calls),
            "calls_parsed_and_declared": sum(i.parsed for i in calls) / len(calls) if calls else None,
            "no_call": len(self.items) - len(calls),
            "seconds_per_item": sum(i.seconds for i in self.items) / len(self.items) if self.items else 0.0,
        }
        if with_items:
            body["items"] = [i.__dict__ for i in self.items]
        return body


def openai_tools(functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """BFCL function entries as OpenAI tools (``dict`` → ``object``, ``float`` → ``number``, ...)."""
    return [
        {
            "type": "function",
            "function": {
                "name": f["name"],
                "description": f.get("description", ""),
                "parameters": restyle(f.get("parameters") or {"type": "dict", "properties": {}}, BFCL_TO_JSON_SCHEMA),
            },
        }
        for f in functions
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(expert: str, dtype: str, batch: int = 8, quantize: str | None = None) -> Iterator[str]:
    """``expert-cli serve`` for ``expert`` on a private loopback port, for the duration; its base URL."""
    import uvicorn

    request = ServeRequest(experts=[expert], dtype=dtype, max_batch=batch, quantize=quantize)
    app, _ = build_server_app(request, [])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="expertkit-tools-eval", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise UsageError("the in-process server did not start", "check that the expert loads: expert-cli chat")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def ask_item(client: httpx.Client, model: str, item: EvalItem, choice: str) -> ToolsEvalItem:
    functions = item.functions or []
    question = item.messages[-1]["content"].split("\n\n", 1)[-1]  # the user's text after the rendered tool list
    body = {"model": model, "messages": [{"role": "user", "content": question}], "tools": openai_tools(functions)}
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json={**body, "tool_choice": choice, "temperature": 0})
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return ToolsEvalItem(
            item.id, item.bucket, False, f"HTTP {response.status_code}: {response.text[:200]}", False, False, seconds
        )
    message = response.json()["choices"][0]["message"]
    calls = message.get("tool_calls") or []
    declared = {f["name"] for f in functions}
    try:
        bodies = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in calls]
        parsed = all(b["name"] in declared for b in bodies)
    except (ValueError, KeyError):
        bodies, parsed = [], False
    text = json.dumps(bodies[0] if len(bodies) == 1 else bodies) if calls else message.get("content") or ""
    verdict = check_answer(text, item.truth or [], functions)
    return ToolsEvalItem(item.id, item.bucket, verdict.correct, verdict.reason, bool(calls), parsed, seconds)


def eval_via_tools(
    request: EvalRequest, choice: ToolChoiceName = "auto", on_item: Callable[[str, ToolsEvalItem], None] | None = None
) -> list[ToolsEvalResult]:
    """Score the request's function-calling sets through the served ``tools`` API."""
    files = resolve_expert(request.expert)
    sets = eval_sets(request, files)
    if any(item.task != "function" for chosen in sets for item in chosen.items):
        raise UsageError("--via-tools scores function calling sets only", "pass a BFCL set: --set FILE --format bfcl")
    results = []
    name = files.loaded.manifest.name
    batch = max(1, request.batch)  # requests in flight at once: the server decodes them in one batch
    with (
        served(request.expert, request.dtype, batch, request.quantize) as url,
        httpx.Client(base_url=url, timeout=300) as client,
        ThreadPoolExecutor(batch) as pool,
    ):
        for chosen in sets:
            result = ToolsEvalResult(chosen.name, choice)
            for answered in pool.map(lambda item: ask_item(client, name, item, choice), chosen.items):
                result.items.append(answered)
                if on_item is not None:
                    on_item(chosen.name, answered)
            results.append(result)
    return results
