"""Load test: the server on the embedded model with two experts, 200 requests from 16 concurrent
clients, beside 200 requests sent one at a time (half before the concurrent load, half after, so
drift in the machine's speed weighs on both), after an untimed warm-up (both experts' decoders
built, the batch cache allocated), so neither phase pays the server's first requests; loopback
only, bounded in time. The server
runs in its own process (``expert-cli serve``, as deployed); ``--in-process`` runs it in this one,
where the 16 client threads share its interpreter lock (what earlier figures measured).

Both experts are LoRA adapters with random (non-zero) weights: serving speed does not depend on
what they learned. Requests alternate between the two experts and ask for 24 tokens at temperature
0, streamed (time to first token is the first content chunk). Every request's message is distinct
(it starts with its number), so the server's prefix cache can reuse only what real traffic shares:
the chat template's start (its default system prompt), never a whole prompt. The concurrent load runs twice, in
one run: with mixed-expert batches (the default: both experts' sequences in one batch, each adding
its LoRA delta to the shared weights) and with one expert per batch (``--no-mixed-batches``, the
previous behaviour). Last line:
{"ratio": …, "ratio_one_expert_per_batch": …, "errors": …, "rejected_429": …, "p50_s": …, "p99_s": …,
 "ttft_p50_s": …, "ttft_p99_s": …, "requests": …, "client_cpu_ms": […, …], "batch_kernels": …}
(ratio: concurrent throughput over sequential, mixed batches; errors: anything but 200 and
deliberate 429s; client_cpu_ms: the CPU this process's clients took per request, concurrent and
sequential, on the same cores as the server).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def batch_kernels() -> bool:
    """Whether batch steps run their attention and experts' deltas in C (``EXPERTKIT_BATCH_KERNELS=0``
    or no C compiler: the PyTorch operators)."""
    from expertkit.runtime.batch_attention import batch_attention
    from expertkit.runtime.delta_kernel import delta_kernel

    return batch_attention() is not None and delta_kernel() is not None


def _has_text(line: str) -> bool:
    """Whether a stream chunk carries generated text (the first chunk only announces the role)."""
    choices = json.loads(line.removeprefix("data: ")).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


def _connect(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=120)


def one(connection: http.client.HTTPConnection, index: int) -> tuple[int, float, float]:
    """(status, latency, time to the first content chunk) of one streamed request, on a kept-alive
    connection. Its number is written with a fixed width, so every phase's prompts are equally long.
    The standard library's client, not httpx: the clients share the server's two cores, and httpx
    spent 7-9 ms of CPU per streamed request here against 2-5 for ``http.client`` (``client_cpu_ms``
    in the last line says what this run's clients took)."""
    body = {
        "model": ("expert-a", "expert-b")[index % 2],
        "messages": [{"role": "user", "content": f"Request {index:05d}. {PROMPTS[index % len(PROMPTS)]}"}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first = 0.0
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        for raw in response:  # every line read, the stream to its end
            line = raw.decode().rstrip("\r\n")
            if not first and line.startswith("data: {") and _has_text(line):
                first = time.perf_counter() - start
        status = response.status
    except (OSError, http.client.HTTPException):
        connection.close()  # reopened by the next request
        status = 0
    return status, time.perf_counter() - start, first


def run_load(url: str, indices: range, clients: int) -> tuple[float, list[tuple[int, float, float]], float]:
    """Elapsed seconds, each request's (status, latency, first token) and this process's CPU seconds
    (the clients') while ``clients`` threads sent ``indices``, each thread on its own connection."""
    local = threading.local()

    def call(index: int) -> tuple[int, float, float]:
        if not hasattr(local, "connection"):
            local.connection = _connect(url)
        return one(local.connection, index)

    cpu, start = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(call, indices))
    return time.perf_counter() - start, results, time.process_time() - cpu


def serve_and_load(experts: list[str], mixed: bool, args: argparse.Namespace, sequential: bool) -> dict:
    """The load against a server in its own process, as deployed (``expert-cli serve``), or, with
    ``--in-process``, in this one (the clients' threads then share the server's interpreter lock)."""
    if args.in_process:
        return _in_process(experts, mixed, args, sequential)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "expertkit", "serve", "--experts", ",".join(experts), "--port", str(port)]
    command += ["--router-embedder", "none", "--max-batch", "16", "--max-queue", "64", "--timeout", "300"]
    command += ["--mixed-batches" if mixed else "--no-mixed-batches"]
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: the server's log never blocks it
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(server, url, log)
            out = phases(url, args, sequential)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    return out


def phases(url: str, args: argparse.Namespace, sequential: bool) -> dict:
    """The concurrent load, and (``sequential``) the same number of requests one at a time, half
    before it and half after (A-B-A), so a machine whose speed drifts during the run weighs on both
    alike. Phases use disjoint request numbers: no prompt repeats one the prefix cache has seen."""
    half = args.requests // 2
    run_load(url, range(90_000, 90_000 + 2 * args.clients), args.clients)  # warm-up, not timed: decoders
    run_load(url, range(95_000, 95_004), 1)  # built, caches allocated, in both modes, before any phase
    first = run_load(url, range(half), 1) if sequential else None
    out = {"concurrent": run_load(url, range(10_000, 10_000 + args.requests), args.clients)}
    if first is not None:
        second = run_load(url, range(20_000 + half, 20_000 + args.requests), 1)
        out["sequential"] = (first[0] + second[0], first[1] + second[1], first[2] + second[2])
    return out


def _wait_healthy(server: subprocess.Popen, url: str, log: Any, limit_s: float = 180.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"expert-cli serve exited {server.returncode}:\n{log.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"expert-cli serve was not healthy within {limit_s:.0f} s")


def _in_process(experts: list[str], mixed: bool, args: argparse.Namespace, sequential: bool) -> dict:
    from expertkit.serve.server import ServeRequest, build_server_app
    from unit.serve.conftest import start

    request = ServeRequest(
        experts=experts, router_embedder="none", max_batch=16, max_queue=64, timeout_s=300, mixed_batches=mixed
    )
    app, _ = build_server_app(request, [])
    server, thread, url = start(app)
    try:
        out = phases(url, args, sequential)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return out


def quantile(values: list[float], q: int) -> float:
    return (statistics.quantiles(values, n=100) if len(values) > 1 else [values[0]] * 99)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--in-process", action="store_true", help="run the server in this process (shares the GIL)")
    args = parser.parse_args()
    from rich.console import Console

    from expertkit.models import pull_model

    console = Console(stderr=True)
    base = pull_model("SmolLM2-135M-Instruct")
    with tempfile.TemporaryDirectory() as tmp:
        experts = [str(make_expert(base.path, Path(tmp), n, s)) for n, s in (("expert-a", 1), ("expert-b", 2))]
        mixed = serve_and_load(experts, True, args, sequential=True)
        separate = serve_and_load(experts, False, args, sequential=False)
    sequential_s, sequential, sequential_cpu = mixed["sequential"]
    sequential_throughput = sum(1 for s, _, _ in sequential if s == 200) / sequential_s
    console.print(f"sequential: {args.requests} requests in {sequential_s:.1f} s ({sequential_throughput:.2f} req/s)")
    rows = {}
    for label, run in (("mixed batches", mixed), ("one expert per batch", separate)):
        elapsed, results, cpu = run["concurrent"]
        ok = [r for r in results if r[0] == 200]
        rows[label] = {
            "throughput": len(ok) / elapsed,
            "rejected": sum(1 for r in results if r[0] == 429),
            "errors": sum(1 for r in results if r[0] not in (200, 429)),
            "latency": [r[1] for r in ok],
            "ttft": [r[2] for r in ok],
            "client_cpu_ms": 1000 * cpu / len(results),
        }
        row = rows[label]
        console.print(
            f"{args.clients} clients, {label}: {len(ok)} ok, {row['rejected']} rejected (429) in {elapsed:.1f} s "
            f"({row['throughput']:.2f} req/s, {row['throughput'] / sequential_throughput:.2f}x); latency p50 "
            f"{quantile(row['latency'], 50):.2f} s p99 {quantile(row['latency'], 99):.2f} s; first token p50 "
            f"{quantile(row['ttft'], 50):.2f} s p99 {quantile(row['ttft'], 99):.2f} s; errors {row['errors']}"
        )
    best, other = rows["mixed batches"], rows["one expert per batch"]
    errors = best["errors"] + other["errors"] + sum(1 for s, _, _ in sequential if s not in (200, 429))
    result = {
        "ratio": round(best["throughput"] / sequential_throughput, 3),
        "ratio_one_expert_per_batch": round(other["throughput"] / sequential_throughput, 3),
        "errors": errors,
        "rejected_429": best["rejected"] + other["rejected"],
        "p50_s": round(quantile(best["latency"], 50), 3),
        "p99_s": round(quantile(best["latency"], 99), 3),
        "ttft_p50_s": round(quantile(best["ttft"], 50), 3),
        "ttft_p99_s": round(quantile(best["ttft"], 99), 3),
        "ttft_p50_s_one_expert_per_batch": round(quantile(other["ttft"], 50), 3),
        "ttft_p99_s_one_expert_per_batch": round(quantile(other["ttft"], 99), 3),
        "requests": args.requests,
        "sequential_req_per_s": round(sequential_throughput, 3),
        "concurrent_req_per_s": round(best["throughput"], 3),
        "server": "in-process" if args.in_process else "own process",
        # CPU the clients took per request, concurrent and sequential (in-process: the server's too)
        "client_cpu_ms": [round(best["client_cpu_ms"], 2), round(1000 * sequential_cpu / len(sequential), 2)],
        "batch_kernels": batch_kernels(),  # the server's machine and environment are this process's
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
