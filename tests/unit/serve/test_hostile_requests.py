"""Hostile HTTP clients: remote ``$ref``, schemas that are huge, deep or slow to compile, chunked
bodies past the limit, a foreign Host, random paths for metrics labels, prompts at the context
edge, lone surrogates and oversized stop strings. Each is a 4xx (or a bounded 200) and the server
keeps answering."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

CHAT = "/v1/chat/completions"


def chat(live, body: dict, **kwargs) -> httpx.Response:
    payload = {"model": "expert-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    content = json.dumps(payload)  # ASCII, so a lone surrogate travels as the escape a client would send
    headers = {"Content-Type": "application/json"}
    return httpx.post(f"{live.url}{CHAT}", content=content, headers=headers, timeout=60, **kwargs)


def schema_format(schema: dict) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records every request it gets (it must get none)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = json.dumps({"type": "string"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/schema.json", hits
    server.shutdown()


def test_a_remote_ref_is_a_400_and_never_fetched(live, listener) -> None:
    url, hits = listener
    schema = {"type": "object", "properties": {"a": {"$ref": url}}, "required": ["a"]}
    response = chat(live, schema_format(schema))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_schema" and "$.properties.a.$ref" in error["message"] and url in error["message"]
    assert hits == []


def test_output_validation_never_resolves_a_remote_ref(listener) -> None:
    """The same guarantee where a manifest's schema (from a package) validates model output."""
    from expertkit.manifest.sections import DecodingConfig
    from expertkit.runtime.output_checks import ValidationContext, validate_output

    url, hits = listener
    schema = {"type": "object", "properties": {"a": {"$ref": url}}}
    ctx = ValidationContext(DecodingConfig(validation="json_schema", json_schema=schema))
    result = validate_output('{"a": 1}', True, ctx)
    assert hits == []
    assert result.valid is not True and "cannot be applied" in (result.error or "")


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"type": "string", "enum": [f"v{i}" for i in range(50_000)]}, "bytes"),
        ({"type": "string", "enum": [f"v{i}" for i in range(2_000)]}, "enum values"),
        ("deep", "nests deeper"),
        ({"type": "object", "properties": {"a": {"type": 7}}}, "not a valid JSON Schema"),
    ],
)
def test_schemas_that_are_huge_deep_or_invalid_are_refused_at_once(live, schema, why: str) -> None:
    if schema == "deep":
        schema = {"type": "string"}
        for _ in range(400):
            schema = {"type": "object", "properties": {"a": schema}}
    started = time.monotonic()
    response = chat(live, schema_format(schema))
    assert response.status_code == 400, response.text
    assert why in response.json()["error"]["message"]
    assert time.monotonic() - started < 5


def test_a_grammar_compile_is_bounded_in_time(serve_app) -> None:
    live = serve_app(compile_timeout_s=0.000_001)
    schema = {"type": "object", "properties": {uuid.uuid4().hex: {"type": "integer"}}}
    response = chat(live, schema_format(schema))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "grammar_too_complex"
    assert httpx.get(f"{live.url}/health", timeout=5).status_code == 200


def test_a_chunked_body_over_the_limit_is_413(live) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"model": "expert-tiny", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    response = httpx.post(f"{live.url}{CHAT}", content=body(), headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert httpx.get(f"{live.url}/health", timeout=5).status_code == 200


def test_metrics_are_labelled_by_route_not_by_path(live) -> None:
    names = [f"probe-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    for name in names:
        assert httpx.get(f"{live.url}/{name}", timeout=5).status_code == 404
    metrics = httpx.get(f"{live.url}/metrics", timeout=5).text
    assert 'endpoint="unmatched"' in metrics
    assert not any(name in metrics for name in names)


def test_a_foreign_host_header_is_refused_without_a_key(serve_app) -> None:
    live = serve_app()
    response = httpx.get(f"{live.url}/v1/models", headers={"Host": "rebound.evil.example"}, timeout=5)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_host"
    assert httpx.get(f"{live.url}/v1/models", timeout=5).status_code == 200  # 127.0.0.1:PORT
    allowed = serve_app(allowed_hosts=("api.internal.example",))
    response = httpx.get(f"{allowed.url}/v1/models", headers={"Host": "api.internal.example:8000"}, timeout=5)
    assert response.status_code == 200


def test_a_prompt_at_the_context_edge_without_max_tokens_is_answered(live) -> None:
    context = live.state.engine.context_length
    words = "one two three four five six seven eight nine ten " * 200
    ids = live.state.engine.prompt_ids([{"role": "user", "content": words}])[: context - 8]
    text = live.state.engine.tokenizer.decode(ids[20:-20])
    body = {"model": "expert-tiny", "messages": [{"role": "user", "content": text}], "temperature": 0}
    response = httpx.post(f"{live.url}{CHAT}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    decoding = response.json()["expertkit"]["decoding"]["max_tokens"]
    prompt_tokens = response.json()["usage"]["prompt_tokens"]
    assert decoding["source"] == "context" and decoding["value"] == context - prompt_tokens


def test_a_lone_surrogate_is_a_400(live) -> None:
    raw = '{"model": "expert-tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    response = httpx.post(f"{live.url}{CHAT}", content=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content"


@pytest.mark.parametrize("stop", ["x" * 1000, [f"s{i}" for i in range(20)], "\ud800"])
def test_long_or_many_stop_strings_are_refused(live, stop) -> None:
    response = chat(live, {"stop": stop})
    assert response.status_code == 400 and response.json()["error"]["param"] == "stop"
