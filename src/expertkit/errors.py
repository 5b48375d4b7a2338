"""One exception family for everything a user can cause.

Every error carries a ``hint`` saying what to do next. The CLI prints ``message`` and ``hint``
and exits non-zero; it never shows a traceback for an :class:`ExpertkitError`.
"""

from __future__ import annotations


class ExpertkitError(Exception):
    """Base class of user-facing errors.

    Args:
        message: what went wrong, naming the file, line or JSON path involved.
        hint: what the user can do about it.
        exit_code: the process exit code the CLI uses for this error.
    """

    exit_code: int = 1

    def __init__(self, message: str, hint: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(ExpertkitError):
    """The command was called wrongly (missing or conflicting options)."""

    exit_code = 2


class ManifestError(ExpertkitError):
    """A manifest cannot be read or is invalid."""


class ModelNotFoundError(ExpertkitError):
    """A base model could not be resolved to anything loadable offline."""


class ModelLoadError(ExpertkitError):
    """A base model was found but could not be loaded or converted."""


class ScaffoldError(ExpertkitError):
    """``init`` could not scaffold an expert directory."""


class DataError(ExpertkitError):
    """Training data cannot be used: bad records, an empty source, a failed validator."""


class TemplateError(ExpertkitError):
    """A chat template cannot be rendered with exact loss masks (not prefix-stable, or drifted)."""


def checked_choice(flag: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    """A CLI choice checked against ``choices`` (``None``: not given, a manifest or a default decides)."""
    if value is not None and value not in choices:
        raise UsageError(f"{flag} {value!r}", f"choose one of: {', '.join(choices)}")
    return value
