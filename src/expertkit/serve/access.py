"""The API key check, the request metrics and the access log, as plain ASGI middleware.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one relays every body message of a
response through an anyio memory stream and a task, which for a streamed completion is one relay
per token on the event loop's thread (measured under 16 streaming clients: the server's thread held
the interpreter lock almost as often as the generation thread). Here a response's messages go
straight through; only its start is looked at (its status, and then the metrics and the log line:
a stream's line is written when its headers go out).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from starlette.requests import Request

from expertkit.serve.errors import APIError
from expertkit.serve.guards import ASGIApp, Message, Receive, Scope, Send
from expertkit.serve.state import ServerState

OPEN_PATHS = ("/health",)
ACCESS_LOG = logging.getLogger("expertkit.serve.access")


class AccessMiddleware:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._record(scope, int(message["status"]), time.perf_counter() - started)
            await send(message)

        refused = self._refusal(scope)
        if refused is not None:
            await refused(scope, receive, watched)
            return
        await self.app(scope, receive, watched)

    def _refusal(self, scope: Scope) -> Any:
        """A 401 response when an API key is set and the request does not carry it."""
        key = self.state.config.api_key
        if key is None or scope.get("path") in OPEN_PATHS:
            return None
        given = next((value for name, value in scope.get("headers") or [] if name == b"authorization"), b"")
        if hmac.compare_digest(given, f"Bearer {key}".encode()):
            return None
        self.state.metrics.error("unauthorized")
        return APIError(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key").response()

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = scope.get("route")  # the matched route's template: one label per route, not per path
        endpoint = getattr(route, "path", None) or "unmatched"
        self.state.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.state.metrics.latency.labels(endpoint=endpoint).observe(elapsed)
        _access_log(Request(scope), endpoint, status, elapsed)


def _access_log(request: Request, endpoint: str, status: int, elapsed: float) -> None:
    """One line per request: method, route, model, status, tokens, latency; never the key, and the
    prompt only with ``--log-prompts``."""
    info = getattr(request.state, "log", {})
    tokens = f"{info['prompt_tokens']}+{info['completion_tokens']}" if "completion_tokens" in info else "-"
    line = (
        f"{request.method} {endpoint} model={info.get('model', '-')} status={status} tokens={tokens} "
        f"latency_ms={elapsed * 1000:.0f}"
    )
    if "prompt" in info:
        line += f" prompt={info['prompt']!r}"
    ACCESS_LOG.info(line)
