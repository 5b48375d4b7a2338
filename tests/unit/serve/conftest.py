"""A live server on a free loopback port, over the session's tiny trained expert."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@dataclass
class LiveServer:
    url: str
    app: object

    @property
    def state(self):
        return self.app.state.expertkit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(app) -> tuple[object, threading.Thread, str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 10)
    return server, thread, url


def wait_healthy(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)


@pytest.fixture
def serve_app(trained_source: Path):
    """A factory: build_server_app for the tiny expert with the given ServerConfig overrides."""
    from expertkit.serve.server import ServeRequest, build_server_app

    servers = []

    def make(api_key_file: Path | None = None, **overrides) -> LiveServer:
        overrides.setdefault("experts", [str(trained_source)])
        request = ServeRequest(dtype="float32", api_key_file=api_key_file, **overrides)
        app, _ = build_server_app(request, [])
        server, thread, url = start(app)
        servers.append((server, thread))
        return LiveServer(url, app)

    yield make
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def live(serve_app) -> Iterator[LiveServer]:
    yield serve_app()
