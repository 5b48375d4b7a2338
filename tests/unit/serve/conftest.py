"""A live server on a free loopback port, over the session's tiny trained expert."""

from __future__ import annotations

import json
import shutil
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
    wait_healthy(url, 180)  # the server listens after its warm-up (an ONNX decoder is built then)
    return server, thread, url


def wait_healthy(url: str, seconds: float) -> None:
    """Until ``/health`` answers 200; a server that does not within ``seconds`` fails the test here,
    not later as a refused connection."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"{url}/health did not answer 200 within {seconds:.0f} s")


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


@pytest.fixture(scope="module")
def tools_live(trained_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The tiny expert plus a copy of it that declares a tools contract (a list call format)."""
    from expertkit.serve.server import ServeRequest, build_server_app

    copy = Path(shutil.copytree(trained_source, tmp_path_factory.mktemp("tools") / "expert-tools"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["name"] = "expert-tools"
    manifest["training"]["decoding"] = {"tools": {"call_format": "list", "system": "Call tools."}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    app, _ = build_server_app(ServeRequest(experts=[str(trained_source), str(copy)], dtype="float32"), [])
    server, thread, url = start(app)
    yield LiveServer(url, app)
    server.should_exit = True
    thread.join(timeout=10)
