"""What a running server holds: its configuration, the engine, the generation worker, metrics and
the helper threads that keep tokenising, routing and grammar compiles off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from expertkit.jsonschema_guard import DEFAULT_SCHEMA_LIMITS, SchemaLimits
from expertkit.runtime.engine import Engine
from expertkit.runtime.routing import Router
from expertkit.runtime.threads import use_intra_op_threads
from expertkit.serve.logprobs import TokenTexts
from expertkit.serve.metrics import ServerMetrics
from expertkit.serve.worker import GenerationWorker

T = TypeVar("T")


@dataclass(frozen=True)
class ServerConfig:
    base_id: str
    api_key: str | None = None
    max_queue: int = 32
    max_batch: int = 8
    mixed_batches: bool = True  # sequences of different LoRA experts share a batch (else one expert per batch)
    prefix_cache_bytes: int = 128 * 2**20  # prompts' prefilled starts kept for reuse (0: none)
    timeout_s: float = 120.0
    max_body_bytes: int = 1 << 20
    allowed_hosts: frozenset[str] = frozenset()  # Host names accepted besides loopback (without a key: only these)
    compile_timeout_s: float = 10.0  # a response_format grammar that takes longer to compile is a 422
    schema_limits: SchemaLimits = DEFAULT_SCHEMA_LIMITS
    log_prompts: bool = False  # the access log names the prompt (its first 200 characters) only when asked


@dataclass
class ServerState:
    engine: Engine
    router: Router | None
    config: ServerConfig
    worker: GenerationWorker
    metrics: ServerMetrics
    started: int
    texts: TokenTexts
    # Tokenising and routing run here, never on the event loop or the generation thread; client
    # grammars compile on their own threads, so a slow compile never delays tokenising.
    # Their torch operators (a router's embedder) run on one thread each: torch's intra-op threads
    # belong to the generation thread (runtime.threads says why).
    helpers: ThreadPoolExecutor = field(default_factory=lambda: _serial_pool(4, "expertkit-helper"))
    compilers: ThreadPoolExecutor = field(default_factory=lambda: _serial_pool(2, "expertkit-compile"))

    async def off_loop(self, function: Callable[..., T], *args: Any, pool: ThreadPoolExecutor | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool or self.helpers, function, *args)


def _serial_pool(workers: int, prefix: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix=prefix, initializer=use_intra_op_threads, initargs=(1,)
    )
