"""GBNF grammars shipped with expertkit (llama.cpp syntax), read as package data."""

from __future__ import annotations

from importlib import resources

GRAMMARS = ("json", "sql", "cypher")


def grammar_text(name: str) -> str:
    """The text of a shipped grammar (``json``, ``sql`` or ``cypher``)."""
    if name not in GRAMMARS:
        raise KeyError(f"no shipped grammar '{name}'; available: {', '.join(GRAMMARS)}")
    return resources.files(__name__).joinpath(f"{name}.gbnf").read_text(encoding="utf-8")
