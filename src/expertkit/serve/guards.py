"""The server's outer guards, as plain ASGI middleware in front of FastAPI: the Host header and the
request body's size, checked on the bytes actually received.

- **Host.** Without an API key the server trusts whoever can reach it, which is only safe on
  loopback; a web page can still reach loopback through DNS rebinding (``rebound.evil.example``
  resolving to 127.0.0.1), so the Host header must name a loopback host or one the operator
  allowed (``--allowed-host``). With a key, any Host is accepted unless hosts were listed.
- **Body size.** ``Content-Length`` alone is not a bound: a chunked body has none. The body is
  read here, counting bytes, and refused with 413 as soon as it passes the limit; what passes is
  replayed to the application, so nothing downstream reads an unbounded stream.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from expertkit.errors import UsageError
from expertkit.serve.errors import APIError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read the API key file {path}: {exc.strerror}", "give a readable file") from exc
    if not key or any(c.isspace() for c in key):
        raise UsageError(f"{path} must hold one API key (no spaces)", "write the key alone on one line")
    return key


def host_name(header: str) -> str:
    """The host part of a Host header (``[::1]:8000`` → ``[::1]``, ``a.example:80`` → ``a.example``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str | None, allowed: frozenset[str], loopback_only: bool) -> bool:
    name = host_name(header or "")
    if name in allowed:
        return True
    if loopback_only:
        return name in LOOPBACK_HOSTS or name.startswith("127.")
    return not allowed


class RequestGuard:
    """Refuses a foreign Host (400) and a body over ``max_body_bytes`` (413) before the app runs."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        allowed_hosts: frozenset[str],
        loopback_only: bool,
        on_error: Callable[[str], None],
    ) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.allowed_hosts, self.loopback_only, self.on_error = allowed_hosts, loopback_only, on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not host_allowed(headers.get("host"), self.allowed_hosts, self.loopback_only):
            self.on_error("host_not_allowed")
            error = APIError(400, "the Host header names a host this server does not serve", code="invalid_host")
            await error.response()(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._too_large(scope, receive, send)
            return
        body = await self._read_body(receive)
        if body is None:
            await self._too_large(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or ``None`` once more than ``max_body_bytes`` have arrived."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.on_error("body_too_large")
        error = APIError(413, f"request body over {self.max_body_bytes} bytes", code="body_too_large")
        await error.response()(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would say it

    return replay
