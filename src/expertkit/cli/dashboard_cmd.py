"""``expert-cli dashboard``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from expertkit.cli.console import out_console, reports_errors
from expertkit.errors import UsageError


@reports_errors
def dashboard(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (non-loopback needs --api-key-file)."),
    port: int = typer.Option(8800, "--port", min=1, max=65535, help="Port to listen on."),
    queue: str | None = typer.Option(None, "--queue", help="Queue URL (env EXPERTKIT_QUEUE; default the home's)."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="File holding the key (sign-in, Bearer)."),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="Host header name to accept besides loopback ones (repeatable; DNS-rebinding guard)."
    ),
    expert: list[Path] = typer.Option(
        [], "--expert", help="Expert directory whose runs to show besides recorded ones and the jobs' (repeatable)."
    ),
) -> None:
    """A web dashboard over the job queue and its workers (pages and a JSON API under /api/)."""
    from expertkit.dashboard.app import DashboardConfig, run_dashboard
    from expertkit.jobs.store import JobQueue, display_url
    from expertkit.serve.guards import is_loopback, read_api_key

    key = read_api_key(api_key_file)
    if key is None and not is_loopback(host):
        raise UsageError(f"--host {host} is not loopback: a key is required", "pass --api-key-file FILE")
    missing = [str(d) for d in expert if not d.is_dir()]
    if missing:
        raise UsageError(f"--expert {missing[0]}: not a directory", "give an expert directory (holding manifest.json)")
    experts = tuple(d.resolve() for d in expert)
    config = DashboardConfig(host, port, JobQueue(queue).url, key, frozenset(allowed_host), expert_dirs=experts)
    out_console.print(
        f"dashboard on http://{escape(host)}:{port}/ (queue {escape(display_url(config.queue_url or ''))})"
    )
    run_dashboard(config)
