"""Queue backends for the job tests: SQLite (a file) and a real Redis server started here on a Unix
socket in a temp dir (``make test`` installs ``redis-server``; a missing server fails, never skips)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server") or shutil.which("valkey-server")
    if server is None:
        pytest.fail("set-up failure: no redis-server (or valkey-server) on PATH; `make test` installs it")
    directory = tmp_path_factory.mktemp("redis")
    socket = directory / "redis.sock"
    process = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700", "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(directory / "redis.log")],
    )  # fmt: skip
    deadline = time.time() + 20
    while not socket.exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"redis-server did not start: {(directory / 'redis.log').read_text()[-2000:]}")
        time.sleep(0.02)
    try:
        yield f"unix://{socket}?db=0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return str(request.getfixturevalue("redis_url"))
