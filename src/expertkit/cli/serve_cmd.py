"""``expert-cli serve``: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from expertkit.cli.console import err_console, reports_errors


@reports_errors
def serve(
    experts: str = typer.Option("", "--experts", "-e", help="Comma-separated experts: names, name@version, paths."),
    all_installed: bool = typer.Option(False, "--all-installed", help="Serve every installed expert version."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (non-loopback needs an API key)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port to listen on."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="File holding the bearer API key."),
    require_signature: bool = typer.Option(False, "--require-signature", help="Only experts with a trusted signature."),
    trusted_keys: Path | None = typer.Option(None, "--trusted-keys", help="Directory of trusted *.pub keys."),
    base: str | None = typer.Option(None, "--base", help="Base model (default: the one the experts name)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bfloat16 or float32."),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="Weight-only quantisation: none, int8 or int4 (default: the manifest's runtime.quantize).",
    ),
    decoder: str | None = typer.Option(
        None,
        "--decoder",
        help="What runs decode steps: lean (PyTorch), onnx (ONNX Runtime, built once per expert) or native "
        "(expertkit's C decoder over 4/8-bit blocks; int4 unless --quantize says int8); default: the manifest's "
        "runtime.decoder, else lean.",
    ),
    max_queue: int = typer.Option(32, "--max-queue", min=1, help="Queued requests before answering 429."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, help="Sequences decoded together (continuous batching)."),
    mixed_batches: bool = typer.Option(
        True,
        "--mixed-batches/--no-mixed-batches",
        help="Decode sequences of different LoRA experts in one batch (else one expert per batch).",
    ),
    prefix_cache_mb: int = typer.Option(
        128,
        "--prefix-cache-mb",
        min=0,
        help="Memory for reusing prompts' prefilled starts (the chat template's, a shared system prompt); 0: off.",
    ),
    timeout: float = typer.Option(120.0, "--timeout", min=1, help="Seconds a request may take (queue + generation)."),
    router_embedder: str = typer.Option("minilm", "--router-embedder", help="minilm, base or none (model 'auto')."),
    allow_template_drift: bool = typer.Option(False, "--allow-template-drift", help="Load despite template drift."),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="Host header name to accept besides loopback ones (repeatable; DNS-rebinding guard)."
    ),
    log_prompts: bool = typer.Option(
        False, "--log-prompts", help="Write each prompt's first 200 characters into the access log."
    ),
    compile_timeout: float = typer.Option(
        10.0, "--compile-timeout", min=0.1, help="Seconds a response_format grammar may take to compile (then 422)."
    ),
) -> None:
    """Serve experts over one base model with OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models)."""
    from expertkit.serve.server import ServeRequest, build_server_app, run_app

    request = ServeRequest(
        experts=[e.strip() for e in experts.split(",") if e.strip()],
        all_installed=all_installed,
        host=host,
        port=port,
        api_key_file=api_key_file,
        require_signature=require_signature,
        trusted_keys=trusted_keys,
        base=base,
        dtype=dtype,
        quantize=quantize,
        decoder=decoder,
        max_queue=max_queue,
        max_batch=max_batch,
        mixed_batches=mixed_batches,
        prefix_cache_mb=prefix_cache_mb,
        timeout_s=timeout,
        router_embedder=router_embedder,
        allow_template_drift=allow_template_drift,
        allowed_hosts=tuple(allowed_host),
        compile_timeout_s=compile_timeout,
        log_prompts=log_prompts,
    )

    notes: list[str] = []
    with err_console.status("loading the base model and experts…"):
        app, _ = build_server_app(request, notes)
    for note in notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}")
    err_console.print(f"serving on http://{escape(host)}:{port}/v1 (Ctrl-C or SIGTERM to stop)")
    run_app(app, request)
