"""Load test: the server on the embedded model with two experts, 200 requests from 16 concurrent
clients, beside the same 200 requests sent one at a time; loopback only, bounded in time.

Both experts are LoRA adapters with random (non-zero) weights: serving speed does not depend on
what they learned. Requests alternate between the two experts (so batches regroup by expert) and
ask for 24 tokens at temperature 0. Last line:
{"ratio": …, "errors": …, "rejected_429": …, "p50_s": …, "p99_s": …, "requests": …}
(ratio: concurrent throughput over sequential; errors: anything but 200 and deliberate 429s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PROMPTS = [
    "How many singers do we have?",
    "List the names of all departments.",
    "What is the average age of students?",
    "Find the area of a triangle with base 10 and height 5.",
    "Which actors acted in The Matrix?",
    "Convert 100 dollars to euros.",
]


def make_expert(base_dir: Path, work: Path, name: str, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from expertkit.models.fingerprint import fingerprint

    torch.manual_seed(seed)
    targets = ["q_proj", "v_proj", "o_proj", "down_proj"]
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    weights = work / name / "weights" / "smollm2-135m-instruct"
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(weights / "adapter"))
    adapter = {"type": "lora", "r": 8, "alpha": 16, "target_modules": targets}
    manifest = {
        "schema_version": "2.0",
        "name": name,
        "version": "0.1.0",
        "description": "load benchmark expert",
        "base_models": [{"name": "SmolLM2-135M-Instruct", "adapters": [adapter]}],
    }
    (work / name / "manifest.json").write_text(json.dumps(manifest))
    fp = fingerprint(base_dir)
    base = {"weights_sha256": fp.weights_sha256, "architecture": fp.architecture, "vocab_size": fp.vocab_size}
    (weights / "training_meta.json").write_text(
        json.dumps({"base_model": base, "chat_template_sha256": fp.chat_template_sha256})
    )
    return work / name


def one(client: httpx.Client, url: str, index: int) -> tuple[int, float]:
    body = {
        "model": ("expert-a", "expert-b")[index % 2],
        "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
        "max_tokens": 24,
        "temperature": 0,
    }
    start = time.perf_counter()
    try:
        status = client.post(f"{url}/v1/chat/completions", json=body, timeout=120).status_code
    except httpx.HTTPError:
        status = 0
    return status, time.perf_counter() - start


def run_load(url: str, requests: int, clients: int) -> tuple[float, list[tuple[int, float]]]:
    local = threading.local()

    def call(index: int) -> tuple[int, float]:
        if not hasattr(local, "client"):
            local.client = httpx.Client()
        return one(local.client, url, index)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(call, range(requests)))
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    from rich.console import Console

    from expertkit.models import pull_model
    from expertkit.serve.server import ServeRequest, build_server_app
    from unit.serve.conftest import start

    console = Console(stderr=True)
    base = pull_model("SmolLM2-135M-Instruct")
    with tempfile.TemporaryDirectory() as tmp:
        experts = [str(make_expert(base.path, Path(tmp), n, s)) for n, s in (("expert-a", 1), ("expert-b", 2))]
        request = ServeRequest(experts=experts, router_embedder="none", max_batch=16, max_queue=64, timeout_s=300)
        app, _ = build_server_app(request, [])
        server, thread, url = start(app)
        try:
            sequential_s, sequential = run_load(url, args.requests, 1)
            concurrent_s, concurrent = run_load(url, args.requests, args.clients)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    ok = [latency for status, latency in concurrent if status == 200]
    rejected = sum(1 for status, _ in concurrent if status == 429)
    errors = sum(1 for status, _ in concurrent + sequential if status not in (200, 429))
    throughput = len(ok) / concurrent_s
    sequential_throughput = sum(1 for s, _ in sequential if s == 200) / sequential_s
    quantiles = statistics.quantiles(ok, n=100) if len(ok) > 1 else [ok[0]] * 99
    console.print(f"sequential: {args.requests} requests in {sequential_s:.1f} s ({sequential_throughput:.2f} req/s)")
    rate = f"{throughput:.2f} req/s"
    console.print(f"{args.clients} clients: {len(ok)} ok, {rejected} rejected (429) in {concurrent_s:.1f} s ({rate})")
    console.print(f"latency p50 {quantiles[49]:.2f} s, p99 {quantiles[98]:.2f} s; errors {errors}")
    result = {
        "ratio": round(throughput / sequential_throughput, 3),
        "errors": errors,
        "rejected_429": rejected,
        "p50_s": round(quantiles[49], 3),
        "p99_s": round(quantiles[98], 3),
        "requests": args.requests,
        "sequential_req_per_s": round(sequential_throughput, 3),
        "concurrent_req_per_s": round(throughput, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
