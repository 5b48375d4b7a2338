"""A grammar that cannot be read or compiled (its message names the source, line and column)."""

from __future__ import annotations

from expertkit.errors import ExpertkitError


class GrammarError(ExpertkitError):
    """A grammar cannot be read or compiled."""
