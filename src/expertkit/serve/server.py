"""Start the server: load the engine and experts, build the app, run uvicorn until SIGTERM/SIGINT.

Without an API key the server listens on loopback only (and refuses another host); keys are read
from a file, never from the command line, and never logged. On SIGTERM uvicorn stops accepting
connections, in-flight requests finish (bounded by ``graceful_s``), queued ones are cancelled, and
the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertkit.errors import UsageError
from expertkit.models.hardware import best_dtype, dtype_reason
from expertkit.package.signing import default_trusted_keys_dir, trusted_keys
from expertkit.package.store import list_installed
from expertkit.runtime.answer import expert_grammar
from expertkit.runtime.engine import Engine
from expertkit.runtime.options import LoadOptions, parse_decoder, parse_quantize
from expertkit.runtime.routing import build_router
from expertkit.runtime.threads import serial_torch
from expertkit.serve.app import ServerConfig, create_app
from expertkit.serve.guards import is_loopback, read_api_key


@dataclass(frozen=True)
class ServeRequest:
    experts: list[str] = field(default_factory=list)
    all_installed: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_file: Path | None = None
    require_signature: bool = False
    trusted_keys: Path | None = None
    base: str | None = None
    dtype: str = "auto"
    quantize: str | None = None  # none|int8|int4; None: each expert's manifest, else the default
    decoder: str | None = None  # lean|onnx|native; None: each expert's manifest, else the default
    max_queue: int = 32
    max_batch: int = 8
    mixed_batches: bool = True
    prefix_cache_mb: int = 128  # prompts' prefilled starts kept for reuse (0: none)
    timeout_s: float = 120.0
    graceful_s: int = 30
    router_embedder: str = "minilm"
    allow_template_drift: bool = False
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted besides loopback ones
    compile_timeout_s: float = 10.0
    log_prompts: bool = False


def build_server_app(request: ServeRequest, notes: list[str]) -> tuple[Any, ServerConfig]:
    """The FastAPI app for ``request`` (engine and experts loaded, every lock checked)."""
    api_key = read_api_key(request.api_key_file)
    if api_key is None and not is_loopback(request.host):
        raise UsageError(
            f"refusing to listen on {request.host} without an API key",
            "pass --api-key-file FILE, or keep the default loopback host",
        )
    references = [f"{r.name}@{r.version}" for r in list_installed()] if request.all_installed else list(request.experts)
    if not references and request.base is None:
        raise UsageError("no experts to serve", "pass --experts NAME[,NAME...] or --all-installed (or --base MODEL)")
    keys = None
    if request.require_signature or request.trusted_keys is not None:
        keys = trusted_keys(request.trusted_keys or default_trusted_keys_dir())
    options = LoadOptions(
        dtype=best_dtype() if request.dtype == "auto" else request.dtype,  # type: ignore[arg-type]
        quantize=parse_quantize(request.quantize),
        decoder=parse_decoder(request.decoder),
        allow_template_drift=request.allow_template_drift,
        base=request.base,
        keys=keys,
        require_signature=request.require_signature,
    )
    with serial_torch():  # no torch thread team on this thread: decoding keeps them (runtime.threads)
        engine = Engine.for_experts(references, options)
        notes += [w for e in engine.experts.values() for w in e.warnings] + engine.decoder_notes()
        if request.dtype == "auto":
            notes.append(f"--dtype auto chose {options.dtype}: {dtype_reason()}")
        router = build_router(engine, request.router_embedder, notes) if len(engine.experts) > 1 else None
    config = ServerConfig(
        base_id=engine.base.name,
        api_key=api_key,
        max_queue=request.max_queue,
        max_batch=request.max_batch,
        mixed_batches=request.mixed_batches,
        prefix_cache_bytes=request.prefix_cache_mb * 2**20,
        timeout_s=request.timeout_s,
        allowed_hosts=frozenset(request.allowed_hosts),
        compile_timeout_s=request.compile_timeout_s,
        log_prompts=request.log_prompts,
    )
    precompile_grammars(engine)
    if api_key is None:
        notes.append(f"no API key: listening on loopback only ({request.host})")
    return create_app(engine, router, config), config


def precompile_grammars(engine: Engine) -> None:
    """Compile every expert's own grammar now, so no request compiles one on the generation thread."""
    for name in engine.experts:
        expert_grammar(engine, name)


def run_app(app: Any, request: ServeRequest) -> None:
    """Run uvicorn until SIGTERM/SIGINT; in-flight requests get ``graceful_s`` to finish, then the
    process exits 0 (uvicorn alone re-raises the signal after a graceful shutdown, so a service
    manager would see a kill, not a clean exit)."""
    import uvicorn

    class CleanExitServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    access = logging.getLogger("expertkit.serve.access")  # one line per request on stderr
    if not access.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    config = uvicorn.Config(
        app,
        host=request.host,
        port=request.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=request.graceful_s,
    )
    CleanExitServer(config).run()
