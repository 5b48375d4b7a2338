"""Adversarial load: while 4 clients send hostile requests, 4 well-behaved clients must get correct
answers and ``/health`` must answer in under a second. Loopback only, bounded in count and time.

The server runs on the embedded model with two experts (random LoRA weights: what is measured is
the server, not what the experts learned); one expert's manifest carries a catastrophic routing
pattern (``^(a|a)+$``), so prompts sent to ``auto`` exercise the time-bounded matcher. Hostile
requests: a ``$ref`` to a loopback URL (which must never be fetched), a 400-level schema, a
50,000-value enum, a 2 MB chunked body, ReDoS prompts to ``auto``, lone surrogates, a foreign Host
header and oversized stop strings. Good requests ask each expert and ``auto``, half of them with
``response_format`` ``json_object`` (the answer must parse as JSON).

Last line: {"good_ok": N, "good_failed": M, "hostile_4xx": K, "hostile_5xx": J, "hostile_2xx": …,
"health_p99_s": …, "health_max_s": …, "ref_fetches": …}
"""

from __future__ import annotations

import argparse
import http.server
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHAT = "/v1/chat/completions"
DEADLINE_S = 600


def ref_listener() -> tuple[http.server.ThreadingHTTPServer, list[str]]:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def deep_schema(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def chunked_body() -> Iterator[bytes]:
    yield b'{"model": "expert-a", "messages": [{"role": "user", "content": "'
    for _ in range(32):
        yield b"x" * 65536
    yield b'"}]}'


def hostile_requests(ref_url: str) -> list[dict]:
    """Each: keyword arguments for httpx.Client.request."""

    def chat(body: dict, **extra: object) -> dict:
        payload = {"model": "expert-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **body}
        headers = {"Content-Type": "application/json", **extra.pop("headers", {})}  # type: ignore[dict-item]
        return {"method": "POST", "url": CHAT, "content": json.dumps(payload), "headers": headers, **extra}

    def schema(value: dict) -> dict:
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": value}}}

    return [
        chat(schema({"type": "object", "properties": {"a": {"$ref": ref_url}}})),
        chat(schema(deep_schema(400))),
        chat(schema({"type": "string", "enum": [f"value{i}" for i in range(50_000)]})),
        {"method": "POST", "url": CHAT, "content": chunked_body, "headers": {"Content-Type": "application/json"}},
        chat({"model": "auto", "messages": [{"role": "user", "content": "a" * 40 + "b"}], "max_tokens": 4}),
        chat({"messages": [{"role": "user", "content": "a\ud800b"}]}),
        chat({}, headers={"Host": "rebound.evil.example"}),
        chat({"stop": ["x" * 5000]}),
    ]


def good_request(index: int) -> tuple[dict, bool]:
    model = ("expert-a", "expert-b", "auto")[index % 3]
    wants_json = index % 2 == 0
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": f"SELECT the names of singers older than {20 + index}."}],
        "max_tokens": 24,
        "temperature": 0,
    }
    if wants_json:
        body["response_format"] = {"type": "json_object"}
    return body, wants_json


def correct(response: httpx.Response, wants_json: bool) -> bool:
    if response.status_code != 200:
        return False
    choice = response.json()["choices"][0]
    if choice["finish_reason"] not in ("stop", "length"):
        return False
    if not wants_json or choice["finish_reason"] != "stop":
        return isinstance(choice["message"]["content"], str)
    try:
        json.loads(choice["message"]["content"])
    except ValueError:
        return False
    return True


def run(url: str, ref_url: str, good_per_client: int, hostile_rounds: int) -> dict:
    stop = threading.Event()
    health: list[float] = []
    hostile: Counter[str] = Counter()
    good: Counter[str] = Counter()
    started = time.monotonic()

    def probe() -> None:
        with httpx.Client(base_url=url) as client:
            while not stop.is_set() and time.monotonic() - started < DEADLINE_S:
                t0 = time.perf_counter()
                try:
                    client.get("/health", timeout=10)
                    health.append(time.perf_counter() - t0)
                except httpx.HTTPError:
                    health.append(10.0)
                time.sleep(0.1)

    def attacker(seed: int) -> None:
        requests = hostile_requests(ref_url)
        with httpx.Client(base_url=url, timeout=120) as client:
            for round_ in range(hostile_rounds):
                if time.monotonic() - started > DEADLINE_S:
                    return
                spec = dict(requests[(seed + round_) % len(requests)])
                if callable(spec.get("content")):
                    spec["content"] = spec["content"]()
                try:
                    status = client.request(**spec).status_code
                except httpx.HTTPError:
                    status = 0
                hostile[f"{status // 100}xx" if status else "error"] += 1

    def client(seed: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http_client:
            for k in range(good_per_client):
                if time.monotonic() - started > DEADLINE_S:
                    return
                body, wants_json = good_request(seed * good_per_client + k)
                try:
                    ok = correct(http_client.post(CHAT, json=body), wants_json)
                except httpx.HTTPError:
                    ok = False
                good["ok" if ok else "failed"] += 1

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(attacker, i) for i in range(4)] + [pool.submit(client, i) for i in range(4)]
        for future in futures:
            future.result()
    stop.set()
    prober.join(timeout=15)
    quantiles = statistics.quantiles(health, n=100, method="inclusive") if len(health) > 1 else health * 99
    return {
        "good_ok": good["ok"],
        "good_failed": good["failed"],
        "hostile_4xx": hostile["4xx"],
        "hostile_5xx": hostile["5xx"],
        "hostile_2xx": hostile["2xx"],
        "hostile_errors": hostile["error"],
        "health_p99_s": round(quantiles[98], 3),
        "health_max_s": round(max(health), 3),
        "health_probes": len(health),
        "wall_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--good", type=int, default=8, help="requests per well-behaved client")
    parser.add_argument("--hostile", type=int, default=24, help="requests per hostile client")
    args = parser.parse_args()
    from rich.console import Console
    from serve_load import make_expert

    from expertkit.models import pull_model
    from expertkit.serve.server import ServeRequest, build_server_app
    from unit.serve.conftest import start

    console = Console(stderr=True)
    base = pull_model("SmolLM2-135M-Instruct")
    listener, hits = ref_listener()
    ref_url = f"http://127.0.0.1:{listener.server_address[1]}/schema.json"
    with tempfile.TemporaryDirectory() as tmp:
        experts = []
        for name, seed, pattern in (("expert-a", 1, "^(a|a)+$"), ("expert-b", 2, r"\bSELECT\b")):
            directory = make_expert(base.path, Path(tmp), name, seed)
            manifest = json.loads((directory / "manifest.json").read_text())
            manifest["routing"] = {"patterns": [pattern]}
            (directory / "manifest.json").write_text(json.dumps(manifest))
            experts.append(str(directory))
        request = ServeRequest(experts=experts, router_embedder="none", max_batch=8, max_queue=64, timeout_s=300)
        app, _ = build_server_app(request, [])
        server, thread, url = start(app)
        try:
            result = run(url, ref_url, args.good, args.hostile)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            listener.shutdown()
    result["ref_fetches"] = len(hits)
    console.print(
        f"good: {result['good_ok']} ok, {result['good_failed']} failed; hostile: {result['hostile_4xx']} 4xx, "
        f"{result['hostile_5xx']} 5xx, {result['hostile_2xx']} 2xx; /health p99 {result['health_p99_s']} s "
        f"(max {result['health_max_s']} s, {result['health_probes']} probes); $ref fetches {len(hits)}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
