"""The ``expert-cli`` application: command groups are registered here; errors become exit codes."""

from __future__ import annotations

import os
import sys

import typer

from expertkit.cli.console import err_console, fail, out_console
from expertkit.errors import ExpertkitError

__all__ = ["app", "err_console", "fail", "main", "out_console"]

app = typer.Typer(
    name="expert-cli",
    help="Build, validate and run small specialist LLM experts.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out_console.print(f"expert-cli {version('expertkit')}")
        raise typer.Exit(0)


@app.callback()
def _main(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Build, validate and run small specialist LLM experts."""


def _register() -> None:
    """Attach the command groups (imported lazily so `--help` stays cheap). Idempotent."""
    if app.registered_commands:
        return
    from expertkit.cli import (
        chat_cmd,
        dashboard_cmd,
        data_cmd,
        eval_cmd,
        export_cmd,
        init_cmd,
        jobs_cmd,
        manifest_cmd,
        models_cmd,
        package_cmd,
        serve_cmd,
        spar_cmd,
        store_cmd,
        train_cmd,
        validate_cmd,
    )

    app.command("validate")(validate_cmd.validate)
    app.command("init")(init_cmd.init)
    app.add_typer(models_cmd.models_app, name="models")
    app.add_typer(manifest_cmd.manifest_app, name="manifest")
    app.add_typer(data_cmd.data_app, name="data")
    app.command("train")(train_cmd.train)
    app.command("estimate")(train_cmd.estimate)
    app.command("package")(package_cmd.package)
    app.command("keygen")(package_cmd.keygen)
    app.command("sign")(package_cmd.sign)
    app.command("verify")(package_cmd.verify)
    app.command("install")(store_cmd.install)
    app.command("list")(store_cmd.list_experts)
    app.command("remove")(store_cmd.remove)
    app.command("chat")(chat_cmd.chat)
    app.command("serve")(serve_cmd.serve)
    app.add_typer(export_cmd.export_app, name="export")
    app.command("eval")(eval_cmd.eval_expert)
    app.command("spar")(spar_cmd.spar)
    app.add_typer(jobs_cmd.jobs_app, name="jobs")
    app.command("worker")(jobs_cmd.worker)
    app.add_typer(jobs_cmd.workers_app, name="workers")
    app.command("dashboard")(dashboard_cmd.dashboard)


def _quiet_library_bars() -> None:
    """Piped or logged, a tqdm bar is a run of carriage returns: transformers' "Loading weights" bar is
    turned off there (an explicit HF_HUB_DISABLE_PROGRESS_BARS wins); our own plain lines remain."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    """Console-script entry point."""
    _register()
    _quiet_library_bars()
    try:
        app()
    except ExpertkitError as error:  # raised outside a command body (should be rare)
        err_console.print(f"error: {error}")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
