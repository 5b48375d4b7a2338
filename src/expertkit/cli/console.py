"""The CLI's consoles and its one way of reporting a user's error (``error:`` + ``hint:``, an exit
code, never a traceback). Every command module imports these from here; ``app`` registers them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from expertkit.errors import ExpertkitError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)


def fail(error: ExpertkitError) -> None:
    """Print a user-facing error (message and hint, no traceback) and exit with its code."""
    err_console.print(f"[bold red]error:[/] {error.message}", markup=True, highlight=False)
    if error.hint:
        err_console.print(f"[dim]hint:[/] {error.hint}")
    raise typer.Exit(error.exit_code)


Command = TypeVar("Command", bound=Callable[..., Any])
OUT_OF_MEMORY_EXIT = 75  # EX_TEMPFAIL: worth trying again later (a job queue retries it; see expertkit.jobs)


def _out_of_memory(exc: BaseException) -> bool:
    """Python's MemoryError, or torch's OutOfMemoryError (CUDA or MPS), known without importing torch."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def reports_errors(command: Command) -> Command:
    """Run ``command``; an :class:`ExpertkitError` it raises becomes :func:`fail` (``typer`` reads the
    wrapped signature, so options are unchanged), and running out of memory exits 75 with a hint."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ExpertkitError as error:
            fail(error)
        except (MemoryError, RuntimeError) as exc:
            if not _out_of_memory(exc):
                raise
            fail(
                ExpertkitError(
                    f"out of memory: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
                    "lower training.config.batch_size or max_seq_length (or use gradient_accumulation_steps), "
                    "or free the device; a queued job is retried",
                    exit_code=OUT_OF_MEMORY_EXIT,
                )
            )

    return wrapper  # type: ignore[return-value]
