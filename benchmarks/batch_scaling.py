"""Batch scaling without HTTP: the continuous batcher itself (``BatchScheduler``) fed by N closed-loop
clients in this process, two LoRA experts alternating, each request a distinct message with 24
tokens at temperature 0 (as ``serve_load.py`` sends them). Throughput with 16 slots against the same
requests one at a time (1 slot), steady state: the first steps (the batch filling) and the last
requests (the batch draining) are not timed. ``serve_load.py`` measures the same through the server;
the gap between the two is what HTTP, streaming and the event loop cost.

Last line: {"ratio", "batched_req_per_s", "sequential_req_per_s", "batched_ms_per_step",
"sequential_ms_per_step", "prefix_cache_hits", "dtype", "batch_kernels"}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_load import PROMPTS, batch_kernels, make_expert


def steady(engine: object, slots: int, requests: int, warm_steps: int = 30) -> dict:
    """Requests per second and milliseconds per step with ``slots`` sequences decoding together."""
    from expertkit.runtime.batch import BatchScheduler
    from expertkit.runtime.settings import DecodingSettings

    scheduler = BatchScheduler(engine, max_batch=slots, max_positions=512)  # type: ignore[arg-type]
    sent, done = [0], [0]

    def submit() -> None:
        index = sent[0]
        sent[0] += 1
        name = ("expert-a", "expert-b")[index % 2]
        message = [{"role": "user", "content": f"Request {index}. {PROMPTS[index % len(PROMPTS)]}"}]
        ids = engine.prompt_ids(message)  # type: ignore[attr-defined]
        settings = DecodingSettings(max_tokens=24, temperature=0.0)
        scheduler.submit(engine.request(name, ids, settings), finished)  # type: ignore[attr-defined]

    def finished(_: object) -> None:
        done[0] += 1
        if sent[0] < requests:
            submit()

    for _ in range(slots):
        submit()
    for _ in range(warm_steps):
        scheduler.step()
    first, steps, start = done[0], 0, time.perf_counter()
    while scheduler.busy and done[0] - first < requests - 2 * slots - warm_steps // 10:
        scheduler.step()
        steps += 1
    elapsed = time.perf_counter() - start
    return {
        "req_per_s": (done[0] - first) / elapsed,
        "ms_per_step": elapsed / max(steps, 1) * 1000,
        "hits": scheduler.prefixes.hits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--slots", type=int, default=16)
    args = parser.parse_args()
    from rich.console import Console

    from expertkit.models import pull_model
    from expertkit.models.hardware import best_dtype
    from expertkit.runtime.engine import Engine
    from expertkit.runtime.options import LoadOptions

    console = Console(stderr=True)
    base = pull_model("SmolLM2-135M-Instruct")
    dtype = best_dtype()
    with tempfile.TemporaryDirectory() as tmp:
        experts = [str(make_expert(base.path, Path(tmp), n, s)) for n, s in (("expert-a", 1), ("expert-b", 2))]
        engine = Engine.for_experts(experts, LoadOptions(dtype=dtype))  # type: ignore[arg-type]
        batched = steady(engine, args.slots, args.requests)
        console.print(f"{args.slots} slots: {batched['req_per_s']:.2f} req/s, {batched['ms_per_step']:.1f} ms/step")
        alone = steady(engine, 1, max(40, args.requests // 4))
        console.print(f"1 slot: {alone['req_per_s']:.2f} req/s, {alone['ms_per_step']:.1f} ms/step")
    result = {
        "ratio": round(batched["req_per_s"] / alone["req_per_s"], 3),
        "batched_req_per_s": round(batched["req_per_s"], 3),
        "sequential_req_per_s": round(alone["req_per_s"], 3),
        "batched_ms_per_step": round(batched["ms_per_step"], 2),
        "sequential_ms_per_step": round(alone["ms_per_step"], 2),
        "prefix_cache_hits": batched["hits"],
        "slots": args.slots,
        "dtype": dtype,
        "batch_kernels": batch_kernels(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
